"""Tiled scoring: cut a working image into overlapping tiles, stitch the tiles' maps back, smooth.

A tiled bundle (``input.tiling`` in the manifest, :class:`adx_runtime.preprocess.TilingSpec`) scores
an image of any size at its own resolution:

1. the image is brought to its working size (:func:`adx_runtime.preprocess.working_array`) and cut
   into tiles of the model's input size, ``tile - overlap`` apart, the last tile of each row and
   column shifted inward to end at the edge (:func:`tile_layout`);
2. every tile goes through the graph and the kind's scorer like an image (in chunks of the graph's
   batch, tiles of several images mixed);
3. each tile's raw map is upsampled to the tile's pixels (bilinear, as the untiled method does)
   and added onto the image's canvas with a weight that ramps linearly over the overlap; the canvas
   is divided by the summed weights, so overlapping maps blend with weights that sum to one and a
   constant map stays exactly constant (:class:`Stitcher`);
4. the method's smoothing runs over the whole stitched map (:func:`smooth`), so it crosses tile
   borders as it would on one large image, and the image-score rule is taken on the result (a
   method that scores whole images only takes the largest tile score).

With a single tile covering the image the result equals the untiled computation on that image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from adx_runtime.postprocess import MapPostprocessor, PostprocessSpec, gaussian_kernel, gaussian_radius
from adx_runtime.preprocess import PreprocessConfig, tile_offsets

#: Rows (or columns) per block of the banded smoothing product: small enough that the band's zeros
#: cost little (64 + 2r columns for 64 rows), large enough that numpy's per-call cost does not show.
_BLOCK = 64


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one working image lie: ``(H, W)`` of the image, the tile ``(th, tw)``,
    the overlap, and the start rows ``ys`` and columns ``xs`` (tiles in row-major order)."""

    size: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def offsets(self) -> Iterator[tuple[int, int]]:
        for y in self.ys:
            for x in self.xs:
                yield y, x


def tile_layout(size: tuple[int, int], cfg: PreprocessConfig) -> TileLayout:
    """The layout for a working image of ``size = (H, W)`` under a tiled input contract."""
    assert cfg.tiling is not None, "tile_layout needs a tiled input contract"
    (th, tw), o = cfg.resize, cfg.tiling.overlap
    h, w = size
    return TileLayout((h, w), (th, tw), o, tuple(tile_offsets(h, th, o)), tuple(tile_offsets(w, tw, o)))


def ramp(n: int, overlap: int) -> np.ndarray:
    """``(n,)`` float32 blending weights of one tile side: rising linearly over the first ``overlap``
    pixels, 1 inside, falling over the last ``overlap``; never zero, so a pixel that only one tile
    covers (the image's edge) keeps that tile's value. Two tiles overlapping by exactly ``overlap``
    pixels have weights that sum to one there."""
    if overlap <= 0:
        return np.ones(n, np.float32)
    centres = np.arange(n, dtype=np.float64) + 0.5
    return np.minimum(1.0, np.minimum(centres, n - centres) / overlap).astype(np.float32)


class Stitcher:
    """Accumulates the tile maps ``(th, tw)`` of one image into its ``(H, W)`` map."""

    def __init__(self, layout: TileLayout):
        self.layout = layout
        self.offsets = list(layout.offsets())
        th, tw = layout.tile
        self.weight = np.outer(ramp(th, layout.overlap), ramp(tw, layout.overlap))
        self.acc = np.zeros(layout.size, np.float32)
        self.wsum = np.zeros(layout.size, np.float32)
        self.added = 0

    def add(self, index: int, tile_map: np.ndarray) -> None:
        y, x = self.offsets[index]
        th, tw = self.layout.tile
        self.acc[y:y + th, x:x + tw] += tile_map * self.weight
        self.wsum[y:y + th, x:x + tw] += self.weight
        self.added += 1

    @property
    def complete(self) -> bool:
        return self.added == self.layout.count

    def result(self) -> np.ndarray:
        """The blended map ``(H, W)`` float32 (every pixel is covered by at least one tile)."""
        self.acc /= self.wsum
        return self.acc


