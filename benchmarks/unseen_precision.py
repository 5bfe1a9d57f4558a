"""What scoring the main job's unseen tasks (Table 2) in bf16 instead of float32 costs and changes.

    python benchmarks/unseen_precision.py OUTPUT_DIR [--quick] [--precisions float32 bf16]

OUTPUT_DIR is a finished job's folder (``report/results.json`` and the experts it names). With its experts and
z_c loaded as ``run_pipeline`` loads them, the whole unseen-task stage (``evaluate_unseen``: every method, dispatch
and CEM included) runs once per precision, one after the other: each cell's accuracy, its seconds and the items
whose verdict differs from the stored table's (a deterministic job reproduces it in the job's own precision),
and the stage's wall time per precision. Prints a table and writes JSON to
``benchmarks/results/unseen_precision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from results_file import print_table, write_results

from peft_svf.pipeline.config import FULL, QUICK
from peft_svf.pipeline.run import model_loader, self_adaptive_models
from peft_svf.pipeline.strategies import PROMPT, evaluate_unseen

RESULTS = Path(__file__).parent / "results" / "unseen_precision.json"


def moved(entry: dict[str, Any], stored_dir: str, output_dir: Path) -> dict[str, Any]:
    """An expert's entry with its path under ``output_dir``, wherever the job ran from."""
    path = Path(entry["path"])
    relative = path.relative_to(stored_dir) if path.is_relative_to(stored_dir) else path
    return {**entry, "path": str(output_dir / relative)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a finished main job's --output-dir")
    parser.add_argument("--quick", action="store_true", help="the job was a --quick one")
    parser.add_argument("--precisions", nargs="+", choices=["float32", "bf16"], default=["float32", "bf16"])
    args = parser.parse_args()
    stored = json.loads((args.output_dir / "report" / "results.json").read_text())
    preset = QUICK if args.quick else FULL
    if stored["config"]["unseen_n"] != preset.unseen_n:
        parser.error(f"the job scored {stored['config']['unseen_n']} items per task; the preset {preset.unseen_n}")
    stored_dir = stored["config"]["output_dir"]
    experts = {name: moved(entry, stored_dir, args.output_dir) for name, entry in stored["experts"].items()}
    classifier = moved(stored["classifier"], stored_dir, args.output_dir)
    load_start = os.getloadavg()[0]
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "unseen_precision"
    tables, walls = {}, {}
    for precision in args.precisions:  # a fresh model each: the stage adds its CEM mixtures to the one it scores
        models = self_adaptive_models(experts, classifier, model_loader(stored["config"]["model"]))
        config = replace(preset, output_dir=scratch / precision, unseen_bf16=precision == "bf16")
        start = time.perf_counter()
        tables[precision] = evaluate_unseen(config, models, models[PROMPT].tokenizer)
        walls[precision] = round(time.perf_counter() - start, 1)
    first = args.precisions[0]
    rows = []
    for task, methods in tables[first].items():
        for method in methods:
            reference = stored["unseen"][task][method]["correct_items"]
            row = {"task": task, "method": method, "stored_accuracy": stored["unseen"][task][method]["accuracy"]}
            for precision, table in tables.items():
                cell = table[task][method]
                row[f"{precision}_accuracy"] = cell["accuracy"]
                row[f"{precision}_seconds"] = cell["seconds"]
                row[f"{precision}_search_seconds"] = cell.get("search_seconds")
                row[f"{precision}_differ_from_stored"] = sum(a != b for a, b in zip(reference, cell["correct_items"], strict=True))
            rows.append(row)
    header = ["task", "method", *[f"{p} % (differ from stored)" for p in args.precisions],
              *[f"{p} s" for p in args.precisions]]  # fmt: skip
    print_table(header, ([r["task"], r["method"],
                          *[f"{100 * r[f'{p}_accuracy']:.1f} ({r[f'{p}_differ_from_stored']})" for p in args.precisions],
                          *[r[f"{p}_seconds"] for p in args.precisions]] for r in rows))  # fmt: skip
    print("stage wall s: " + ", ".join(f"{p} {w}" for p, w in walls.items()))
    write_results(RESULTS, args, [*rows, {"stage_wall_s": walls}], load_start)


if __name__ == "__main__":
    main()
