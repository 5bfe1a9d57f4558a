"""Multi-seed statistics for the main job: per Table 2 / Table 1 cell, mean ± sd over seeds and a 95% CI.

One job is one seed: the experts, z_c and the CEM search all depend on it, and at n=60 test items one
item is 1.7 points. A cell's spread therefore has two sources, the seed (which expert came out of
training) and the items (which questions happened to be in the test slice). The CI is a two-level
bootstrap that resamples both: seeds with replacement, then each drawn seed's items with replacement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
RNG_SEED = 0
LEVEL = 0.95
# A scored cell's per-item correctness (0/1, in test order), written by strategies._score.
ITEMS_KEY = "correct_items"
# Table 1's cells: the experts' results (trainer.recipe.train_expert) record accuracies; these keys, if a
# results.json has them, hold the per-item lists behind base_test_accuracy and expert_test_accuracy.
EXPERT_ITEMS_KEYS = {"base": "base_test_items", "expert": "expert_test_items"}
EXPERT_ACCURACY_KEYS = {"base": "base_test_accuracy", "expert": "expert_test_accuracy"}


def bootstrap_ci(
    items_per_seed: Sequence[Sequence[float]],
    resamples: int = RESAMPLES,
    rng_seed: int = RNG_SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile CI of the mean over seeds of each seed's mean item score, bootstrapped on two levels.

    Both the seed and the test items are noise, so each resample draws S seeds with replacement, then for
    every drawn seed its n items with replacement, and takes the mean over drawn seeds of the mean over drawn
    items (the statistic the point estimate is). The RNG protocol, fixed so a run is reproducible (and a
    test can replay it): ``rng = numpy.random.default_rng(rng_seed)``; ``rng.integers(0, S, size=(resamples,
    S))`` for the seeds, then ``rng.integers(0, n, size=(resamples, S, n))`` for the items; the bounds are
    ``numpy.percentile`` (linear) at ``(1 - level) / 2`` and ``(1 + level) / 2``. Every seed must have the
    same n items (the same test slice): the items are paired across seeds and methods.
    """
    lengths = {len(items) for items in items_per_seed}
    if not items_per_seed or len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            f"every seed needs the same, non-zero number of items; got lengths {sorted(lengths)}"
        )
    data = np.asarray(items_per_seed, dtype=float)  # (S, n)
    n_seeds, n_items = data.shape
    rng = np.random.default_rng(rng_seed)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    items = rng.integers(0, n_items, size=(resamples, n_seeds, n_items))
    statistic = data[seeds[..., None], items].mean(axis=2).mean(axis=1)
    low, high = np.percentile(statistic, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def summarize_cell(
    items_by_seed: Mapping[int, Sequence[float]], resamples: int = RESAMPLES, rng_seed: int = RNG_SEED
) -> dict[str, Any]:
    """One cell over seeds: ``mean`` and ``sd`` (sample sd, ddof 1; None for one seed) of the per-seed means,
    ``ci95`` (:func:`bootstrap_ci`), ``n_items`` per seed, ``n_seeds`` and ``per_seed`` means. Fractions,
    like the per-seed results (accuracy 0-1; a paired difference -1 to 1)."""
    per_seed = {seed: float(np.mean(items)) for seed, items in items_by_seed.items()}
    values = np.array(list(per_seed.values()))
    low, high = bootstrap_ci(list(items_by_seed.values()), resamples=resamples, rng_seed=rng_seed)
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
        "ci95": [low, high],
        "n_items": len(next(iter(items_by_seed.values()))),
        "n_seeds": len(values),
        "per_seed": {str(seed): value for seed, value in per_seed.items()},
    }


def cell_items(score: Mapping[str, Any]) -> list[int]:
    """A scored cell's per-item correctness, checked against its recorded accuracy (a mismatch is a bug)."""
    if ITEMS_KEY not in score:
        raise ValueError(
            f"a scored cell lacks {ITEMS_KEY!r} (results from before per-item records were kept?)"
        )
    items = list(score[ITEMS_KEY])
    if len(items) != score["n"] or abs(sum(items) / max(len(items), 1) - score["accuracy"]) > 1e-9:
        raise ValueError(f"{ITEMS_KEY} disagree with accuracy {score['accuracy']} on n={score['n']}")
    return items


