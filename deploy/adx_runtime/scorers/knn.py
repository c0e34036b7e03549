"""PatchCore scoring (Roth et al., CVPR 2022) on the graph's locally aware patch features.

Patch score: distance of each patch feature to its nearest coreset vector,
``s(m) = min_{m' in M} ||m - m'||``. Image score (eq. 7): with ``m_test*`` the patch of largest score
``s*`` and ``m*`` its nearest coreset vector,

    s = (1 - exp||m_test* - m*|| / sum_{m in N_b(m*)} exp||m_test* - m||) * s*

where ``N_b(m*)`` are the ``b`` nearest coreset vectors of ``m*`` (``m*`` itself first). The fraction
is a softmax over those distances; ``b = 1`` disables the reweighting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.kinds import KnnSection
from adx_runtime.knn import open_bank
from adx_runtime.postprocess import check_patch_grid
from adx_runtime.scorers import ScoreOutput


def reweight(m_test: np.ndarray, support: np.ndarray, s_star: np.ndarray,
             found: np.ndarray | None = None) -> np.ndarray:
    """Eq. 7. ``m_test (B, D)``, ``support (B, b, D)`` with ``m*`` first, ``s_star (B,)`` -> ``(B,)``.
    ``found (B, b)``: which support vectors the index returned (an IVF index probing few lists may
    return fewer than ``b``); the missing ones are left out of the softmax."""
    d = np.linalg.norm(support.astype(np.float64) - m_test[:, None, :].astype(np.float64), axis=-1)  # (B, b)
    if found is not None:
        d = np.where(found, d, -np.inf)
    d -= d.max(axis=1, keepdims=True)  # softmax is shift invariant; keeps exp finite
    e = np.exp(d)
    weight = 1.0 - e[:, 0] / e.sum(axis=1)
    return (weight * s_star).astype(np.float32)


class KnnScorer:
    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], bank_device: str,
                 search_params: dict[str, float] | None = None):
        s = KnnSection.from_dict(manifest["scoring"])
        self.feature_output = s.feature_output
        self.grid = check_patch_grid(manifest, self.feature_output, "flat")
        self.num_neighbors = s.num_neighbors
        self.bank = open_bank(Path(bundle_dir), manifest, s.bank, bank_device, search_params)
        self.backend = self.bank.backend

    def __call__(self, outputs: dict[str, np.ndarray], tiles: np.ndarray | None = None) -> ScoreOutput:
        del tiles  # one set of scoring data for every tile position
        feats = outputs[self.feature_output]  # (B, N, D)
        B, N, D = feats.shape
        h, w = self.grid
        if N != h * w or D != self.bank.dim:
            raise BundleError(
                f"graph gave patch features {feats.shape}, the bank expects (B, {h * w}, {self.bank.dim}); "
                "the graph and bank do not belong together"
            )
        dist, ids = self.bank.search(feats.reshape(B * N, D), 1)
        if (ids[:, 0] < 0).any():
            raise ConfigError(
                f"the approximate bank found no neighbour for {int((ids[:, 0] < 0).sum())} of {B * N} patches (its "
                "probed lists were empty); raise its search breadth, e.g. --search-param nprobe=8"
            )
        patch = dist[:, 0].reshape(B, N)
        nn = ids[:, 0].reshape(B, N)
        rows = np.arange(B)
        star = patch.argmax(axis=1)
        s_star = patch[rows, star]
        if self.num_neighbors > 1:
            m_test = feats[rows, star]  # (B, D)
            m_star = self.bank.reconstruct(nn[rows, star])  # (B, D)
            _, support_ids = self.bank.search(m_star, self.num_neighbors)  # (B, b), m* itself first
            found = support_ids >= 0
            support = self.bank.reconstruct(np.where(found, support_ids, 0).ravel()).reshape(B, -1, D)
            image = reweight(m_test, support, s_star, found)
        else:
            image = s_star.astype(np.float32)
        return ScoreOutput(patch.reshape(B, h, w).astype(np.float32), image)
