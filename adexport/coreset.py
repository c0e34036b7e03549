"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Alg. 1) on a random projection.

Each step adds the point farthest from the current coreset:
``m_i = argmax_{m in M \\ C} min_{n in C} ||psi(m) - psi(n)||`` where ``psi`` is a seeded Gaussian
random projection (Johnson-Lindenstrauss) to ``projection_dim`` dimensions, which keeps the
distances' ranking while making each step cheaper.

Written in numpy rather than torch: the loop is thousands of small matrix-vector products, where
numpy's lower per-call overhead is about 4x faster on a CPU (measured on 2 cores, 49k x 128).
"""

from __future__ import annotations

import numpy as np

from adx_runtime.errors import ConfigError
from adx_runtime.progress import SILENT, Progress


def random_projection(features: np.ndarray, dim: int | None, seed: int) -> np.ndarray:
    """``(N, D) -> (N, dim)`` with a seeded Gaussian matrix scaled by ``1/sqrt(dim)``; identity if
    ``dim`` is None, 0 or not smaller than ``D``."""
    n, d = features.shape
    if not dim or dim >= d:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((d, dim)) / np.sqrt(dim)).astype(np.float32)
    return np.ascontiguousarray(features.astype(np.float32, copy=False) @ proj)


def greedy_coreset(
    features: np.ndarray,
    n_select: int,
    *,
    projection_dim: int | None = 128,
    seed: int = 0,
    progress: Progress = SILENT,
) -> np.ndarray:
    """Indices ``(n_select,)`` of the coreset, in selection order. Deterministic for a seed.

    Args:
        features: ``(N, D)`` patch features.
        n_select: coreset size, ``1 <= n_select <= N``.
    """
    n = len(features)
    if not 1 <= n_select <= n:
        raise ConfigError(f"coreset size must be between 1 and the number of features ({n}), got {n_select}")
    z = random_projection(features, projection_dim, seed)
    sq = np.einsum("nd,nd->n", z, z)
    rng = np.random.default_rng(seed)
    selected = np.empty(n_select, dtype=np.int64)
    idx = int(rng.integers(n))
    min_d2 = np.full(n, np.inf, dtype=np.float32)
    d2 = np.empty(n, dtype=np.float32)
    step = max(1, n_select // 100)
    with progress.task("Coreset selection", n_select) as advance:
        for i in range(n_select):
            selected[i] = idx
            # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2, written into one reused buffer
            np.dot(z, z[idx] * np.float32(-2.0), out=d2)
            d2 += sq
            d2 += sq[idx]
            np.minimum(min_d2, d2, out=min_d2)
            idx = int(np.argmax(min_d2))
            if (i + 1) % step == 0 or i + 1 == n_select:
                advance(step if (i + 1) % step == 0 else (i + 1) % step)
    return selected
