"""Atomic ``checkpoint-N`` folders and the completeness check used before resuming from one.

Trainer writes a checkpoint file by file into its final ``checkpoint-N`` folder, so a process killed during
a save leaves a folder that ``get_last_checkpoint`` picks and that crashes the resume (or resumes with a
fresh optimizer). SVFTrainer writes into ``tmp-checkpoint-N`` instead, fsyncs it and renames it once every
file is there; a name that does not match ``checkpoint-<digits>`` is never picked by transformers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from safetensors import safe_open
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

TEMP_PREFIX = f"tmp-{PREFIX_CHECKPOINT_DIR}"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def temp_checkpoint_dir(final: str) -> str:
    """The sibling ``tmp-checkpoint-N`` in which ``checkpoint-N`` is written before it is renamed."""
    parent, name = os.path.split(final)
    return os.path.join(parent, f"tmp-{name}")


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_checkpoint(temp: str, final: str) -> None:
    """Fsync every file of ``temp``, then make it ``final`` in one rename (replacing an old ``final``)."""
    for root, _dirs, files in os.walk(temp):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root, directory=True)
    if os.path.exists(final):
        # A folder cannot be renamed over a non-empty one: move the old one aside first. A kill between the
        # two renames leaves no checkpoint-N at all, so resuming falls back to the previous complete one.
        stale = f"{temp}-replaced"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(temp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(temp, final)
    _fsync(os.path.dirname(final) or ".", directory=True)


def remove_temp_checkpoints(run_dir: str) -> list[str]:
    """Delete the ``tmp-checkpoint-*`` folders that killed saves left behind; returns their paths."""
    if not os.path.isdir(run_dir):
        return []
    leftovers = [str(p) for p in Path(run_dir).glob(f"{TEMP_PREFIX}-*") if p.is_dir()]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def _zip_problem(path: str) -> str | None:
    """torch.save writes a zip archive: check its CRCs without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{os.path.basename(path)} is not a readable archive ({error})"
    return None if bad is None else f"{os.path.basename(path)} is corrupt (member {bad})"


def _adapter_problems(checkpoint: str) -> list[str]:
    """Every saved adapter (top level, or one sub-folder per extra adapter) has a config and loadable weights."""
    configs = [os.path.join(checkpoint, ADAPTER_CONFIG)] + [
        str(p) for p in Path(checkpoint).glob(f"*/{ADAPTER_CONFIG}")
    ]
    configs = [c for c in configs if os.path.isfile(c)]
    if not configs:
        return [f"no {ADAPTER_CONFIG}"]
    problems = []
    for config in configs:
        folder = os.path.dirname(config)
        label = os.path.relpath(folder, checkpoint)
        prefix = "" if label == "." else f"{label}/"
        try:
            with open(config, encoding="utf-8") as handle:
                json.load(handle)
        except (OSError, ValueError) as error:
            problems.append(f"{prefix}{ADAPTER_CONFIG} is unreadable ({error})")
        weights = os.path.join(folder, ADAPTER_WEIGHTS)
        if not os.path.isfile(weights):
            problems.append(f"no {prefix}{ADAPTER_WEIGHTS}")
            continue
        try:
            with safe_open(weights, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    handle.get_tensor(key)
        except Exception as error:  # safetensors raises its own error types for truncated files
            problems.append(f"{prefix}{ADAPTER_WEIGHTS} is unreadable ({error})")
    return problems


def checkpoint_problems(checkpoint: str, process_index: int = 0, world_size: int = 1) -> list[str]:
    """What keeps ``checkpoint`` from resuming a run exactly; empty when it is complete.

    Checked: the adapter files, ``trainer_state.json``, ``optimizer.pt``, ``scheduler.pt`` and this
    process's RNG state, each present and readable (the ``.pt`` archives by their CRCs, not unpickled).
    """
    if not os.path.isdir(checkpoint):
        return [f"{checkpoint} is not a folder"]
    problems = _adapter_problems(checkpoint)
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError) as error:
        problems.append(f"{TRAINER_STATE_NAME} is missing or unreadable ({error})")
    rng = "rng_state.pth" if world_size <= 1 else f"rng_state_{process_index}.pth"
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME, rng):
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            problems.append(f"no {name}")
        elif (problem := _zip_problem(path)) is not None:
            problems.append(problem)
    return problems


def numbered_checkpoints(run_dir: str) -> list[str]:
    """``checkpoint-N`` folders of ``run_dir``, newest step first (the names ``get_last_checkpoint`` matches)."""
    if not os.path.isdir(run_dir):
        return []
    found = [
        (int(match.group(1)), os.path.join(run_dir, name))
        for name in os.listdir(run_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(run_dir, name))
    ]
    return [path for _, path in sorted(found, reverse=True)]
