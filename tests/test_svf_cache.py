"""The SVD cache is tamper-evident: an entry is used only if it is an SVD of the weight it is read for.

Every bad entry (tampered values that still parse, wrong shapes or dtypes, non-finite values, truncated or
foreign files) is recomputed with an ``SVDCacheWarning`` naming the file and rewritten; a killed writer
never leaves a file that is read as an entry, and its orphaned temp file is removed later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import peft_svf.svf.decomposition as decomposition
from peft_svf import SVFConfig
from peft_svf.svf.decomposition import SVDCacheWarning, SVDFactors, compute_svd, decompose, weight_fingerprint
from tiny_models import make_tiny_llama

Factors = dict[str, torch.Tensor]


def entry_path(cache: Path, matrix: torch.Tensor, svd_dtype: str = "float32") -> Path:
    return cache / f"{weight_fingerprint(matrix, svd_dtype)}.safetensors"


def count_svd_calls(monkeypatch) -> list[torch.Size]:
    calls = []
    real = decomposition.compute_svd

    def counting(matrix, svd_dtype="float32"):
        calls.append(matrix.shape)
        return real(matrix, svd_dtype)

    monkeypatch.setattr(decomposition, "compute_svd", counting)
    return calls


def assert_equal_factors(a: SVDFactors, b: SVDFactors) -> None:
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S) and torch.equal(a.Vh, b.Vh)


def test_tampered_entry_of_a_model_is_recomputed_and_repaired(isolated_svd_cache, tmp_path, input_ids, monkeypatch):
    """The issue's case: S x 3 in a well-formed cached file used to move an expert's logits silently."""
    torch.manual_seed(0)
    get_peft_model(make_tiny_llama(), SVFConfig(init_noise_std=0.5)).save_pretrained(tmp_path / "expert")

    def expert_logits() -> torch.Tensor:
        with torch.no_grad():
            return PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "expert")(input_ids).logits

    expected = expert_logits()  # from fresh SVDs: the cache was filled by the model above
    weight = make_tiny_llama().model.layers[0].mlp.down_proj.weight
    path = entry_path(isolated_svd_cache, weight)
    good = load_file(path)
    save_file({**good, "S": good["S"] * 3}, path)  # still a valid safetensors file with the right shapes

    # What the tampered entry does when it is believed (the check switched off): the logits move a lot.
    with monkeypatch.context() as patch:
        patch.setattr(decomposition, "svd_defect", lambda *args: None)
        assert (expert_logits() - expected).abs().max() > 1.0

    with pytest.warns(SVDCacheWarning, match=rf"{path.name}: .*W - U diag\(S\) Vh") as caught:
        assert torch.equal(expert_logits(), expected)
    assert [w.category for w in caught].count(SVDCacheWarning) == 1  # only this entry; the 13 others pass
    repaired = load_file(path)
    assert all(torch.equal(repaired[k], good[k]) for k in good)  # rewritten with the fresh SVD
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVDCacheWarning)
        assert torch.equal(expert_logits(), expected)  # the repaired entry is accepted


def _tampered(transform: Callable[[Factors], Factors]) -> Callable[[Path, Factors], None]:
    def write(path: Path, good: Factors) -> None:
        save_file({k: v.contiguous() for k, v in transform({k: v.clone() for k, v in good.items()}).items()}, path)

    return write


def _permuted(f: Factors) -> Factors:
    order = torch.arange(f["S"].numel() - 1, -1, -1)  # ascending S, columns permuted to match: W exact
    return {"U": f["U"][:, order].contiguous(), "S": f["S"][order].contiguous(), "Vh": f["Vh"][order].contiguous()}


def _with(name: str, index: tuple[int, ...], value: float) -> Callable[[Factors], Factors]:
    def transform(f: Factors) -> Factors:
        f[name][index] = value
        return f

    return transform


def _truncated(path: Path, good: Factors) -> None:
    save_file(good, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS: dict[str, tuple[Callable[[Path, Factors], None], str]] = {
    # name: (how the entry is spoiled, the reason the warning must give)
    "S times 3": (_tampered(lambda f: {**f, "S": f["S"] * 3}), r"W - U diag\(S\) Vh"),
    "S times 1.001": (_tampered(lambda f: {**f, "S": f["S"] * 1.001}), r"W - U diag\(S\) Vh"),
    "one singular value zeroed": (_tampered(_with("S", (0,), 0.0)), "descending"),
    "smallest singular value halved": (_tampered(lambda f: {**f, "S": torch.cat([f["S"][:-1], f["S"][-1:] / 2])}),
                                       r"W - U diag\(S\) Vh"),
    "S ascending, columns permuted (W exact)": (_tampered(_permuted), "descending"),
    "U diag(S), 1, Vh (W exact, U not orthonormal)": (
        _tampered(lambda f: {"U": f["U"] * f["S"], "S": torch.ones_like(f["S"]), "Vh": f["Vh"]}), r"U\^T U - I"),
    "U and Vh swapped for a transposed SVD": (_tampered(lambda f: {"U": f["Vh"].T.contiguous(), "S": f["S"],
                                                                   "Vh": f["U"].T.contiguous()}), "shapes"),
    "float64 factors in a float32 cache": (_tampered(lambda f: {k: v.double() for k, v in f.items()}), "dtypes"),
    "float16 factors": (_tampered(lambda f: {k: v.half() for k, v in f.items()}), "dtypes"),
    "NaN in U": (_tampered(_with("U", (3, 2), float("nan"))), "non-finite"),
    "inf in S": (_tampered(_with("S", (0,), float("inf"))), "non-finite"),
    "NaN in Vh": (_tampered(_with("Vh", (1, 5), float("nan"))), "non-finite"),
    "missing Vh": (_tampered(lambda f: {"U": f["U"], "S": f["S"]}), "unreadable"),
    "an extra tensor": (_tampered(lambda f: {**f, "extra": torch.zeros(1)}), "unreadable"),
    "truncated to half": (_truncated, "unreadable"),
    "empty file": (lambda path, good: path.write_bytes(b""), "unreadable"),
    "garbage bytes": (lambda path, good: path.write_bytes(os.urandom(4096)), "unreadable"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_entry_is_recomputed_with_a_warning_and_rewritten(case, tmp_path, monkeypatch):
    matrix = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    fresh = compute_svd(matrix)
    path = entry_path(tmp_path, matrix)
    spoil, reason = CORRUPTIONS[case]
    spoil(path, {name: t.contiguous() for name, t in vars(fresh).items()})
    calls = count_svd_calls(monkeypatch)
    with pytest.warns(SVDCacheWarning, match=rf"{path.name}: .*{reason}"):
        factors = decompose(matrix, cache_dir=tmp_path)
    assert_equal_factors(factors, fresh)
    assert len(calls) == 1
    assert_equal_factors(SVDFactors(**load_file(path)), fresh)  # rewritten
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVDCacheWarning)
        assert_equal_factors(decompose(matrix, cache_dir=tmp_path), fresh)
    assert len(calls) == 1  # the repaired entry is a hit


def test_entry_of_another_weight_copied_under_this_name_is_rejected(tmp_path):
    matrix, other = torch.randn(2, 24, 40, generator=torch.Generator().manual_seed(0))
    decompose(other, cache_dir=tmp_path)
    entry_path(tmp_path, other).rename(entry_path(tmp_path, matrix))
    with pytest.warns(SVDCacheWarning, match=r"W - U diag\(S\) Vh"):
        assert_equal_factors(decompose(matrix, cache_dir=tmp_path), compute_svd(matrix))


@pytest.mark.parametrize(
    ("make", "svd_dtype"),
    [
        (lambda g: torch.randn(24, 40, generator=g), "float32"),
        (lambda g: torch.randn(40, 24, generator=g).bfloat16(), "float32"),
        (lambda g: torch.randn(40, 24, generator=g).half(), "float32"),
        (lambda g: torch.randn(30, 30, generator=g).double(), "float32"),
        (lambda g: torch.randn(24, 40, generator=g), "float64"),
        (lambda g: torch.randn(24, 3, generator=g) @ torch.randn(3, 40, generator=g), "float32"),  # rank 3
        (lambda g: torch.zeros(16, 8), "float32"),  # a zero weight: S = 0, 0 <= 0
    ],
)
def test_valid_entries_are_hits_without_a_warning(make, svd_dtype, tmp_path, monkeypatch):
    matrix = make(torch.Generator().manual_seed(0))
    first = decompose(matrix, svd_dtype, cache_dir=tmp_path)
    calls = count_svd_calls(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVDCacheWarning)
        for _ in range(5):  # fresh random probes each time
            assert_equal_factors(decompose(matrix, svd_dtype, cache_dir=tmp_path), first)
    assert calls == []


def test_the_check_leaves_the_global_rng_alone(tmp_path):
    matrix = torch.randn(24, 40)
    decompose(matrix, cache_dir=tmp_path)
    torch.manual_seed(3)
    decompose(matrix, cache_dir=tmp_path)  # a hit: the check draws its probes from its own generator
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(4))


def test_an_entry_that_cannot_be_read_or_written_never_stops_decomposition(tmp_path, caplog):
    matrix = torch.randn(24, 40)
    entry_path(tmp_path, matrix).mkdir(parents=True)  # a folder where the file should be
    with pytest.warns(SVDCacheWarning, match="unreadable"):
        assert_equal_factors(decompose(matrix, cache_dir=tmp_path), compute_svd(matrix))
    assert "Could not write SVD cache entry" in caplog.text


KILLED_WRITER = """
    import os, signal, sys
    import torch
    import peft_svf.svf.decomposition as decomposition

    def save_and_die(tensors, filename):
        with open(filename, "wb") as f:  # the first bytes of the entry reach the temp file, then SIGKILL
            f.write(b"\\x00" * 4096)
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    decomposition.save_file = save_and_die
    decomposition.decompose(torch.load(sys.argv[1]), cache_dir=sys.argv[2])
