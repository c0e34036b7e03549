"""Heatmap overlays as PNG, with numpy and Pillow only (no matplotlib on an edge box).

The overlay is the image as it was sent, at its own size, with the normalised anomaly map brought
back onto it (the inverse of the manifest's resize and crop) and blended on top (0 = typical
normal, 0.5 = the pixel threshold, 1 = far above it), and a white contour where the map crosses the
threshold. :func:`save_raw_map` writes the map itself, at the image's size, for other tools.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError
from adx_runtime.preprocess import PreprocessConfig, map_to_original

#: Raw-map file formats for ``adx infer --raw-maps``.
RAW_MAP_FORMATS = ("npy", "png16")

# Control points of a perceptually ordered dark-blue -> cyan -> yellow -> red colour scale.
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 96], [0, 128, 255], [64, 224, 160], [255, 224, 0], [220, 0, 0]], dtype=np.float32)


def colourise(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def threshold_contour(norm_map: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Boolean ``(H, W)``: pixels above ``level`` with a 4-neighbour below it."""
    above = norm_map >= level
    edge = np.zeros_like(above)
    edge[1:, :] |= above[1:, :] & ~above[:-1, :]
    edge[:-1, :] |= above[:-1, :] & ~above[1:, :]
    edge[:, 1:] |= above[:, 1:] & ~above[:, :-1]
    edge[:, :-1] |= above[:, :-1] & ~above[:, 1:]
    return edge


def overlay(image: Image.Image, norm_map: np.ndarray, cfg: PreprocessConfig, alpha: float = 0.45) -> Image.Image:
    """Blend a normalised map ``(H, W)`` at the model's input size onto ``image`` at its own size."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    full = map_to_original(norm_map, image.size, cfg)
    out = (1.0 - alpha) * base + alpha * colourise(full).astype(np.float32)
    out[threshold_contour(full)] = 255.0
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")


def save_overlay(image: Image.Image, norm_map: np.ndarray, cfg: PreprocessConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, norm_map, cfg).save(path)
    return path


def save_raw_map(anomaly_map: np.ndarray, size: tuple[int, int], cfg: PreprocessConfig, path: str | Path,
                 fmt: str, *, norm_map: np.ndarray | None = None) -> Path:
    """Write a map at the image's own ``size`` (width, height).

    ``npy``: the raw map, float32, in the method's score units. ``png16``: the normalised map
    (threshold at 0.5) as a 16-bit grayscale PNG, value ``round(n * 65535)``, so the pixel
    threshold is 32768; needs ``norm_map``.
    """
    if fmt not in RAW_MAP_FORMATS:
        raise ConfigError(f"raw map format {fmt!r} is not known; valid: {', '.join(RAW_MAP_FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(path, map_to_original(anomaly_map, size, cfg))
    else:
        if norm_map is None:
            raise ConfigError("png16 raw maps store the normalised map; pass norm_map")
        full = np.clip(map_to_original(norm_map, size, cfg), 0.0, 1.0)
        Image.fromarray(np.rint(full * 65535.0).astype(np.uint16)).save(path)
    return path
