"""The ``gaussian`` scoring kind: Mahalanobis distance to a Gaussian per position (PaDiM, Defard
et al. 2021, eq. 2), or to one Gaussian over image embeddings (``P = 1``, image-level: CutPaste),
or to one Gaussian shared by every position of a map (statistics with ``P = 1``, a graph with a
patch grid: CutPaste's patch-level localisation).

``M(x_p) = sqrt((x_p - mu_p)^T S_p^-1 (x_p - mu_p)) = ||L_p^T (x_p - mu_p)||`` with the stored
Cholesky factor ``S_p^-1 = L_p L_p^T`` (a packed lower triangle; a float16 store is widened to
float32 at load), never negative.

Per-position statistics are held as column blocks of the triangle (:class:`TriangularBlocks`):
column block ``j`` of ``L`` is zero above its first row, so only rows ``a_j..d`` of it are kept and
multiplied; ``y_j = (x - mu)[a_j:] @ L[a_j:, block j]`` is one batched matmul per block. With four
blocks of d = 100, that is 62.5 % of the full matrices' bytes (the triangle itself is 50.5 %). At
batch 1 the distance reads every byte of the statistics once per image, so its time is memory
bandwidth: the positions are split over a few threads (numpy releases the GIL in matmul), whose
combined bandwidth is more than one core's. ``benchmarks/padim_distance.py`` on PaDiM's default
store (4,096 positions, d = 100), on the machine it ran on (the ratios carry over, not the times):
one full ``(P, B, d) @ (P, d, d)`` matmul 12.5 ms per image at batch 1 and 3.4 at batch 8; the
column blocks on one thread 11.3 and 3.1, on two threads 8.1 and 1.6 (ms per image; within 2e-7 of
float64).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.bundle import bundle_file
from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.kinds import GaussianSection
from adx_runtime.npz import read_npz
from adx_runtime.postprocess import check_patch_grid
from adx_runtime.scorers import ScoreOutput

#: Column-block width of the triangle, about: d = 100 gives 4 blocks of 25.
BLOCK_WIDTH = 25
#: At most this many threads split the positions; more gain nothing once memory bandwidth is full.
MAX_THREADS = 4


def scorer_threads() -> int:
    """Threads for the per-position distance: the cores this process may use, at most MAX_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


