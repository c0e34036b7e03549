"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Alg. 1) on a random projection.

Each step adds the point farthest from the current coreset:
``m_i = argmax_{m in M \\ C} min_{n in C} ||psi(m) - psi(n)||`` where ``psi`` is a seeded Gaussian
random projection (Johnson-Lindenstrauss) to ``projection_dim`` dimensions, which keeps the
distances' ranking while making each step cheaper.

Written in numpy rather than torch: the loop is thousands of small matrix-vector products, where
numpy's lower per-call overhead is about 4x faster on a CPU (measured on 2 cores, 49k x 128).

Scale: each step reads all ``N`` projected points (a memory-bound matrix-vector product: 3.2 ms at
200k x 128 on 2 quiet cores), so the exact selection costs ``N x n_select`` and grows with the
square of the patch count: 1 M tiled patches at 10 % extrapolate to about 4,000 s on 2 busy cores.
:func:`select_coreset` therefore chooses among a seeded random pre-sample of ``presample`` patches
when there are more, with :func:`blocked_greedy_coreset` (the same selection done with
matrix-matrix products: 4.8 s against 112.9 s for 10,240 of 102,400 real patches), and keeps the
selection of :func:`greedy_coreset`, index for index, below that cap.
``benchmarks/coreset_scaling.py`` measures what the pre-sample costs in coverage against the exact
greedy (README, PatchCore). Pruning the exact greedy with the triangle inequality was measured and
rejected: on 100k PatchCore patches projected to 128 dimensions, a new centre moves only 20-40
points' distances, but k-means cells bound them so loosely that about 45 % of the cells (13 % of
the points) still had to be read at every step.
"""

from __future__ import annotations

import numpy as np

from adx_runtime.errors import ConfigError
from adx_runtime.progress import SILENT, Progress


#: Up to this many patches and no pre-sample, :func:`select_coreset` runs :func:`greedy_coreset`, the
#: selection earlier versions made, so fits of that size keep their banks index for index; above,
#: the blocked form (the same rule, its float32 ties aside), since the step-by-step form would take
#: hours there.
EXACT_FORM_MAX_POINTS = 200_000


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


def blocked_greedy_coreset(
    features: np.ndarray,
    n_select: int,
    *,
    projection_dim: int | None = 128,
    seed: int = 0,
    block: int = 2048,
    progress: Progress = SILENT,
) -> np.ndarray:
    """The greedy k-center selection of :func:`greedy_coreset` (same projection, same start, same
    rule), computed lazily so that most of the work is matrix-matrix products instead of one
    memory-bound matrix-vector product per step.

    Why it is the same selection: each point keeps an upper bound of its distance to the coreset
    (distances only shrink as centres are added). The ``block`` points with the largest bounds are
    kept exact at every step (a small product that stays in cache); while the best of them is
    strictly above the largest bound outside them, it is the true farthest point. When it is not,
    all the centres chosen since the last refresh are applied to every point in one product, and
    the block is chosen again. A new centre moves only the few points it becomes nearest to, so on
    PatchCore features a refresh comes every few hundred steps. The indices equal
    :func:`greedy_coreset`'s except where two distances tie within float32 rounding (a different
    summation order). Measured on 50k real patches, 5,000 selected, 2 busy cores (load 7): 5.4 s
    against 45.8 s.
    """
    n = len(features)
    if not 1 <= n_select <= n:
        raise ConfigError(f"coreset size must be between 1 and the number of features ({n}), got {n_select}")
    z = random_projection(features, projection_dim, seed)
    sq = np.einsum("nd,nd->n", z, z)
    idx = int(np.random.default_rng(seed).integers(n))  # the start greedy_coreset takes
    bound = np.full(n, np.inf, dtype=np.float32)  # >= the true squared distance to the coreset
    selected = np.empty(n_select, dtype=np.int64)
    pending: list[int] = []  # centres not yet applied to ``bound``
    cand = cand_z = cand_sq = cand_d2 = None
    threshold = np.float32(np.inf)
    step = max(1, n_select // 100)
    with progress.task("Coreset selection", n_select) as advance:
        for i in range(n_select):
            selected[i] = idx
            if (i + 1) % step == 0 or i + 1 == n_select:
                advance(step if (i + 1) % step == 0 else (i + 1) % step)
            if i + 1 == n_select:
                break
            pending.append(idx)
            if cand is not None and len(pending) < block:
                d2 = cand_z @ (z[idx] * np.float32(-2.0))
                d2 += cand_sq
                d2 += sq[idx]
                np.minimum(cand_d2, d2, out=cand_d2)
                j = int(np.argmax(cand_d2))
                if cand_d2[j] > threshold:  # strictly: a tie outside the block could have a lower index
                    idx = int(cand[j])
                    continue
            # refresh: every pending centre against every point, in row chunks of about 16 MB
            centres = z[pending] * np.float32(-2.0)
            c_sq = sq[pending]
            rows = max(256, (1 << 22) // len(pending))
            for s in range(0, n, rows):
                e = min(n, s + rows)
                d2 = z[s:e] @ centres.T
                d2 += c_sq
                m = d2.min(axis=1)
                m += sq[s:e]
                np.minimum(bound[s:e], m, out=bound[s:e])
            pending.clear()
            idx = int(np.argmax(bound))  # every bound is exact now
            b = min(block, n - 1)  # n >= 2 here: at least two points are selected
            part = np.argpartition(bound, n - b - 1)
            cand = np.sort(part[n - b:])
            threshold = bound[part[n - b - 1]]  # the largest bound outside the block
            cand_z, cand_sq, cand_d2 = z[cand], sq[cand], bound[cand].copy()
    return selected


def presample_indices(n: int, cap: int, seed: int) -> np.ndarray:
    """A seeded uniform random subset of ``range(n)`` of size ``cap``, sorted; all of it when
    ``cap`` is 0 or not smaller than ``n``.

    The generator is seeded apart from :func:`greedy_coreset`'s (``[seed, 1]``), so the pre-sample
    and the greedy start are not drawn from the same stream.
    """
    if cap < 0:
        raise ConfigError(f"coreset pre-sample size must be 0 (off) or positive, got {cap}")
    if not cap or cap >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(n, size=cap, replace=False)).astype(np.int64)


def select_coreset(
    features: np.ndarray,
    ratio: float,
    *,
    presample: int = 0,
    projection_dim: int | None = 128,
    seed: int = 0,
    progress: Progress = SILENT,
) -> np.ndarray:
    """Indices into ``features`` of PatchCore's memory bank, in selection order.

    ``N`` patches, at most ``presample`` of them (0 = no cap): the exact greedy
    (:func:`greedy_coreset`) selects ``round(ratio * N)`` of them, exactly as before the pre-sample
    existed (above :data:`EXACT_FORM_MAX_POINTS`, in its blocked form). More than ``presample``:
    the blocked greedy selects ``round(ratio * presample)`` among a seeded random pre-sample of
    ``presample`` patches (:func:`presample_indices`), so the selection's time and memory, and the
    bank's size, stop growing with ``N``. Deterministic for a seed. All indices when the ratio
    keeps every candidate.
    """
    n = len(features)
    if n == 0:
        raise ConfigError("no features to select a coreset from")
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"coreset ratio must be in (0, 1], got {ratio}")
    pool = presample_indices(n, presample, seed)
    candidates = features if len(pool) == n else features[pool]
    n_select = max(1, int(round(ratio * len(pool))))
    if n_select >= len(pool):
        return pool
    if len(pool) == n and n <= EXACT_FORM_MAX_POINTS:  # what earlier versions selected, index for index
        return greedy_coreset(features, n_select, projection_dim=projection_dim, seed=seed, progress=progress)
    picked = blocked_greedy_coreset(candidates, n_select, projection_dim=projection_dim, seed=seed, progress=progress)
    return picked if len(pool) == n else pool[picked]
