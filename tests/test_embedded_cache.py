"""The embedded model's first-use conversion when several processes start at once on a fresh cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from peft_svf import embedded


def test_concurrent_first_use_publishes_one_complete_checkpoint(tmp_path, monkeypatch):
    """Two loaders converting at the same time each write their own folder; one is published whole, the other
    dropped, and neither fails (a shared scratch folder let one process rename it away mid-write)."""
    monkeypatch.setenv("PEFT_SVF_CACHE", str(tmp_path))
    both_converting = threading.Barrier(2, timeout=30)
    destinations: list[Path] = []

    def fake_convert(destination: Path) -> None:
        assert not any(destination.iterdir()), "a conversion must start in an empty folder of its own"
        destinations.append(destination)
        (destination / "config.json").write_text(destination.name)
        both_converting.wait()
        (destination / "model.safetensors").write_text(destination.name)

    monkeypatch.setattr(embedded, "_convert_gguf", fake_convert)
    results: list[Path] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(embedded.embedded_model_path())
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    target = tmp_path / "models" / embedded.EMBEDDED_MODEL_NAME
    assert results == [target, target]
    assert len(set(destinations)) == 2
    # The published folder is one conversion's, whole: both files written by the same writer.
    assert (target / "config.json").read_text() == (target / "model.safetensors").read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert target.stat().st_mode & 0o777 == 0o755  # readable by the cache's other users, as before


def test_a_failed_conversion_leaves_no_checkpoint_and_no_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_SVF_CACHE", str(tmp_path))

    def broken_convert(destination: Path) -> None:
        (destination / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(embedded, "_convert_gguf", broken_convert)
    with pytest.raises(OSError, match="disk full"):
        embedded.embedded_model_path()
    assert list((tmp_path / "models").iterdir()) == []