class TriangularBlocks:
    """Lower-triangular factors ``L (P, d, d)``, kept as column blocks without their zero rows.

    Built from the packed lower triangle ``(P, d (d + 1) / 2)`` (numpy ``tril_indices`` order) a few
    positions at a time, so the full ``(P, d, d)`` matrices never exist at once."""

    def __init__(self, packed: np.ndarray, d: int, *, threads: int = 1, chunk: int = 256):
        P = packed.shape[0]
        n_blocks = max(1, round(d / BLOCK_WIDTH))
        width = math.ceil(d / n_blocks)
        self.starts = list(range(0, d, width))
        self.blocks = [np.empty((P, d - a, min(width, d - a)), np.float32) for a in self.starts]
        rows, cols = np.tril_indices(d)
        full = np.zeros((min(chunk, P), d, d), np.float32)
        for p0 in range(0, P, chunk):
            n = min(chunk, P - p0)
            full[:n, rows, cols] = packed[p0 : p0 + n]
            for a, block in zip(self.starts, self.blocks):
                block[p0 : p0 + n] = full[:n, a:, a : a + block.shape[2]]
        self.positions, self.dim = P, d
        self.nbytes = sum(b.nbytes for b in self.blocks)
        self.threads = max(1, min(threads, P))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        """The worker threads, started on first use and again in a forked child (threads do not
        survive a fork, and an executor inherited without them would never run its tasks)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="adx-gaussian")
            self._pool_pid = os.getpid()
        return self._pool

    def sum_of_squares(self, x: np.ndarray, start: int = 0) -> np.ndarray:
        """``x (n, B, d)`` (already centred) -> ``||L_p^T x_pb||^2`` as ``(n, B)``, for the factors of
        positions ``start .. start + n`` (all of them by default)."""
        n = x.shape[0]
        if not 0 <= start <= start + n <= self.positions:
            raise ValueError(f"positions {start}..{start + n} are outside the {self.positions} stored")
        out = np.zeros(x.shape[:2], np.float32)

        def part(p0: int, p1: int) -> None:
            for a, block in zip(self.starts, self.blocks):
                y = np.matmul(x[p0:p1, :, a:], block[start + p0:start + p1])  # (m, B, width): rows of (L^T x)^T
                out[p0:p1] += np.einsum("pbw,pbw->pb", y, y)

        bounds = np.linspace(0, n, self.threads + 1).astype(int)
        if self.threads == 1 or n < self.threads:
            part(0, n)
        else:
            pool = self._executor()
            for f in [pool.submit(part, int(p0), int(p1)) for p0, p1 in zip(bounds[:-1], bounds[1:])]:
                f.result()
        return out


def mahalanobis(embedding: np.ndarray, mean: np.ndarray, chol: np.ndarray | TriangularBlocks,
                start: int = 0) -> np.ndarray:
    """``embedding (B, P, d)``, ``mean (P, d)``, ``chol`` (``(P, d, d)`` or its blocks) -> distances ``(B, P)``.

    With one Gaussian (``mean (1, d)``, ``chol (1, d, d)``) every position uses it: one
    ``(B * P, d) @ (d, d)`` matmul. ``start``: where ``mean``'s positions begin among the blocks'
    (statistics kept per tile position hold every tile's positions, tile-major)."""
    if mean.shape[0] == 1:
        assert isinstance(chol, np.ndarray), "one Gaussian is held as its (1, d, d) matrix"
        B, P, d = embedding.shape
        y = (embedding.reshape(B * P, d) - mean) @ chol[0]
        return np.sqrt(np.einsum("nd,nd->n", y, y)).reshape(B, P)
    x = np.ascontiguousarray((embedding - mean[None]).transpose(1, 0, 2))  # (P, B, d)
    if isinstance(chol, TriangularBlocks):
        return np.sqrt(chol.sum_of_squares(x, start).T)
    y = np.matmul(x, chol)  # rows of x @ L = (L^T x)^T
    return np.sqrt(np.einsum("pbd,pbd->bp", y, y))


class GaussianScorer:
    backend = "numpy"

    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], bank_device: str):
        s = GaussianSection.from_dict(manifest["scoring"])
        self.output = s.embedding_output
        # None: one Gaussian, image-level scores
        self.grid = check_patch_grid(manifest, self.output, "flat") if manifest["postprocess"]["patch_grid"] else None
        data = read_npz(bundle_file(bundle_dir, manifest, s.gaussian["file"], what="scoring.gaussian.file"),
                        ["mean", "chol_packed"], what="Gaussian statistics")
        self.mean = np.ascontiguousarray(data["mean"], dtype=np.float32)
        packed = data["chol_packed"]
        P, d = self.mean.shape
        self.positions = self.grid[0] * self.grid[1] if self.grid else 1
        #: Gaussian sets kept per tile position (1: one set for every tile, or an untiled model)
        self.tiles = s.tiles
        if packed.shape != (P, d * (d + 1) // 2) or P not in (1, self.positions * self.tiles) or (P == 1 < self.tiles):
            raise BundleError(f"Gaussian statistics do not fit together: mean {self.mean.shape}, packed Cholesky "
                              f"{packed.shape}, grid {self.grid}, {self.tiles} tile position(s)")
        if self.tiles > 1:
            self._check_tile_layout(manifest)
        if P == 1:  # one Gaussian: a single (d, d) matrix, used by one large matmul
            self.chol: np.ndarray | TriangularBlocks = np.zeros((1, d, d), np.float32)
            rows, cols = np.tril_indices(d)
            self.chol[0, rows, cols] = packed[0]
        else:
            self.chol = TriangularBlocks(packed, d, threads=scorer_threads())

    def _check_tile_layout(self, manifest: dict[str, Any]) -> None:
        """Statistics per tile position need a layout that is the same for every image: the input
        contract's fixed working size, giving exactly as many tiles as there are Gaussian sets."""
        from adx_runtime.preprocess import PreprocessConfig  # noqa: PLC0415
        from adx_runtime.tiling import tile_layout  # noqa: PLC0415

        cfg = PreprocessConfig.from_dict(manifest["input"])
        fixed = cfg.tiling.fixed_size if cfg.tiling is not None else None
        if fixed is None:
            raise BundleError(f"the Gaussians are kept for {self.tiles} tile positions but the input contract fixes "
                              "no tile layout (input.tiling.fixed_size); re-export the bundle")
        count = tile_layout(tuple(fixed), cfg).count
        if count != self.tiles:
            raise BundleError(f"the Gaussians are kept for {self.tiles} tile positions but a {fixed[1]} x {fixed[0]} "
                              f"working image has {count} tiles; re-export the bundle")

    def __call__(self, outputs: dict[str, np.ndarray], tiles: np.ndarray | None = None) -> ScoreOutput:
        emb = outputs[self.output]
        if emb.ndim == 2:  # (B, d): one embedding per image
            emb = emb[:, None, :]
        if emb.shape[1:] != (self.positions, self.mean.shape[1]):
            raise BundleError(f"graph gave embeddings {emb.shape}, the statistics expect (B, {self.positions}, "
                              f"{self.mean.shape[1]})")
        if self.tiles > 1:
            dist = self._per_tile(emb, tiles)
        else:
            dist = mahalanobis(emb, self.mean, self.chol).astype(np.float32)
        if self.grid is None:
            return ScoreOutput(None, dist[:, 0])
        return ScoreOutput(dist.reshape(len(emb), *self.grid), None)

    def _per_tile(self, emb: np.ndarray, tiles: np.ndarray | None) -> np.ndarray:
        """Each row against the Gaussians of its own tile position (rows of one position together)."""
        if tiles is None:
            raise ConfigError(f"this bundle's Gaussians are kept per tile position ({self.tiles} tiles); score whole "
                              "images (Predictor.predict), which cuts the tiles and knows where each one lies")
        tiles = np.asarray(tiles)
        if tiles.shape != (len(emb),) or tiles.dtype.kind not in "iu" or tiles.min(initial=0) < 0 \
                or tiles.max(initial=0) >= self.tiles:
            raise ConfigError(f"tile positions must be {len(emb)} integers from 0 to {self.tiles - 1}, got "
                              f"{tiles.dtype} {tiles.shape}")
        P = self.positions
        dist = np.empty((len(emb), P), np.float32)
        for t in np.unique(tiles):
            rows = np.flatnonzero(tiles == t)
            lo = int(t) * P
            dist[rows] = mahalanobis(emb[rows], self.mean[lo:lo + P], self.chol, start=lo)
        return dist
