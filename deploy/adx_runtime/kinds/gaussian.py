"""The ``gaussian`` scoring kind (PaDiM, CutPaste): Mahalanobis distance to a Gaussian per map
position, or to one Gaussian. Scorer: :mod:`adx_runtime.scorers.gaussian`; writer:
:func:`adexport.methods.density.write_gaussian`."""

from __future__ import annotations

from typing import Any

from adx_runtime.kinds.bank import COUNT, NAME
from adx_runtime.kinds.base import ScoringSection


class GaussianSection(ScoringSection):
    kind = "gaussian"
    title = ("PaDiM, CutPaste; Mahalanobis distance ||L^T (x - mu)|| to a Gaussian per position (positions = "
             "h*w) or one Gaussian (positions = 1)")
    SCHEMA = {
        "type": "object",
        "properties": {
            "embedding_output": {"type": "string", "description": "graph output (B, P, d), or (B, d) for one "
                                                                  "embedding per image"},
            "gaussian": {
                "type": "object",
                "properties": {
                    "file": {**NAME, "description": "npz with mean (P, d) float32 and chol_packed "
                                                    "(P, d (d + 1) / 2): the Cholesky factor L of the inverse "
                                                    "covariance, lower triangle in numpy tril_indices order"},
                    "dtype": {"enum": ["float32", "float16"], "description": "of chol_packed"},
                    "positions": COUNT,
                    "tiles": {**COUNT, "description": "Gaussian sets kept per tile position (aligned parts; "
                                                       "input.tiling.fixed_size fixes the layout): mean and "
                                                       "chol_packed hold tiles * positions rows, tile-major; "
                                                       "absent: 1, one set shared by every tile"},
                    "dim": COUNT,
                },
                "required": ["file"],
            },
        },
        "required": ["embedding_output", "gaussian"],
    }

    @property
    def embedding_output(self) -> str:
        return self.raw["embedding_output"]

    @property
    def gaussian(self) -> dict[str, Any]:
        return self.raw["gaussian"]

    @property
    def tiles(self) -> int:
        return int(self.gaussian.get("tiles", 1))

    def detail(self) -> str:
        dtype = self.gaussian.get("dtype") or ""
        return f"{dtype}, per tile position ({self.tiles} tiles)" if self.tiles > 1 else dtype