def _taps(n: int, spec: PostprocessSpec) -> np.ndarray | None:
    """The 1-D kernel of the smoothing contract along a side of ``n`` pixels (radius limited to
    ``n - 1``, as :mod:`adx_runtime.postprocess` limits it), or None for no smoothing."""
    if spec.smoothing == "gaussian":
        sigma = float(spec.sigma)  # type: ignore[arg-type]
        return gaussian_kernel(sigma, gaussian_radius(sigma, n))
    if spec.smoothing == "mean":
        r = min(int(spec.size) // 2, n - 1)  # type: ignore[arg-type]
        return np.full(2 * r + 1, 1.0 / (2 * r + 1))
    return None


def _band(k: np.ndarray) -> np.ndarray:
    """``(_BLOCK, _BLOCK + 2r)`` float32: row ``i`` holds the kernel at columns ``i .. i + 2r``."""
    r = len(k) // 2
    band = np.zeros((_BLOCK, _BLOCK + 2 * r), np.float32)
    for i in range(_BLOCK):
        band[i, i:i + 2 * r + 1] = k
    return band


def smooth(m: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
    """The spec's smoothing (Gaussian or box, reflect padding without repeating the edge) over a
    whole ``(H, W)`` map, separable, as block-banded matrix products: memory and time grow with the
    pixels, not their square (a 4000 x 3000 map cannot use the dense ``(W, W)`` matrices of
    :class:`MapPostprocessor`)."""
    kh, kw = _taps(m.shape[0], spec), _taps(m.shape[1], spec)
    if kh is None or kw is None:
        return m
    m = np.asarray(m, np.float32)
    rh, rw = len(kh) // 2, len(kw) // 2
    h, w = m.shape
    if rh:
        band = _band(kh)
        padded = np.pad(m, ((rh, rh), (0, 0)), mode="reflect")
        out = np.empty_like(m)
        for s in range(0, h, _BLOCK):
            b = min(_BLOCK, h - s)
            np.matmul(band[:b, :b + 2 * rh], padded[s:s + b + 2 * rh], out=out[s:s + b])
        m = out
    if rw:
        band_t = np.ascontiguousarray(_band(kw).T)
        padded = np.pad(m, ((0, 0), (rw, rw)), mode="reflect")
        out = np.empty_like(m)
        for s in range(0, w, _BLOCK):
            b = min(_BLOCK, w - s)
            out[:, s:s + b] = padded[:, s:s + b + 2 * rw] @ band_t[:b + 2 * rw, :b]
        m = out
    return m


def coarse_map(layout: TileLayout, tile_scores: np.ndarray) -> np.ndarray:
    """An image-level-only method under tiling: each tile's score laid over its pixels and blended
    like tile maps (the ramp weights, divided by their sum), a ``(H, W)`` map as coarse as the tile
    grid. Not smoothed: the blending is its only transition between tiles."""
    stitcher = Stitcher(layout)
    th, tw = layout.tile
    for j, v in enumerate(np.asarray(tile_scores, np.float32)):
        stitcher.add(j, np.full((th, tw), v, np.float32))
    return stitcher.result()


class TileMaps:
    """A scorer's raw tile maps ``(k, h, w)`` -> tile maps at the tile's pixels ``(k, th, tw)``:
    the method's upsampling without its smoothing, which runs once over the stitched image."""

    def __init__(self, spec: PostprocessSpec, tile: tuple[int, int]):
        if spec.patch_grid is None:
            raise ValueError("this method has no map to stitch")
        upsample_only = PostprocessSpec(spec.patch_grid, "none", None, None, spec.image_score, spec.top_k)
        self.upsample = MapPostprocessor(upsample_only, tile)
        self.identity = tuple(spec.patch_grid) == tuple(tile)  # a map already at the tile's pixels

    def __call__(self, patch_maps: np.ndarray) -> np.ndarray:
        if self.identity:
            return np.asarray(patch_maps, np.float32)
        return self.upsample(patch_maps)
