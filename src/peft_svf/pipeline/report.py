"""The main job's report: Table 2 in the terminal and as Markdown/JSON, Figures 4, 6 and 7 as PNG."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from ..adaptive.dispatch import confusion_matrix
from ..paths import RESULTS_FILE, write_json
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


def _method_rows(row: dict[str, Any]) -> list[str]:
    """Table 2's row order: base, each expert alone, then the oracle row and the strategies."""
    methods = [m for m in METHOD_ORDER if m in row]
    experts = sorted(k for k in row if k.startswith("expert: "))
    return [methods[0], *experts, *methods[1:]]


def table2_markdown(unseen: dict[str, dict[str, Any]]) -> str:
    """Methods as rows, unseen tasks as columns, accuracy % with the normalised score in parentheses."""
    tasks = list(unseen)
    lines = ["| method | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
    for method in _method_rows(next(iter(unseen.values()))):
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
    """Writes table2.md, the PNG figures and, last, results.json (a multi-seed job takes a seed whose
    results.json is there as finished); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / RESULTS_FILE, folder / "table2.md"]
    written[1].write_text(
        "# Transformer² on the embedded model: unseen tasks\n\n"
        "Accuracy % (normalised score = accuracy / base accuracy in parentheses)\n\n"
        f"{table2_markdown(summary['unseen'])}\n\n## Experts on their own tasks\n\n"
        f"{experts_markdown(summary['experts'])}\n"
    )
    written += _figures(folder, summary)
    write_json(written[0], summary)
    return written


def _seeds_caption(aggregated: dict[str, Any]) -> str:
    return f"n_seeds={aggregated['n_seeds']} seeds ({', '.join(str(s) for s in aggregated['seeds'])})"


def stat_cell(cell: dict[str, Any] | None, signed: bool = False) -> str:
    """``mean ± sd [CI low, CI high]`` in percent (points for a difference); no ``± sd`` for one seed."""
    if cell is None:
        return "-"
    mean, (low, high) = 100 * cell["mean"], cell["ci95"]
    sd = "" if cell["sd"] is None else f" ± {100 * cell['sd']:.1f}"
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{text}{sd} [{100 * low:.1f}, {100 * high:.1f}]"


def table2_seeds_markdown(aggregated: dict[str, Any], difference: bool = False) -> str:
    """Table 2 over seeds: methods as rows, unseen tasks (with their n items per seed) as columns, each cell
    accuracy % mean ± sd over seeds [95% CI]; ``difference``: each method minus the base model, in points,
    ``*`` where the paired difference's CI excludes 0."""
    unseen = aggregated["minus_base"] if difference else aggregated["unseen"]
    tasks = list(unseen)
    header = [f"{t} (n={next(iter(aggregated['unseen'][t].values()))['n_items']})" for t in tasks]
    lines = ["| method | " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(tasks)]
    for method in _method_rows(aggregated["unseen"][tasks[0]]):
        if difference and method == BASE_MODEL:
            continue
        cells = []
        for t in tasks:
            cell = unseen[t].get(method)
            mark = " *" if difference and cell is not None and cell["beyond_noise"] else ""
            cells.append(stat_cell(cell, signed=difference) + mark)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def experts_seeds_markdown(aggregated: dict[str, Any]) -> str:
    """Table 1 over seeds: each expert and the base model on the expert's own task, accuracy % mean ± sd
    over seeds [95% CI]."""
    lines = ["| expert | task | n | base | expert |", "| --- | --- | ---: | ---: | ---: |"]
    for domain, r in aggregated["experts"].items():
        n = next((c["n_items"] for c in (r["base"], r["expert"]) if c is not None), "-")
        lines.append(
            f"| {domain} | {r['task']} | {n} | {stat_cell(r['base'])} | {stat_cell(r['expert'])} |"
        )
    return "\n".join(lines)


def summed_confusion(summaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Figure 6 over seeds: each dispatcher's label counts per unseen task, summed over the seeds' jobs."""
    first = next(iter(summaries.values()))
    tables = {}
    for method, table in first["confusion"].items():
        domains = dict(zip(table["tasks"], table["rows"], strict=True))
        labels = list(first["unseen"][table["tasks"][0]][method]["labels"])
        summed: dict[str, dict[str, Any]] = {}
        for task in table["tasks"]:
            counts = [s["unseen"][task][method]["labels"] for s in summaries.values()]
            summed[task] = {
                method: {"labels": {label: sum(c.get(label, 0) for c in counts) for label in labels}}
            }
        tables[method] = confusion(summed, method, domains)
    return tables


def write_seeds_report(
    folder: Path, aggregated: dict[str, Any], summaries: dict[int, dict[str, Any]]
) -> list[Path]:
    """The multi-seed report: results.json (``aggregated``, which holds :func:`summed_confusion` under
    ``confusion``), table2.md (Tables 2 and 1 over seeds, and each method's difference to the base model),
    accuracy.png (Table 2 with CI error bars) and the figures of :func:`write_report` over seeds (curves and
    alphas as mean ± sd, confusion counts summed); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / RESULTS_FILE, folder / "table2.md"]
    write_json(written[0], aggregated)
    boot = aggregated["bootstrap"]
    how = (f"mean ± sd over {_seeds_caption(aggregated)} [95% CI: bootstrap, {boot['resamples']} resamples "
           "of the seeds and then of each drawn seed's items, percentile]")  # fmt: skip
    rebuilt = ""
    if any(r["rebuilt_items"] for r in aggregated["experts"].values()):
        rebuilt = (" The experts' results keep accuracies, not per-item lists: their items are rebuilt from "
                   "the accuracy and n, which gives the same bootstrap.")  # fmt: skip
    written[1].write_text(
        f"# Transformer² on the embedded model: unseen tasks, {_seeds_caption(aggregated)}\n\n"
        f"Accuracy %, {how}; n = test items per task and seed. One job per seed: seed-<s>/report/.\n\n"
        f"{table2_seeds_markdown(aggregated)}\n\n## Difference to the base model\n\n"
        f"Accuracy points, each method minus the base model on the same items, {how}; * where the CI of the "
        "paired difference excludes 0 (a difference beyond the noise of seeds and items).\n\n"
        f"{table2_seeds_markdown(aggregated, difference=True)}\n\n## Experts on their own tasks\n\n"
        f"Test accuracy %, {how}.{rebuilt}\n\n{experts_seeds_markdown(aggregated)}\n"
    )
    plt = _pyplot()
    if plt is None:
        return written
    seeds = list(summaries.values())
    return [
        *written,
        _accuracy_figure(plt, folder, aggregated),
        _training_curves_figure(plt, folder, [s["experts"] for s in seeds]),
        _confusion_figure(plt, folder, aggregated["confusion"], f" (summed over {len(seeds)} seeds)"),
        _alphas_figure(plt, folder, [s["unseen"] for s in seeds]),
    ]


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("no figures: they need matplotlib (pip install 'peft-svf[report]')")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figures(folder: Path, summary: dict[str, Any]) -> list[Path]:
    plt = _pyplot()
    if plt is None:
        return []
    return [
        _training_curves_figure(plt, folder, [summary["experts"]]),
        _confusion_figure(plt, folder, summary["confusion"]),
        _alphas_figure(plt, folder, [summary["unseen"]]),
    ]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _curve(
    histories: list[list[dict[str, Any]]], key: str
) -> tuple[list[tuple[Any, float]], list[float] | None]:
    """``key`` per step from one training log (no error bars), or its mean over several seeds' logs with the
    sd across them (the error bars)."""
    if len(histories) == 1:
        return [(h["step"], h[key]) for h in histories[0] if key in h], None
    by_step: dict[Any, list[float]] = {}
    for history in histories:
        for h in history:
            if key in h:
                by_step.setdefault(h["step"], []).append(h[key])
    stats = {step: _mean_sd(values) for step, values in sorted(by_step.items())}
    return [(step, m) for step, (m, _) in stats.items()], [sd for _, sd in stats.values()]


def _plot(ax: Any, points: list[tuple[Any, float]], errors: list[float] | None, **kwargs: Any) -> None:
    if errors is None:
        ax.plot(*zip(*points, strict=True), **kwargs)
    else:
        ax.errorbar(*zip(*points, strict=True), yerr=errors, capsize=3, **kwargs)


def _training_curves_figure(plt: Any, folder: Path, experts_per_seed: list[dict[str, Any]]) -> Path:
    """Figure 4: validation accuracy and sampled reward per step; over several seeds, mean ± sd."""
    fig, (ax_valid, ax_reward) = plt.subplots(1, 2, figsize=(10, 3.5))
    for domain in experts_per_seed[0]:
        histories = [experts[domain].get("log_history", []) for experts in experts_per_seed]
        evals, eval_errors = _curve(histories, "eval_accuracy")
        rewards, reward_errors = _curve(histories, "reward")
        if evals:
            _plot(ax_valid, evals, eval_errors, marker="o", label=domain)
        if rewards:
            _plot(ax_reward, rewards, reward_errors, label=domain)
    seeds = f" (mean ± sd, {len(experts_per_seed)} seeds)" if len(experts_per_seed) > 1 else ""
    ax_valid.set(title="validation accuracy" + seeds, xlabel="step")
    ax_reward.set(title="mean sampled reward" + seeds, xlabel="step")
    ax_valid.legend()
    return _save(plt, fig, folder / "training_curves.png")


def _confusion_figure(plt: Any, folder: Path, confusions: dict[str, Any], title: str = "") -> Path:
    """Figure 6: one dispatch confusion matrix per dispatcher (:func:`confusion`'s layout)."""
    methods = [m for m in (PROMPT, CLASSIFIER, SOFT) if m in confusions]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        c = confusions[method]
        ax.imshow(c["matrix"], cmap="Blues")
        ax.set_xticks(range(len(c["labels"])), c["labels"], rotation=30)
        ax.set_yticks(range(len(c["rows"])), c["rows"])
        for i, row in enumerate(c["matrix"]):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center")
        ax.set(title=method + title, xlabel="dispatched to", ylabel="true domain")
    return _save(plt, fig, folder / "confusion.png")


def _alphas_figure(plt: Any, folder: Path, unseen_per_seed: list[dict[str, Any]]) -> Path:
    """Figure 7: the few-shot CEM mixture (and soft dispatch's mean alpha) per task; over several seeds,
    the mean with the sd across seeds as error bars."""
    unseen = unseen_per_seed[0]
    experts = [k.removeprefix("expert: ") for k in next(iter(unseen.values())) if k.startswith("expert: ")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.8 / len(experts)
    for ax, (method, key) in zip(axes, ((FEW_SHOT, "alpha"), (SOFT, "mean_alpha")), strict=True):
        for j, expert in enumerate(experts):
            per_seed = [[_alpha_of(u[t][method][key], expert) for t in unseen] for u in unseen_per_seed]
            values, errors = per_seed[0], {}
            if len(per_seed) > 1:
                stats = [_mean_sd(list(column)) for column in zip(*per_seed, strict=True)]
                values, errors = [m for m, _ in stats], {"yerr": [sd for _, sd in stats], "capsize": 3}
            ax.bar([i + j * width for i in range(len(unseen))], values, width, label=expert, **errors)
        ax.set_xticks(
            [i + width * (len(experts) - 1) / 2 for i in range(len(unseen))], list(unseen), rotation=10
        )
        seeds = f" (mean ± sd, {len(unseen_per_seed)} seeds)" if len(unseen_per_seed) > 1 else ""
        ax.set(title=f"{method}: alpha per expert" + seeds, ylim=(0, 1))
    axes[0].legend()
    return _save(plt, fig, folder / "alphas.png")


def _accuracy_figure(plt: Any, folder: Path, aggregated: dict[str, Any]) -> Path:
    """Table 2 as grouped bars: per unseen task, each method's mean accuracy over seeds, 95% CI as error bars."""
    unseen = aggregated["unseen"]
    tasks, methods = list(unseen), _method_rows(next(iter(unseen.values())))
    fig, ax = plt.subplots(figsize=(max(8.0, 3.2 * len(tasks)) + 2.0, 4.2))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        cells = [unseen[t][method] for t in tasks]
        means = [100 * c["mean"] for c in cells]
        errors = [[m - 100 * c["ci95"][0] for m, c in zip(means, cells, strict=True)],
                  [100 * c["ci95"][1] - m for m, c in zip(means, cells, strict=True)]]  # fmt: skip
        ax.bar([i + j * width for i in range(len(tasks))], means, width, yerr=errors, capsize=2, label=method)
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(tasks))], tasks)
    ax.set(ylabel="accuracy %", ylim=(0, 100),
           title=f"unseen tasks: mean over {_seeds_caption(aggregated)}, 95% bootstrap CI")  # fmt: skip
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, folder / "accuracy.png")


def _alpha_of(alpha: dict[str, Any], expert: str) -> float:
    """An expert's coefficient; per-layer mixtures (a dict per expert) are shown by their mean."""
    value = alpha.get(expert, 0.0)
    if isinstance(value, dict):
        return sum(value.values()) / max(len(value), 1)
    return float(value)
