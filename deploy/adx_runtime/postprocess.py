"""Post-processing after every scoring kind, described by the manifest's ``postprocess`` section.

One typed section serves every method (:class:`PostprocessSpec`):

- ``patch_grid``: the ``(h, w)`` map the scorer (or graph) produces; ``None`` when the method has
  no map (image-level only);
- ``smoothing``: ``{"type": "gaussian", "sigma": s}``, ``{"type": "mean", "size": k}`` or
  ``{"type": "none"}``, applied after bilinear upsampling to the input size;
- ``image_score``: ``{"rule": "max"}`` (of the final map), ``{"rule": "mean_top_k", "k": k}``
  (mean of the ``k`` largest final-map pixels) or ``{"rule": "scorer"}`` (the scorer supplies it).

Upsampling and smoothing are linear and separable, so the runtime folds them into two small
matrices and applies them as ``A_h @ S @ A_w.T``: for a 32x32 patch grid and a 256x256 map that
is about 2 MFLOP per image instead of a 33-tap convolution over 65k pixels.

The semantics match PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)`` followed by
a convolution with ``reflect`` padding (Gaussian, or a ``size`` x ``size`` box for ``mean``);
training computes it that way independently, and the export parity check compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.preprocess import PreprocessConfig

SMOOTHING_TYPES = ("gaussian", "mean", "none")
IMAGE_SCORE_RULES = ("max", "mean_top_k", "scorer")


@dataclass(frozen=True)
class PostprocessSpec:
    """The manifest's ``postprocess`` section, typed. Every field is explicit: nothing defaults
    to one method's habit inside generic code."""

    patch_grid: tuple[int, int] | None  # (h, w) of the raw map; None = no map (image-level only)
    smoothing: str  # gaussian | mean | none
    sigma: float | None  # gaussian only, in pixels of the input-size map
    size: int | None  # mean only: box side in pixels (odd)
    image_score: str  # max | mean_top_k | scorer
    top_k: int | None = None  # mean_top_k only

    def __post_init__(self) -> None:
        if self.smoothing not in SMOOTHING_TYPES:
            raise ConfigError(f"smoothing {self.smoothing!r} is not known; valid: {', '.join(SMOOTHING_TYPES)}")
        if self.image_score not in IMAGE_SCORE_RULES:
            raise ConfigError(f"image-score rule {self.image_score!r} is not known; valid: {', '.join(IMAGE_SCORE_RULES)}")
        if self.smoothing == "gaussian" and not (self.sigma is not None and self.sigma > 0):
            raise ConfigError(f"gaussian smoothing needs sigma > 0, got {self.sigma}")
        if self.smoothing == "mean" and not (self.size is not None and self.size >= 1 and self.size % 2 == 1):
            raise ConfigError(f"mean smoothing needs an odd size >= 1, got {self.size}")
        if self.image_score == "mean_top_k" and not (self.top_k is not None and self.top_k >= 1):
            raise ConfigError(f"mean_top_k needs k >= 1, got {self.top_k}")
        if self.patch_grid is None and self.image_score != "scorer":
            raise ConfigError("a method without a map must supply its image score (rule 'scorer')")

    @property
    def has_map(self) -> bool:
        return self.patch_grid is not None

    @classmethod
    def gaussian(cls, grid: tuple[int, int] | None, sigma: float, image_score: str = "max", **kw: Any) -> "PostprocessSpec":
        if sigma <= 0:
            return cls(grid, "none", None, None, image_score, **kw)
        return cls(grid, "gaussian", float(sigma), None, image_score, **kw)

    @classmethod
    def image_only(cls) -> "PostprocessSpec":
        return cls(None, "none", None, None, "scorer")

    def to_dict(self) -> dict[str, Any]:
        smoothing: dict[str, Any] = {"type": self.smoothing}
        if self.smoothing == "gaussian":
            smoothing["sigma"] = self.sigma
        elif self.smoothing == "mean":
            smoothing["size"] = self.size
        rule: dict[str, Any] = {"rule": self.image_score}
        if self.image_score == "mean_top_k":
            rule["k"] = self.top_k
        return {"map": self.has_map, "patch_grid": list(self.patch_grid) if self.patch_grid else None,
                "upsample": "bilinear (half-pixel centres) to the input size" if self.has_map else None,
                "smoothing": smoothing, "image_score": rule}

    @classmethod
    def from_dict(cls, d: Any) -> "PostprocessSpec":
        try:
            grid = d["patch_grid"]
            sm, rule = d["smoothing"], d["image_score"]
            return cls(tuple(int(v) for v in grid) if grid else None, str(sm["type"]),
                       float(sm["sigma"]) if "sigma" in sm else None, int(sm["size"]) if "size" in sm else None,
                       str(rule["rule"]), int(rule["k"]) if "k" in rule else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest 'postprocess' section is malformed ({type(exc).__name__}: {exc}); "
                              "re-export the bundle") from None
        except ConfigError as exc:
            raise BundleError(f"manifest 'postprocess' section: {exc}") from None


def _grid_fits_input(grid: tuple[int, int], size: tuple[int, int]) -> None:
    """A patch grid finer than the input is impossible (a cell cannot be smaller than a pixel);
    refused before the upsampling matrices (``(H, h)`` and ``(w, W)``) are sized by it: a grid of
    ``[1e9, 1e9]`` asked for 477 GiB."""
    if len(grid) != 2 or grid[0] > size[0] or grid[1] > size[1]:
        raise BundleError(f"manifest postprocess.patch_grid {list(grid)} is finer than the input size {list(size)} "
                          "(valid: 1 <= h <= input height, 1 <= w <= input width; a grid cell cannot be smaller than "
                          "a pixel); the manifest does not fit its graph. Re-export the bundle.")