def expert_items(results: Mapping[str, Any], which: str) -> tuple[list[int], bool] | None:
    """Table 1's items for ``which`` ("base" or "expert"): the recorded list if there is one, else a 0/1
    list rebuilt from the accuracy and ``test_n`` (True second), None when the expert was not tested.

    A rebuilt list gives the same single-cell bootstrap distribution as the real one (resampling 0/1 items
    with replacement depends only on how many are 1), but cannot be paired with another row's items."""
    if results.get(EXPERT_ITEMS_KEYS[which]) is not None:
        return [int(x) for x in results[EXPERT_ITEMS_KEYS[which]]], False
    accuracy, n = results.get(EXPERT_ACCURACY_KEYS[which]), results.get("test_n")
    if accuracy is None or not n:
        return None
    correct = round(accuracy * n)
    return [1] * correct + [0] * (n - correct), True


def aggregate_seeds(
    summaries: Mapping[int, Mapping[str, Any]], resamples: int = RESAMPLES, rng_seed: int = RNG_SEED
) -> dict[str, Any]:
    """Aggregates the per-seed summaries of :func:`~peft_svf.pipeline.run_pipeline` (``{seed: summary}``).

    Returns ``seeds``, ``n_seeds``, ``bootstrap`` (the CI's settings), ``unseen`` (``{task: {method:
    cell}}``, cells from :func:`summarize_cell`), ``minus_base`` (the same for each method's paired per-item
    difference to the base model on the same items, with ``beyond_noise``: the CI excludes 0) and
    ``experts`` (Table 1: ``{domain: {"task", "base": cell, "expert": cell, "rebuilt_items"}}``).
    """
    seeds = list(summaries)
    if not seeds:
        raise ValueError("no seeds to aggregate")
    first = summaries[seeds[0]]
    unseen: dict[str, dict[str, Any]] = {}
    minus_base: dict[str, dict[str, Any]] = {}
    for task, row in first["unseen"].items():
        items = {m: {s: cell_items(summaries[s]["unseen"][task][m]) for s in seeds} for m in row}
        unseen[task] = {m: summarize_cell(by_seed, resamples, rng_seed) for m, by_seed in items.items()}
        if "best single expert" in row:
            unseen[task]["best single expert"]["chosen"] = {
                str(s): summaries[s]["unseen"][task]["best single expert"].get("expert") for s in seeds
            }
        base = items.get("base")
        if base is None:
            continue
        minus_base[task] = {}
        for method, by_seed in items.items():
            if method == "base":
                continue
            diff = {s: [a - b for a, b in zip(by_seed[s], base[s], strict=True)] for s in seeds}
            cell = summarize_cell(diff, resamples, rng_seed)
            cell["beyond_noise"] = not cell["ci95"][0] <= 0.0 <= cell["ci95"][1]
            minus_base[task][method] = cell
    experts: dict[str, Any] = {}
    for domain, results in first["experts"].items():
        entry: dict[str, Any] = {"task": results.get("task"), "rebuilt_items": False}
        for which in ("base", "expert"):
            found = {s: expert_items(summaries[s]["experts"][domain], which) for s in seeds}
            if any(v is None for v in found.values()):
                entry[which] = None
                continue
            entry[which] = summarize_cell({s: v[0] for s, v in found.items()}, resamples, rng_seed)
            entry["rebuilt_items"] |= any(v[1] for v in found.values())
        experts[domain] = entry
    return {
        "seeds": seeds,
        "n_seeds": len(seeds),
        "bootstrap": {
            "resamples": resamples,
            "rng_seed": rng_seed,
            "level": LEVEL,
            "method": "percentile; resample seeds with replacement, then each drawn seed's items",
        },
        "unseen": unseen,
        "minus_base": minus_base,
        "experts": experts,
    }
