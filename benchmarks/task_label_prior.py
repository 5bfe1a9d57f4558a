"""What the base model answers to the classification prompt, before z_c trains: its label probabilities.

    python benchmarks/task_label_prior.py [--n-per-task 20] [--split valid]

z_c learns by REINFORCE from the labels it samples, so a label the base model almost never writes for its own
domain is almost never reinforced. For each expert domain's questions this reads, after the prefilled answer start
``Classification: \\boxed{``, the next-token probability of each label's first token (batched as soft dispatch
reads it, on the embedded SmolLM2-135M-Instruct), averaged over the domain, and counts the questions whose likeliest label is
right. Prints a table and writes JSON to ``benchmarks/results/task_label_prior.json``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from results_file import print_table, write_results

from peft_svf.adaptive.dispatch import label_first_tokens
from peft_svf.adaptive.generation import last_token_logits
from peft_svf.embedded import load_embedded_model
from peft_svf.pipeline.config import DEFAULT_EXPERT_TASKS
from peft_svf.prompts import render
from peft_svf.tasks.classification import ASSISTANT_PREFIX, OTHERS, build_task_id_dataset
from peft_svf.tokens import ensure_pad_token

RESULTS = Path(__file__).parent / "results" / "task_label_prior.json"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-per-task", type=int, default=20, help="questions of each expert domain")
    parser.add_argument("--split", default="valid", help="the experts' split the questions come from")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward (soft dispatch's default)")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    model, tokenizer = load_embedded_model()
    model.eval()
    labels = [*DEFAULT_EXPERT_TASKS, OTHERS]
    first_tokens = label_first_tokens(tokenizer, ASSISTANT_PREFIX, labels)
    data = build_task_id_dataset(DEFAULT_EXPERT_TASKS, split=args.split, n_per_task=args.n_per_task)
    sums = {domain: dict.fromkeys(labels, 0.0) for domain in DEFAULT_EXPERT_TASKS}
    right = dict.fromkeys(DEFAULT_EXPERT_TASKS, 0)
    # the prompts end with the prefilled answer start; laid out as soft dispatch lays out its pass 1
    rows = [tokenizer(render(tokenizer, p), add_special_tokens=False)["input_ids"] for p in data["prompt"]]
    logits = last_token_logits(model, rows, ensure_pad_token(tokenizer), args.batch_size)
    for row, probabilities in zip(data, torch.softmax(logits.double(), -1), strict=True):
        per_label = {label: probabilities[token].item() for label, token in first_tokens.items()}
        for label, p in per_label.items():
            sums[row["label"]][label] += p
        right[row["label"]] += max(per_label, key=per_label.get) == row["label"]
    counts = {domain: data["label"].count(domain) for domain in DEFAULT_EXPERT_TASKS}
    rows = [{"domain": domain, "n": counts[domain], "right": right[domain],
             **{label: round(total / counts[domain], 3) for label, total in sums[domain].items()}}
            for domain in DEFAULT_EXPERT_TASKS]  # fmt: skip
    print_table(["true domain", *(f'"{label}"' for label in labels), "argmax right"],
                ([r["domain"], *(r[label] for label in labels), f"{r['right']} / {r['n']}"] for r in rows))  # fmt: skip
    write_results(RESULTS, args, rows, load_start)


if __name__ == "__main__":
    main()