def check_patch_grid(manifest: dict[str, Any], output: str, layout: str) -> tuple[int, int]:
    """The manifest's ``patch_grid``, checked when the bundle is opened against the input size and
    against the graph output ``output`` the scorer turns into the map: ``layout`` ``"flat"`` is
    ``(B, h * w, D)`` (patch features, embeddings), ``"map"`` is ``(B, h, w)`` or ``(B, 1, h, w)``.
    Dimensions the manifest leaves symbolic are not checked here (the scorer checks them per batch).
    A bundle's manifest always has ``input`` and ``graph`` (:func:`adx_runtime.bundle.read_manifest`
    requires them); a scorer built from a partial manifest (a unit test) skips what it lacks, and
    :class:`MapPostprocessor` checks the input size again before it allocates."""
    grid = tuple(manifest["postprocess"]["patch_grid"])
    if "input" in manifest:
        _grid_fits_input(grid, tuple(PreprocessConfig.from_dict(manifest["input"]).input_size))
    h, w = grid
    outputs = manifest["graph"]["outputs"] if "graph" in manifest else []
    if not outputs:
        return (h, w)
    shape = next((o.get("shape") for o in outputs if o.get("name") == output), None)
    dims = [d if type(d) is int else None for d in shape] if isinstance(shape, list) else []

    def fits(want: list[int | None]) -> bool:
        return len(dims) == len(want) and all(a is None or b is None or a == b for a, b in zip(dims, want))

    if layout == "flat":
        ok, expected = fits([None, h * w, None]), f"(batch, {h * w}, D)"
    else:
        ok, expected = fits([None, h, w]) or fits([None, 1, h, w]), f"(batch, {h}, {w}) or (batch, 1, {h}, {w})"
    if not ok:
        raise BundleError(f"manifest postprocess.patch_grid {list(grid)} does not match the graph output {output!r} "
                          f"of shape {shape} (that grid needs {expected}); the graph and manifest do not belong "
                          "together. Re-export the bundle.")
    return (h, w)


def gaussian_radius(sigma: float, size: int) -> int:
    """Kernel radius: 4 sigma (as scipy truncates), limited so reflect padding fits the map."""
    return max(0, min(int(4.0 * sigma + 0.5), size - 1))


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian ``(2 * radius + 1,)``, float64."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of 1-D bilinear interpolation, half-pixel centres (align_corners=False)."""
    m = np.zeros((n_out, n_in), np.float64)
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates to the first pixel
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` matrix of 1-D Gaussian smoothing with reflect padding (edge not repeated)."""
    if sigma <= 0:
        return np.eye(n)
    r = gaussian_radius(sigma, n)
    return _reflect_matrix(n, r, gaussian_kernel(sigma, r))


def box_matrix(n: int, size: int) -> np.ndarray:
    """``(n, n)`` matrix of a 1-D mean filter of ``size`` taps with reflect padding (radius limited
    to ``n - 1`` like the Gaussian's, renormalised)."""
    r = min(size // 2, n - 1)
    return _reflect_matrix(n, r, np.full(2 * r + 1, 1.0 / (2 * r + 1)))


def _reflect_matrix(n: int, r: int, k: np.ndarray) -> np.ndarray:
    m = np.zeros((n, n), np.float64)
    for offset, weight in zip(range(-r, r + 1), k):
        j = np.arange(n) + offset
        j = np.where(j < 0, -j, j)  # reflect: -1 -> 1
        j = np.where(j > n - 1, 2 * (n - 1) - j, j)  # n -> n - 2
        np.add.at(m, (np.arange(n), j), weight)
    return m


def smoothing_matrix(n: int, spec: PostprocessSpec) -> np.ndarray:
    if spec.smoothing == "gaussian":
        return blur_matrix(n, float(spec.sigma))  # type: ignore[arg-type]
    if spec.smoothing == "mean":
        return box_matrix(n, int(spec.size))  # type: ignore[arg-type]
    return np.eye(n)


class MapPostprocessor:
    """``(B, h, w)`` raw map -> ``(B, H, W)`` upsampled and smoothed anomaly map, and the image
    score rule over it."""

    def __init__(self, spec: PostprocessSpec, out: tuple[int, int]):
        if spec.patch_grid is None:
            raise ValueError("this method has no map to post-process")
        _grid_fits_input(spec.patch_grid, out)  # before the (H, h) and (w, W) matrices are allocated
        (h, w), (H, W) = spec.patch_grid, out
        self.spec, self.grid, self.out = spec, (h, w), (H, W)
        self.rows = (smoothing_matrix(H, spec) @ bilinear_matrix(H, h)).astype(np.float32)  # (H, h)
        self.cols_t = (smoothing_matrix(W, spec) @ bilinear_matrix(W, w)).T.astype(np.float32).copy()  # (w, W)

    def __call__(self, patch_maps: np.ndarray) -> np.ndarray:
        if patch_maps.shape[1:] != self.grid:
            raise BundleError(f"the scorer gave maps {patch_maps.shape}, the manifest's patch grid is "
                              f"(B, {self.grid[0]}, {self.grid[1]}); the graph and manifest do not belong together")
        return np.matmul(np.matmul(self.rows, patch_maps.astype(np.float32, copy=False)), self.cols_t)


def image_scores_from_maps(maps: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
    """The image-score rule over final maps ``(B, H, W)`` -> ``(B,)`` float32."""
    flat = maps.reshape(len(maps), -1)
    if spec.image_score == "max":
        return flat.max(axis=1).astype(np.float32)
    if spec.image_score == "mean_top_k":
        k = min(int(spec.top_k), flat.shape[1])  # type: ignore[arg-type]
        return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1, dtype=np.float64).astype(np.float32)
    raise ValueError("image score rule 'scorer': the scorer supplies the scores")

