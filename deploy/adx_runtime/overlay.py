"""Heatmap overlays as PNG, with numpy and Pillow only (no matplotlib on an edge box).

The overlay shows the model's view of the image (after resize and crop) with the normalised
anomaly map blended on top (0 = typical normal, 0.5 = the pixel threshold, 1 = far above it)
and a white contour where the map crosses the threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.preprocess import PreprocessConfig, geometric

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
    """Blend a normalised map ``(H, W)`` onto the model's view of ``image`` (RGB)."""
    base = np.asarray(geometric(image.convert("RGB"), cfg), dtype=np.float32)
    if base.shape[:2] != norm_map.shape:
        raise ValueError(f"map {norm_map.shape} does not match the model view {base.shape[:2]}")
    out = (1.0 - alpha) * base + alpha * colourise(norm_map).astype(np.float32)
    out[threshold_contour(norm_map)] = 255.0
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")


def save_overlay(image: Image.Image, norm_map: np.ndarray, cfg: PreprocessConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, norm_map, cfg).save(path)
    return path
