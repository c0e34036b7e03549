"""The ``map`` scoring kind: the graph already outputs the anomaly map (RD4AD, RIAD, PRNet).

Nothing is added here but a shape check; the manifest's ``postprocess`` section smooths the map
and applies the image-score rule. A graph may also output its own image score
(``scoring.image_output``), which is then used as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.errors import BundleError
from adx_runtime.kinds import MapSection
from adx_runtime.postprocess import check_patch_grid
from adx_runtime.scorers import ScoreOutput


class MapScorer:
    backend = "graph (map output)"

    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], bank_device: str):
        s = MapSection.from_dict(manifest["scoring"])
        self.map_output, self.image_output = s.map_output, s.image_output
        self.grid = check_patch_grid(manifest, self.map_output, "map")

    def __call__(self, outputs: dict[str, np.ndarray], tiles: np.ndarray | None = None) -> ScoreOutput:
        del tiles  # one set of scoring data for every tile position
        maps = outputs[self.map_output]
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or tuple(maps.shape[1:]) != self.grid:
            raise BundleError(f"graph output {self.map_output!r} has shape {maps.shape}; the manifest expects "
                              f"(B, {self.grid[0]}, {self.grid[1]})")
        image = None
        if self.image_output is not None:
            image = np.asarray(outputs[self.image_output], np.float32).reshape(len(maps))
        return ScoreOutput(np.asarray(maps, np.float32), image)
