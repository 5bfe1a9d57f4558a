"""The paper's recipe on a GPU: Llama-3-8B-Instruct SVF experts on GSM8K, MBPP and ARC-Easy (Table 1), then
Transformer²'s three adaptation strategies on MATH, HumanEval and ARC-Challenge (Table 2).

NEEDS A GPU AND THE HUGGING FACE HUB. Llama-3-8B-Instruct is gated: accept its licence on the Hub and
`hf auth login`. One 80 GB GPU (H100/A100) should hold the bf16 model (16 GB), the SVD factors of
the adapted matrices (about 17 GB; training frees the 13 GB of adapted weights they replace) and a
micro-batch of 8 sequences. Nothing here runs on a CPU;
`--dry-run` builds every configuration, counts the trainable values on a weightless (meta-device) copy
of the architecture and prints the plan, without downloading anything.

Hyper-parameters are the paper's (Table 6 and appendix A, and the authors' code): AdamW, learning rate
2e-3 with cosine decay, global batch 256 prompts (micro-batch x accumulation), gradient clipping at
max-norm 1e-3, KL coefficient swept over 0.0-0.3 and chosen on validation, raw +1/-1 rewards, one sample
per prompt, validation every 10 updates on the odd half of the training split with the best checkpoint
kept; SVF vectors start at p = 0.1 + N(0, 0.01²) (the "official" parameterisation); the model in bf16.

Stages, each reading what the earlier ones wrote under --output-dir:

    python examples/llama3_gpu_recipe.py --dry-run
    python examples/llama3_gpu_recipe.py --stage train                 # 3 tasks x 4 KL coefficients
    python examples/llama3_gpu_recipe.py --stage train --tasks gsm8k --betas 0.1
    python examples/llama3_gpu_recipe.py --stage classifier            # z_c for strategy B
    python examples/llama3_gpu_recipe.py --stage lora                  # the LoRA baseline (next-token)
    python examples/llama3_gpu_recipe.py --stage table1                # base / LoRA / SVF on the 3 tasks
    python examples/llama3_gpu_recipe.py --stage table2                # + Figure 6, Figure 7, Table 3

See docs/reproduce-paper.md for costs and the other tables.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM

from peft_svf import SVFConfig, count_svf_parameters
from peft_svf.tasks import get_task, train_valid_split
from peft_svf.trainer import SVFTrainingConfig

MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
# Llama-3-8B's architecture, to count parameters without downloading (config.json of the model above).
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8)  # fmt: skip
# domain -> training task (Table 1) and domain -> unseen task (Table 2)
EXPERT_TASKS = {"math": "gsm8k", "code": "mbpp", "reasoning": "arc_easy"}
UNSEEN_TASKS = {"math": "math", "code": "humaneval", "reasoning": "arc_challenge"}
MLP, ATTENTION = ["gate_proj", "up_proj", "down_proj"], ["q_proj", "v_proj"]  # the paper's attention = q, v
TARGETS = {"mlp": MLP, "attention": ATTENTION, "mlp+attention": ATTENTION + MLP}
GLOBAL_BATCH = 256
BETAS = (0.0, 0.1, 0.2, 0.3)
CLASSIFIER_BETA = 0.1
CLASSIFIER_TOKENS = 64


# -- configurations (all built by --dry-run) ----------------------------------------------------------------
def svf_config(targets: str) -> SVFConfig:
    """The authors' parameterisation and initialisation: p = 0.1 + N(0, 0.01²), mask = sigmoid(p).

    Training frees each adapted W and works from its factors: the trainer merges the adapter for every
    rollout, and in bf16 each merge/unmerge round trip of a kept W rounds it, so W drifts as the vector
    changes (a 256 x 512 bf16 probe: 2.6% relative after 1,000 changes, 3.8% after 2,000). From the
    factors, W' is rebuilt fresh each time. It also saves memory and time (docs/svf.md)."""
    return SVFConfig(
        task_type="CAUSAL_LM", target_modules=TARGETS[targets], init_noise_std=0.01, keep_base_weight=False
    )


