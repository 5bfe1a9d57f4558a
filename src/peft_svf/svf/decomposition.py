"""Reduced SVD of base weights, computed once and cached on disk.

Decomposing every targeted matrix of a model takes seconds to minutes, and the result depends only on
the weight's values, so it is cached as safetensors keyed by a hash of those values (a changed weight gets
a new key, so a stale entry is never used). An entry is used only after checking that it is an SVD of the
weight it is read for (see :func:`svd_defect`): a tampered, torn or foreign entry is recomputed with an
:class:`SVDCacheWarning` naming the file, and rewritten atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
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


# An entry must be an SVD of the very weight its name claims: factors that only parse (a crafted file, S
# scaled by 3, a torn write) would silently change the model. Random probes test that in O((m + n) r k)
# instead of the O(m n r) of rebuilding U diag(S) Vh: fresh Gaussian probes, unknown to whoever wrote the
# file, estimate the Frobenius norms of the residuals (any error matrix E gives E[|E x|^2] = |E|_F^2).
_PROBES = 8
# Fresh float32 SVDs reconstruct to about 0.6 sqrt(max(m, n)) eps (4e-6 at 4096x4096); 50 sqrt(max(m, n)) eps
# leaves a margin of ~100 while any tampering that matters (S x 1.001 is already 1e-3) is far above it.
_TOLERANCE_SQRT_EPS = 50.0
# A writer killed between creating its temp file and renaming it leaves the temp file behind; one older
# than this cannot belong to a save still under way (the largest entries take well under a minute to write).
_ORPHAN_AGE_S = 600.0
_TMP_PREFIX = ".peft-svf-"
_TMP_SUFFIX = ".safetensors.tmp"


class SVDCacheWarning(UserWarning):
    """An SVD cache entry was ignored (and recomputed): unreadable, malformed or not an SVD of its weight."""


def svd_tolerance(shape: tuple[int, int], svd_dtype: str) -> float:
    """Largest relative residual accepted for an SVD of an ``shape`` matrix in ``svd_dtype``.

    The check runs in ``svd_dtype`` against the weight cast to it, which is exact for float16, bfloat16 and
    float32 weights; so only the SVD's precision and the matrix size set the tolerance.
    """
    return _TOLERANCE_SQRT_EPS * max(shape) ** 0.5 * torch.finfo(_SVD_DTYPES[svd_dtype]).eps


def svd_defect(matrix: torch.Tensor, factors: SVDFactors, svd_dtype: str) -> str | None:
    """Why ``factors`` are not a reduced SVD of ``matrix``, or None when they are (to the tolerance).

    Checks shapes, dtypes, finiteness, ``S`` non-negative and descending (a permuted S with matching U and
    V columns reconstructs W but pairs the SVF vector with the wrong directions), ``U`` and ``V``
    orthonormal (``U = A, S = 1, Vh = B`` with ``A B = W`` also reconstructs W) and ``W = U diag(S) Vh``.
    """
    m, n = matrix.shape
    r = min(m, n)
    dtype = _SVD_DTYPES[svd_dtype]
    U, S, Vh = factors.U, factors.S, factors.Vh
    if U.shape != (m, r) or S.shape != (r,) or Vh.shape != (r, n):
        return f"shapes U {tuple(U.shape)}, S {tuple(S.shape)}, Vh {tuple(Vh.shape)} for a {m}x{n} weight"
    if not U.dtype == S.dtype == Vh.dtype == dtype:
        return f"dtypes {U.dtype}, {S.dtype}, {Vh.dtype} where svd_dtype is {svd_dtype}"
    seed = int.from_bytes(os.urandom(8), "little") >> 1  # unpredictable, and the global RNG is left alone
    generator = torch.Generator(device=matrix.device).manual_seed(seed)
    x = torch.randn(n, _PROBES, generator=generator, device=matrix.device, dtype=dtype)
    y = torch.randn(r, _PROBES, generator=generator, device=matrix.device, dtype=dtype)
    vh_probes = Vh @ torch.cat([x, Vh.T @ y], dim=1)  # Vh x, Vh V y
    u_probes = U @ torch.cat([S[:, None] * vh_probes[:, :_PROBES], y], dim=1)  # U S Vh x, U y
    # A NaN or inf anywhere in U, S or Vh reaches these products (the probes have no zeros): a cheaper
    # test than scanning every factor
    if not bool(torch.isfinite(vh_probes).all() and torch.isfinite(u_probes).all()):
        return "non-finite values"
    if bool((S < 0).any()) or bool((S[1:] > S[:-1]).any()):
        return "singular values that are negative or not in descending order"
    wx = matrix.detach().to(dtype) @ x
    tol = svd_tolerance((m, n), svd_dtype)
    checks = {  # name: (|residual|, |reference|); a zero weight's exact SVD (S = 0) passes with 0 <= 0
        "W - U diag(S) Vh": (torch.linalg.norm(wx - u_probes[:, :_PROBES]), torch.linalg.norm(wx)),
        "U^T U - I": (torch.linalg.norm(U.T @ u_probes[:, _PROBES:] - y), torch.linalg.norm(y)),
        "Vh V - I": (torch.linalg.norm(vh_probes[:, _PROBES:] - y), torch.linalg.norm(y)),
    }
    for name, (residual, reference) in checks.items():
        if not float(residual) <= tol * float(reference):  # NaN fails too
            relative = float(residual) / float(reference) if float(reference) else float("inf")
            return f"relative residual |{name}| = {relative:.3g}, above the tolerance {tol:.3g}"
    return None


def _read_cached(path: Path, matrix: torch.Tensor, svd_dtype: str) -> SVDFactors | None:
    """The entry at ``path`` if it is an SVD of ``matrix`` (on its device); else None, with a warning."""
    try:
        tensors = load_file(str(path), device=str(matrix.device))
        if set(tensors) != {"U", "S", "Vh"}:
            raise ValueError(f"tensors {sorted(tensors)} instead of U, S, Vh")
    except Exception as err:  # truncated, corrupted or foreign file: recompute rather than fail
        defect = f"unreadable ({err})"
    else:
        factors = SVDFactors(U=tensors["U"], S=tensors["S"], Vh=tensors["Vh"])
        defect = svd_defect(matrix, factors, svd_dtype)
        if defect is None:
            return factors
    warnings.warn(
        f"Ignoring SVD cache entry {path}: {defect}; recomputing the decomposition and rewriting the entry.",
        SVDCacheWarning,
        stacklevel=3,
    )
    return None


def _remove_orphans(directory: Path) -> None:
    """Delete temp files that killed writers left in ``directory`` (never a save still under way)."""
    now = time.time()
    for orphan in directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        with contextlib.suppress(OSError):  # gone already (another process cleaned it) or not ours to delete
            if now - orphan.stat().st_mtime > _ORPHAN_AGE_S:
                orphan.unlink()


def _write_cached(path: Path, factors: SVDFactors) -> None:
    """Write to a temp file, then rename: a reader sees the old entry, no entry or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path.parent)
    tensors = {name: t.detach().contiguous().cpu() for name, t in vars(factors).items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows
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
        cached = _read_cached(path, matrix, svd_dtype)
        if cached is not None:
            return cached
    factors = compute_svd(matrix, svd_dtype)
    try:
        _write_cached(path, factors)
    except OSError as err:  # a read-only or full cache must not stop training
        logger.warning("Could not write SVD cache entry %s (%s).", path, err)
    return factors
