"""The main job's report: Table 2 in the terminal and as Markdown/JSON, Figures 4, 6 and 7 as PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..adaptive.dispatch import confusion_matrix
from .strategies import BASE_MODEL, CLASSIFIER, FEW_SHOT, PROMPT, SOFT

logger = logging.getLogger(__name__)

METHOD_ORDER = (BASE_MODEL, "best single expert", PROMPT, CLASSIFIER, FEW_SHOT, SOFT)


def _cell(score: dict[str, Any] | None) -> str:
    if score is None:
        return "-"
    normalized = score.get("normalized")
    suffix = f" ({normalized:.2f})" if normalized is not None else ""
    return f"{100 * score['accuracy']:.1f}{suffix}"


def with_best_single_expert(unseen: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Adds the oracle row: per task, the expert that scored best there (an upper bound no dispatcher knows)."""
    for row in unseen.values():
        experts = {k: v for k, v in row.items() if k.startswith("expert: ")}
        name = max(experts, key=lambda k: experts[k]["accuracy"])
        row["best single expert"] = {**experts[name], "expert": name.removeprefix("expert: ")}
    return unseen


def table2_markdown(unseen: dict[str, dict[str, Any]]) -> str:
    """Methods as rows, unseen tasks as columns, accuracy % with the normalised score in parentheses."""
    tasks = list(unseen)
    methods = [m for m in METHOD_ORDER if m in next(iter(unseen.values()))]
    experts = sorted(k for k in next(iter(unseen.values())) if k.startswith("expert: "))
    lines = ["| method | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
    for method in [methods[0], *experts, *methods[1:]]:
        lines.append(f"| {method} | " + " | ".join(_cell(unseen[t].get(method)) for t in tasks) + " |")
    return "\n".join(lines)


def experts_markdown(experts: dict[str, dict[str, Any]]) -> str:
    """Each expert on its own training task's test split against the base model (Table 1 layout)."""
    lines = [
        "| expert | task | n | base | expert | trainable | train s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for domain, r in experts.items():
        base, expert = r.get("base_test_accuracy"), r.get("expert_test_accuracy")
        fmt = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
        lines.append(f"| {domain} | {r['task']} | {r.get('test_n', '-')} | {fmt(base)} | {fmt(expert)} "
                     f"| {r['trainable_parameters']:,} | {r['train_wall_s']} |")  # fmt: skip
    return "\n".join(lines)


def confusion(unseen: dict[str, dict[str, Any]], method: str, domains: dict[str, str]) -> dict[str, Any]:
    """Paper Figure 6 in :func:`~peft_svf.adaptive.dispatch.confusion_matrix`'s layout, one row per unseen task:
    ``rows`` name each task's true domain, ``tasks`` the tasks, columns the labels the dispatcher chose."""
    labels = list(next(iter(unseen.values()))[method]["labels"])
    table = confusion_matrix({task: unseen[task][method]["labels"] for task in unseen}, labels)
    return {**table, "rows": [domains[task] for task in unseen], "tasks": list(unseen)}


def write_report(folder: Path, summary: dict[str, Any]) -> list[Path]:
    """Writes table2.md, results.json and the PNG figures; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "results.json", folder / "table2.md"]
    written[0].write_text(json.dumps(summary, indent=2, default=str))
    written[1].write_text(
        "# Transformer² on the embedded model: unseen tasks\n\n"
        "Accuracy % (normalised score = accuracy / base accuracy in parentheses)\n\n"
        f"{table2_markdown(summary['unseen'])}\n\n## Experts on their own tasks\n\n"
        f"{experts_markdown(summary['experts'])}\n"
    )
    written += _figures(folder, summary)
    return written


def _figures(folder: Path, summary: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        logger.warning("no figures: they need matplotlib (pip install 'peft-svf[report]')")
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # Figure 4: training curves (validation accuracy and sampled reward per step).
    fig, (ax_valid, ax_reward) = plt.subplots(1, 2, figsize=(10, 3.5))
    for domain, r in summary["experts"].items():
        history = r.get("log_history", [])
        evals = [(h["step"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
        rewards = [(h["step"], h["reward"]) for h in history if "reward" in h]
        if evals:
            ax_valid.plot(*zip(*evals, strict=True), marker="o", label=domain)
        if rewards:
            ax_reward.plot(*zip(*rewards, strict=True), label=domain)
    ax_valid.set(title="validation accuracy", xlabel="step")
    ax_reward.set(title="mean sampled reward", xlabel="step")
    ax_valid.legend()
    fig.tight_layout()
    written.append(folder / "training_curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    # Figure 6: dispatch confusion matrices.
    methods = [m for m in (PROMPT, CLASSIFIER, SOFT) if m in summary["confusion"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        c = summary["confusion"][method]
        ax.imshow(c["matrix"], cmap="Blues")
        ax.set_xticks(range(len(c["labels"])), c["labels"], rotation=30)
        ax.set_yticks(range(len(c["rows"])), c["rows"])
        for i, row in enumerate(c["matrix"]):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center")
        ax.set(title=method, xlabel="dispatched to", ylabel="true domain")
    fig.tight_layout()
    written.append(folder / "confusion.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    # Figure 7: the few-shot CEM mixture (and soft dispatch's mean alpha) per task.
    unseen = summary["unseen"]
    experts = [k.removeprefix("expert: ") for k in next(iter(unseen.values())) if k.startswith("expert: ")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.8 / len(experts)
    for ax, (method, key) in zip(axes, ((FEW_SHOT, "alpha"), (SOFT, "mean_alpha")), strict=True):
        for j, expert in enumerate(experts):
            values = [_alpha_of(unseen[t][method][key], expert) for t in unseen]
            ax.bar([i + j * width for i in range(len(unseen))], values, width, label=expert)
        ax.set_xticks(
            [i + width * (len(experts) - 1) / 2 for i in range(len(unseen))], list(unseen), rotation=10
        )
        ax.set(title=f"{method}: alpha per expert", ylim=(0, 1))
    axes[0].legend()
    fig.tight_layout()
    written.append(folder / "alphas.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


def _alpha_of(alpha: dict[str, Any], expert: str) -> float:
    """An expert's coefficient; per-layer mixtures (a dict per expert) are shown by their mean."""
    value = alpha.get(expert, 0.0)
    if isinstance(value, dict):
        return sum(value.values()) / max(len(value), 1)
    return float(value)