def svf_training_config(
    output_dir: Path, beta: float, max_steps: int, max_new_tokens: int, micro_batch: int, seed: int
) -> SVFTrainingConfig:
    """Paper Table 6 / appendix A.1: everything else is SVFTrainingConfig's default (lr 2e-3, cosine, clip 1e-3)."""
    if GLOBAL_BATCH % micro_batch:
        raise ValueError(f"--micro-batch must divide the global batch of {GLOBAL_BATCH}")
    return SVFTrainingConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=GLOBAL_BATCH // micro_batch,
        per_device_eval_batch_size=32,
        max_steps=max_steps,
        beta=beta,
        advantage_baseline="none",  # the paper's raw +1/-1 rewards (at batch 256 a baseline matters little)
        max_completion_length=max_new_tokens,
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="steps",
        save_steps=10,
        save_total_limit=2,
        load_best_model_at_end=True,
        report_to=[],
        seed=seed,
    )


def lora_config() -> LoraConfig:
    """Paper appendix A.2 / Table 6: r=16, alpha 32, dropout 0.05 on the query and value projections."""
    return LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules=ATTENTION)


def lora_training_config(
    output_dir: Path, lr: float, max_grad_norm: float, micro_batch: int, seed: int
) -> Any:
    """Paper appendix A.2: next-token prediction on the official solutions, 200 iterations at batch 256."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=GLOBAL_BATCH // micro_batch,
        learning_rate=lr,
        max_grad_norm=max_grad_norm,
        max_steps=200,
        lr_scheduler_type="cosine",
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        seed=seed,
        bf16=False,  # the model itself is loaded in bf16; no autocast needed
    )


def lora_count(model: torch.nn.Module, config: LoraConfig) -> int:
    """r x (in + out) per targeted linear, from shapes alone (works on the meta device)."""
    return sum(
        config.r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in config.target_modules
    )


# -- loading and bookkeeping ------------------------------------------------------------------------------
def load_model(model_id: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.bfloat16, device_map="cuda")
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def expert_dir(out: Path, task: str, beta: float) -> Path:
    return out / "experts" / task / f"beta{beta}"


def best_expert(out: Path, task: str) -> Path:
    """The KL coefficient whose run reached the best validation accuracy (the paper's selection)."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "experts" / task).glob("beta*/run.json"))]
    if not runs:
        raise SystemExit(f"no trained expert for {task} under {out}/experts; run --stage train first")
    return Path(max(runs, key=lambda r: r["best_valid_accuracy"])["adapter"])


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def validation_set(task_name: str, valid_n: int | None) -> Dataset:
    valid = train_valid_split(get_task(task_name).load("train"), "valid")
    return valid if valid_n is None else valid.select(range(min(valid_n, len(valid))))


# -- stages -------------------------------------------------------------------------------------------------
def train_svf(args: argparse.Namespace, train: Dataset, valid: Dataset, reward: Any, run_dir: Path,
              beta: float, max_new_tokens: int) -> dict[str, Any]:  # fmt: skip
    """One SVF run (an expert or z_c) with the paper's recipe; writes the adapter and run.json."""
    from peft_svf.trainer import SVFTrainer

    model, tokenizer = load_model(args.model)
    trainer = SVFTrainer(
        model,
        reward,
        args=svf_training_config(run_dir, beta, args.max_steps, max_new_tokens, args.micro_batch, args.seed),
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        peft_config=svf_config(args.targets),
    )
    start = time.time()
    trainer.train()
    for config in trainer.model.peft_config.values():
        config.keep_base_weight = (
            True  # the saved expert loads onto an intact W: the exact base at evaluation
        )
    trainer.save_model(str(run_dir / "adapter"))
    run = {"beta": beta, "adapter": str(run_dir / "adapter"), "train_wall_s": time.time() - start,
           "best_valid_accuracy": trainer.state.best_metric, "best_checkpoint": trainer.state.best_model_checkpoint,
           "valid_accuracy_by_step": {log["step"]: log["eval_accuracy"] for log in trainer.state.log_history
                                      if "eval_accuracy" in log},
           "log_history": trainer.state.log_history}  # fmt: skip
    write_json(run_dir / "run.json", run)
    print(f"{run_dir}: best validation accuracy {run['best_valid_accuracy']}")
    return run


def stage_train(args: argparse.Namespace) -> None:
    """Figure 4's curves are each run's valid_accuracy_by_step (and the train reward in log_history)."""
    for task_name in args.tasks:
        task = get_task(task_name)
        train = train_valid_split(task.load("train"), "train")
        valid = validation_set(task_name, args.valid_n)
        for beta in args.betas:
            train_svf(args, train, valid, task.reward, expert_dir(args.output_dir, task_name, beta), beta,
                      task.max_new_tokens)  # fmt: skip


def stage_classifier(args: argparse.Namespace) -> None:
    """Strategy B's z_c: the same recipe on (question from task k, label k) pairs from the experts' data."""
    from peft_svf.tasks.classification import build_task_id_dataset, task_id_reward

    train = build_task_id_dataset(EXPERT_TASKS, split="train", seed=args.seed)
    valid = build_task_id_dataset(EXPERT_TASKS, split="valid", n_per_task=args.valid_n or 100, seed=args.seed)
    train_svf(
        args,
        train,
        valid,
        task_id_reward(),
        args.output_dir / "classifier",
        CLASSIFIER_BETA,
        CLASSIFIER_TOKENS,
    )


def sft_dataset(task_name: str) -> Dataset:
    """Question + official solution as a conversational prompt-completion pair (paper Figure 8)."""
    reference = {
        "gsm8k": lambda row: row["answer"],  # the worked solution ending in "#### n"
        "mbpp": lambda row: f"```python\n{row['code']}\n```",
        "arc_easy": lambda row: f"The answer is {row['answer']}.",  # ARC has no worked solutions
    }[task_name]
    train = train_valid_split(get_task(task_name).load("train"), "train")
    return train.map(
        lambda row: {"completion": [{"role": "assistant", "content": reference(row)}]},
        remove_columns=[c for c in train.column_names if c != "prompt"],
    )


def stage_lora(args: argparse.Namespace) -> None:
    from trl import SFTTrainer

    for task_name in args.tasks:
        run_dir = args.output_dir / "lora" / task_name
        model, tokenizer = load_model(args.model)
        trainer = SFTTrainer(
            model=model,
            args=lora_training_config(
                run_dir, args.lora_lr, args.lora_max_grad_norm, args.micro_batch, args.seed
            ),
            train_dataset=sft_dataset(task_name),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )
        trainer.train()
        trainer.save_model(str(run_dir / "adapter"))


def lora_adapters(out: Path, tasks: list[str]) -> dict[str, Path]:
    return {t: out / "lora" / t / "adapter" for t in tasks if (out / "lora" / t / "adapter").exists()}


def score(model: Any, data: Dataset, task: Any, tokenizer: Any, base: float | None = None) -> dict[str, Any]:
    """Greedy accuracy (and accuracy / base accuracy) of ``model`` on ``data``, with the wall time."""
    from peft_svf.tasks import evaluate

    start = time.time()
    result = evaluate(model, data, tokenizer, reward=task.reward, max_new_tokens=task.max_new_tokens,
                      batch_size=32, base_accuracy=base)  # fmt: skip
    return {"accuracy": result.accuracy, "normalized": result.normalized_score, "wall_s": time.time() - start}


@contextmanager
def adapter_on(model: Any, adapter: Path) -> Iterator[Any]:
    """``model`` with one saved adapter, given back bare afterwards (PEFT injects in place).

    One adapter type at a time: a PeftModel cannot hold LoRA and SVF adapters together."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter))
    try:
        yield peft_model
    finally:
        peft_model.unload()


def stage_table1(args: argparse.Namespace) -> None:
    model, tokenizer = load_model(args.model)
    rows = {}
    for task_name in args.tasks:
        task = get_task(task_name)
        test = task.load("test")
        test = test if args.test_n is None else test.select(range(min(args.test_n, len(test))))
        rows[task_name] = {"base": score(model, test, task, tokenizer)}
        base = rows[task_name]["base"]["accuracy"]
        adapters = {"svf": best_expert(args.output_dir, task_name)}
        if task_name in (lora := lora_adapters(args.output_dir, [task_name])):
            adapters["lora"] = lora[task_name]
        for method, path in adapters.items():
            with adapter_on(model, path) as adapted:
                rows[task_name][method] = score(adapted, test, task, tokenizer, base)
    write_json(args.output_dir / "table1.json", rows)
    print("| method | " + " | ".join(rows) + " |\n| --- |" + " --- |" * len(rows))
    for method in ("base", "lora", "svf"):
        print(f"| {method} | " + " | ".join(cell(r.get(method)) for r in rows.values()) + " |")


def cell(result: dict[str, Any] | None) -> str:
    """``accuracy (accuracy / base)`` as in the paper's tables; "-" for a method that was not run."""
    if result is None:
        return "-"
    normalized = result.get("normalized")
    return f"{result['accuracy']:.2%}" + (f" ({normalized:.2f})" if normalized is not None else "")


def stage_table2(args: argparse.Namespace) -> None:
    """Base, LoRA (best of the three), prompt (A), classifier (B) and few-shot (C) on each unseen task.

    Every method is scored on the same items: the test split less the few-shot examples CEM sees (the
    paper holds those out the same way). Also writes Figure 6 (dispatch confusion), Figure 7 (CEM's alpha)
    and Table 3 (pass-1 and total time of each two-pass strategy)."""
    from peft_svf.adaptive import CEMConfig, SelfAdaptiveModel, dispatch_confusion

    model, tokenizer = load_model(args.model)
    tasks = {name: get_task(name) for name in UNSEEN_TASKS.values()}
    shots, held_out = {}, {}
    for name, task in tasks.items():
        test = task.load("test")
        stop = len(test) if args.test_n is None else min(len(test), args.shots + args.test_n)
        shots[name], held_out[name] = test.select(range(args.shots)), test.select(range(args.shots, stop))

    rows: dict[str, dict[str, Any]] = {}
    for name, task in tasks.items():
        rows[name] = {"base": score(model, held_out[name], task, tokenizer)}
    base = {name: rows[name]["base"]["accuracy"] for name in tasks}
    loras = lora_adapters(args.output_dir, list(EXPERT_TASKS.values()))
    lora_scores = {}
    for trained_on, path in loras.items():
        with adapter_on(model, path) as adapted:
            lora_scores[trained_on] = {
                name: score(adapted, held_out[name], task, tokenizer, base[name])
                for name, task in tasks.items()
            }
    for name in tasks if loras else ():
        trained_on = max(lora_scores, key=lambda t: lora_scores[t][name]["accuracy"])
        rows[name]["lora (best)"] = lora_scores[trained_on][name] | {"trained_on": trained_on}

    experts = {domain: str(best_expert(args.output_dir, task)) for domain, task in EXPERT_TASKS.items()}
    classifier = args.output_dir / "classifier" / "adapter"
    adaptive_model = SelfAdaptiveModel.from_pretrained(
        model, experts=experts, dispatcher="prompt", tokenizer=tokenizer,
        classifier=str(classifier) if classifier.exists() else None,
    )  # fmt: skip
    strategies = {"prompt": adaptive_model}
    if classifier.exists():
        strategies["classifier"] = SelfAdaptiveModel(
            adaptive_model.model, tokenizer, list(experts), dispatcher="classifier"
        )
    for name, task in tasks.items():
        prompts = list(held_out[name]["prompt"])
        for label, strategy in strategies.items():
            start = time.time()
            strategy.dispatch(prompts)  # pass 1 alone (Table 3); the score below runs both passes
            pass_one = time.time() - start
            rows[name][label] = score(strategy, held_out[name], task, tokenizer, base[name]) | {
                "pass1_s": pass_one
            }
        cem_config = CEMConfig(population_size=args.cem_population, elite_ratio=0.2, generations=args.cem_generations,
                               per_layer=args.cem_per_layer, normalize=args.cem_normalize,
                               adapter_name=f"few_shot_{name}", seed=args.seed, max_new_tokens=task.max_new_tokens,
                               batch_size=32)  # fmt: skip
        cem = adaptive_model.adapt(shots[name], task.reward, cem_config)
        adaptive_model.use_mixture(cem.adapter_name)
        rows[name]["few-shot"] = score(adaptive_model, held_out[name], task, tokenizer, base[name]) | {
            "alpha": cem.alpha, "few_shot_accuracy": cem.score}  # fmt: skip
        adaptive_model.use_mixture(None)
        adaptive_model.model.save_pretrained(
            str(args.output_dir / "few_shot"), selected_adapters=[cem.adapter_name]
        )
        print(name, json.dumps({method: row["accuracy"] for method, row in rows[name].items()}))

    labelled = {domain: list(held_out[name]["prompt"]) for domain, name in UNSEEN_TASKS.items()}
    confusion = {label: dispatch_confusion(s, labelled) for label, s in strategies.items()}
    write_json(args.output_dir / "table2.json", {"rows": rows, "figure6_confusion": confusion})


# -- the plan -----------------------------------------------------------------------------------------------
def dry_run(args: argparse.Namespace) -> None:
    """Build every configuration the stages would use and count parameters, without any download."""
    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(**LLAMA3_8B))
    print(f"model: {args.model} (bf16, device_map='cuda')  output: {args.output_dir}")
    print("trainable values on Llama-3-8B (counted on a weightless copy):")
    for name in TARGETS:
        marker = "  <- --targets" if name == args.targets else ""
        print(f"  SVF {name:<14} {count_svf_parameters(llama, svf_config(name)):>12,}{marker}")
    print(f"  LoRA r=16 q,v      {lora_count(llama, lora_config()):>12,}  (paper Table 4: 6.82M)")
    print("  (paper Table 4: SVF MLP 0.39M, attention 0.16M, MLP + attention 0.58M)")

    for task_name in args.tasks:
        task = get_task(task_name)
        for beta in args.betas:
            config = svf_training_config(expert_dir(args.output_dir, task_name, beta), beta, args.max_steps,
                                         task.max_new_tokens, args.micro_batch, args.seed)  # fmt: skip
            print(f"train {task_name:<9} beta={beta:<4} lr={config.learning_rate} "
                  f"batch={config.per_device_train_batch_size}x{config.gradient_accumulation_steps} "
                  f"clip={config.max_grad_norm} {config.lr_scheduler_type.value} steps<={config.max_steps} "
                  f"eval every {config.eval_steps} new_tokens={config.max_completion_length} -> {config.output_dir}")  # fmt: skip
        lora = lora_training_config(args.output_dir / "lora" / task_name, args.lora_lr, args.lora_max_grad_norm,
                                    args.micro_batch, args.seed)  # fmt: skip
        print(f"lora  {task_name:<9} next-token on official solutions lr={lora.learning_rate} "
              f"clip={lora.max_grad_norm} steps={lora.max_steps} -> {lora.output_dir}")  # fmt: skip
    print(f"classifier z_c on {sorted(EXPERT_TASKS.values())} questions, beta={CLASSIFIER_BETA} "
          f"-> {args.output_dir / 'classifier'}")  # fmt: skip
    print(f"table1: base / LoRA / best-KL SVF expert on the test splits of {', '.join(args.tasks)}")
    print(f"table2: base / LoRA / prompt / classifier / few-shot CEM ({args.shots} shots, population "
          f"{args.cem_population}, {args.cem_generations} generations) on {', '.join(UNSEEN_TASKS.values())}")  # fmt: skip
    print("dry run: nothing downloaded or trained")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["train", "classifier", "lora", "table1", "table2"])
    parser.add_argument("--dry-run", action="store_true", help="print the plan; no download, no GPU")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/llama3-8b"))
    parser.add_argument(
        "--tasks", nargs="+", default=list(EXPERT_TASKS.values()), choices=list(EXPERT_TASKS.values())
    )
    parser.add_argument("--targets", choices=list(TARGETS), default="mlp+attention",
                        help="paper Table 4: MLP + attention is best; the authors' code adapts the MLP only")  # fmt: skip
    parser.add_argument("--betas", type=float, nargs="+", default=list(BETAS))
    parser.add_argument(
        "--max-steps", type=int, default=200, help="updates of 256 prompts (authors' cap: 2000)"
    )
    parser.add_argument(
        "--micro-batch", type=int, default=8, help="per-device prompts; accumulation makes 256"
    )
    parser.add_argument(
        "--valid-n", type=int, default=None, help="validation items (default: the whole odd half)"
    )
    parser.add_argument("--test-n", type=int, default=None, help="test items (default: all)")
    parser.add_argument("--lora-lr", type=float, default=5e-5, help="paper swept 2e-6 ... 5e-4")
    parser.add_argument("--lora-max-grad-norm", type=float, default=1.0, help="paper swept 1e-3 and 1.0")
    parser.add_argument("--shots", type=int, default=10, help="few-shot examples held out for CEM")
    parser.add_argument("--cem-population", type=int, default=32)
    parser.add_argument("--cem-generations", type=int, default=10, help="paper: up to 100; CEM-light: 10")
    parser.add_argument("--cem-per-layer", action="store_true")
    parser.add_argument("--cem-normalize", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dry_run:
        dry_run(args)
        return
    if args.stage is None:
        parser.error("give --stage (or --dry-run)")
    if not torch.cuda.is_available():
        raise SystemExit("this recipe needs a CUDA GPU; use --dry-run to see the plan")
    {"train": stage_train, "classifier": stage_classifier, "lora": stage_lora, "table1": stage_table1,
     "table2": stage_table2}[args.stage](args)  # fmt: skip


if __name__ == "__main__":
    main()