"""


def test_a_killed_writer_leaves_no_entry_and_its_temp_file_is_cleaned_later(tmp_path, monkeypatch):
    matrix = torch.randn(24, 40)
    torch.save(matrix, tmp_path / "matrix.pt")
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), tmp_path / "matrix.pt", cache],
                          capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    (orphan,) = cache.iterdir()  # only the temp file: nothing under the entry's name
    assert orphan.name.startswith(".peft-svf-") and orphan.name.endswith(".tmp")
    assert not entry_path(cache, matrix).exists()

    calls = count_svd_calls(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVDCacheWarning)
        assert_equal_factors(decompose(matrix, cache_dir=cache), compute_svd(matrix))
    assert len(calls) == 1 and entry_path(cache, matrix).exists()
    assert orphan.exists()  # young: it could be a save still under way in another process

    old = time.time() - 3600
    os.utime(orphan, (old, old))
    foreign = cache / "notes.tmp"  # not a name peft-svf writes: never touched
    foreign.write_text("mine")
    os.utime(foreign, (old, old))
    decompose(torch.randn(8, 8), cache_dir=cache)  # any later write cleans the orphans
    assert not orphan.exists() and foreign.exists()
    assert sorted(p.suffix for p in cache.iterdir()) == [".safetensors", ".safetensors", ".tmp"]
