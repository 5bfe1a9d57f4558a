"""Reduced SVD of base weights, computed once and cached on disk.

Decomposing every targeted matrix of a model takes seconds to minutes, and the result depends only on
the weight's values, so it is cached as safetensors keyed by a hash of those values (a changed weight gets
a new key, so a stale entry is never used).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash
from safetensors.torch import load_file, save_file

from ..paths import default_cache_dir

logger = logging.getLogger(__name__)

_SVD_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class SVDFactors:
    """``W = U @ diag(S) @ Vh`` with ``U`` (m, r), ``S`` (r,), ``Vh`` (r, n), ``r = min(m, n)``."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def default_svd_cache_dir() -> Path:
    return default_cache_dir() / "svd"


def weight_fingerprint(matrix: torch.Tensor, svd_dtype: str) -> str:
    """Hash of shape, dtype, SVD precision and every value of the matrix."""
    data = matrix.detach().contiguous().cpu().reshape(-1)
    digest = xxhash.xxh3_128()
    digest.update(f"{tuple(matrix.shape)}|{matrix.dtype}|{svd_dtype}".encode())
    digest.update(data.view(torch.uint8).numpy())  # raw bytes: works for bf16, which numpy lacks
    return digest.hexdigest()


def compute_svd(matrix: torch.Tensor, svd_dtype: str = "float32") -> SVDFactors:
    """Reduced SVD in at least float32, on the matrix's own device."""
    if svd_dtype not in _SVD_DTYPES:
        raise ValueError(f"svd_dtype must be one of {sorted(_SVD_DTYPES)}, got {svd_dtype!r}")
    U, S, Vh = torch.linalg.svd(matrix.detach().to(_SVD_DTYPES[svd_dtype]), full_matrices=False)
    return SVDFactors(U=U, S=S, Vh=Vh)


def _read_cached(path: Path, shape: tuple[int, int]) -> SVDFactors | None:
    try:
        tensors = load_file(str(path))
        factors = SVDFactors(U=tensors["U"], S=tensors["S"], Vh=tensors["Vh"])
    except Exception as err:  # corrupted or partial file: recompute rather than fail
        logger.warning("Ignoring unreadable SVD cache entry %s (%s); recomputing.", path, err)
        return None
    m, n = shape
    r = min(m, n)
    if factors.U.shape != (m, r) or factors.S.shape != (r,) or factors.Vh.shape != (r, n):
        logger.warning("Ignoring SVD cache entry %s with wrong shapes; recomputing.", path)
        return None
    return factors


def _write_cached(path: Path, factors: SVDFactors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in vars(factors).items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)  # atomic: readers never see a half-written entry
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def decompose(
    matrix: torch.Tensor,
    svd_dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> SVDFactors:
    """SVD of ``matrix`` (out_features x in_features), from the disk cache when it holds this exact matrix."""
    if not use_cache:
        return compute_svd(matrix, svd_dtype)
    directory = Path(cache_dir) if cache_dir is not None else default_svd_cache_dir()
    path = directory / f"{weight_fingerprint(matrix, svd_dtype)}.safetensors"
    if path.exists():
        cached = _read_cached(path, tuple(matrix.shape))
        if cached is not None:
            device = matrix.device
            return SVDFactors(U=cached.U.to(device), S=cached.S.to(device), Vh=cached.Vh.to(device))
    factors = compute_svd(matrix, svd_dtype)
    try:
        _write_cached(path, factors)
    except OSError as err:  # a read-only or full cache must not stop training
        logger.warning("Could not write SVD cache entry %s (%s).", path, err)
    return factors
