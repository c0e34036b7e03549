"""SPADE scoring (Cohen & Hoshen 2020).

Image score: mean distance to the ``k`` nearest training image features (FAISS). Pixel level: for
each position, the distance to the nearest feature at any position of the ``k_pixel`` nearest of
those images (``k_pixel = k`` in bundles that do not record it), computed
image by image as ``min_j ||q - g_j||`` with ``||q||^2 - 2 q.g + ||g||^2`` (gallery norms
precomputed at load). A bundle exported with ``pixel_coreset`` instead holds one FAISS index of a
coreset of all training map vectors (``gallery.pixel_bank``), and each position's score is its
distance to the nearest of them: one exact search for the whole batch (numpy on the CPU, as for
every Flat bank, see :mod:`adx_runtime.knn`; FAISS on a GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.bundle import bundle_file
from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.kinds import GallerySection
from adx_runtime.knn import open_bank, squared_to_distance
from adx_runtime.npz import read_npz
from adx_runtime.postprocess import check_patch_grid
from adx_runtime.scorers import ScoreOutput


class GalleryScorer:
    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], bank_device: str,
                 search_params: dict[str, float] | None = None):
        s = GallerySection.from_dict(manifest["scoring"])
        self.image_output, self.map_output = s.image_output, s.map_output
        self.grid = check_patch_grid(manifest, self.map_output, "flat")
        self.k, self.k_pixel = s.k, s.k_pixel
        g = s.gallery
        self.images = open_bank(Path(bundle_dir), manifest, s.images_bank, bank_device, search_params,
                                what="scoring.gallery.images_bank")
        self.pixels = None
        if g.get("pixel_bank"):  # pixel_coreset: one index over a coreset of every training map vector
            self.pixels = open_bank(Path(bundle_dir), manifest, g["pixel_bank"], bank_device,
                                    what="scoring.gallery.pixel_bank")
            self.backend = f"{self.images.backend}; pixel coreset: {self.pixels.backend}"
            return
        maps = read_npz(bundle_file(bundle_dir, manifest, g["maps_file"], what="scoring.gallery.maps_file"),
                        ["feature_maps"], what="SPADE gallery maps")["feature_maps"]
        self.maps = np.ascontiguousarray(maps, dtype=np.float32)  # (N, h*w, D)
        if self.maps.shape[0] != self.images.size or self.maps.shape[1] != self.grid[0] * self.grid[1]:
            raise BundleError(f"SPADE gallery does not fit together: {self.images.size} image features, maps "
                              f"{self.maps.shape}, grid {self.grid}")
        self.map_norms = np.einsum("nqd,nqd->nq", self.maps, self.maps)  # (N, h*w)
        self.backend = f"{self.images.backend} + numpy"

    def pixel_distances(self, fmap: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
        """``fmap (h*w, D)`` of one image, ``neighbours (k,)`` gallery ids -> ``(h*w,)`` distances."""
        q = np.ascontiguousarray(fmap, dtype=np.float32)
        qn = np.einsum("qd,qd->q", q, q)
        best = np.full(len(q), np.inf, np.float32)
        for j in neighbours:
            d2 = q @ self.maps[j].T  # (h*w, h*w)
            d2 *= -2.0
            d2 += self.map_norms[j][None, :]
            np.minimum(best, d2.min(axis=1), out=best)
        best += qn
        return squared_to_distance(best)

    def __call__(self, outputs: dict[str, np.ndarray], tiles: np.ndarray | None = None) -> ScoreOutput:
        del tiles  # one set of scoring data for every tile position
        img, fmap = outputs[self.image_output], outputs[self.map_output]
        dist, ids = self.images.search(img, self.k)
        if (ids < 0).any():
            raise ConfigError(f"the approximate image gallery returned fewer than k = {self.k} neighbours; raise its "
                              "search breadth, e.g. --search-param nprobe=8")
        if self.pixels is not None:
            B, HW, D = fmap.shape
            if D != self.pixels.dim:
                raise BundleError(f"graph gave feature maps {fmap.shape}, the pixel coreset holds {self.pixels.dim}-d "
                                  "vectors; the graph and the gallery do not belong together")
            near, _ = self.pixels.search(fmap.reshape(B * HW, D), 1)
            patch = near[:, 0].reshape(B, HW)
        else:
            patch = np.stack([self.pixel_distances(fmap[b], ids[b, : self.k_pixel]) for b in range(len(img))])
        return ScoreOutput(patch.reshape(len(img), *self.grid), dist.mean(axis=1).astype(np.float32))
