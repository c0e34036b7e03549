"""The ``gaussian`` scoring kind: Mahalanobis distance to a Gaussian per position (PaDiM, Defard
et al. 2021, eq. 2), or to one Gaussian over image embeddings (``P = 1``, image-level: CutPaste),
or to one Gaussian shared by every position of a map (statistics with ``P = 1``, a graph with a
patch grid: CutPaste's patch-level localisation).

``M(x_p) = sqrt((x_p - mu_p)^T S_p^-1 (x_p - mu_p)) = ||L_p^T (x_p - mu_p)||`` with the stored
Cholesky factor ``S_p^-1 = L_p L_p^T`` (a packed lower triangle, unpacked once at load; a float16
store is widened to float32 then). Computed as one batched matmul ``(P, B, d) @ (P, d, d)`` and a sum
of squares: as fast as the inverse form and faster than an einsum (``benchmarks/padim_distance.py``),
and never negative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.bundle import bundle_file
from adx_runtime.errors import BundleError
from adx_runtime.scorers import ScoreOutput


def mahalanobis(embedding: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``embedding (B, P, d)``, ``mean (P, d)``, ``chol (P, d, d)`` -> distances ``(B, P)``.

    With one Gaussian (``mean (1, d)``, ``chol (1, d, d)``) every position uses it: one
    ``(B * P, d) @ (d, d)`` matmul."""
    if mean.shape[0] == 1:
        B, P, d = embedding.shape
        y = (embedding.reshape(B * P, d) - mean) @ chol[0]
        return np.sqrt(np.einsum("nd,nd->n", y, y)).reshape(B, P)
    x = np.ascontiguousarray((embedding - mean[None]).transpose(1, 0, 2))  # (P, B, d)
    y = np.matmul(x, chol)  # rows of x @ L = (L^T x)^T
    return np.sqrt(np.einsum("pbd,pbd->bp", y, y))


class GaussianScorer:
    backend = "numpy"

    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], bank_device: str):
        s = manifest["scoring"]
        try:
            self.output = s["embedding_output"]
            grid = manifest["postprocess"]["patch_grid"]
            self.grid = tuple(grid) if grid else None  # None: one Gaussian, image-level scores
            g = s["gaussian"]
            with np.load(bundle_file(bundle_dir, manifest, g["file"], what="scoring.gaussian.file"), allow_pickle=False) as data:
                self.mean = np.ascontiguousarray(data["mean"], dtype=np.float32)
                packed = data["chol_packed"]
        except KeyError as exc:
            raise BundleError(f"Gaussian bundle lacks {exc.args[0]!r} in its scoring data; re-export it") from None
        P, d = self.mean.shape
        self.positions = self.grid[0] * self.grid[1] if self.grid else 1
        if packed.shape != (P, d * (d + 1) // 2) or P not in (1, self.positions):
            raise BundleError(f"Gaussian statistics do not fit together: mean {self.mean.shape}, packed Cholesky "
                              f"{packed.shape}, grid {self.grid}")
        self.chol = np.zeros((P, d, d), np.float32)
        rows, cols = np.tril_indices(d)
        self.chol[:, rows, cols] = packed

    def __call__(self, outputs: dict[str, np.ndarray]) -> ScoreOutput:
        emb = outputs[self.output]
        if emb.ndim == 2:  # (B, d): one embedding per image
            emb = emb[:, None, :]
        if emb.shape[1:] != (self.positions, self.mean.shape[1]):
            raise BundleError(f"graph gave embeddings {emb.shape}, the statistics expect (B, {self.positions}, "
                              f"{self.mean.shape[1]})")
        dist = mahalanobis(emb, self.mean, self.chol).astype(np.float32)
        if self.grid is None:
            return ScoreOutput(None, dist[:, 0])
        return ScoreOutput(dist.reshape(len(emb), *self.grid), None)
