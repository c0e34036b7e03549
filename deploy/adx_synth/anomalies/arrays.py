"""The image contract of anomaly synthesis: :class:`Synthetic`, the checks every public function
runs on its input, and uint8 / PIL conversions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError

Array = np.ndarray


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare by
class Synthetic:
    """One synthetic anomaly."""

    image: Array  # (H, W, C) uint8, the image with the anomaly
    mask: Array  # (H, W) bool, exactly the region that was replaced


def check_image(image: Array, name: str = "image") -> Array:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ConfigError(
            f"{name} must be an (H, W, C) uint8 array with C = 1 or 3, got shape {image.shape} "
            f"dtype {image.dtype}; add a channel axis to a grayscale (H, W) image with image[..., None]"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ConfigError(f"{name} must be at least 2 x 2 pixels, got {image.shape[1]} x {image.shape[0]}")
    return image


def check_batch(images: Array) -> Array:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ConfigError(
            f"images must be a (B, H, W, C) uint8 array with C = 1 or 3, got shape {images.shape} "
            f"dtype {images.dtype}"
        )
    return images


def check_range(name: str, lo: float, hi: float, *, minimum: float | None = None) -> None:
    if not lo <= hi or (minimum is not None and lo < minimum):
        floor = f", both at least {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be a range (low, high) with low <= high{floor}, got ({lo}, {hi})")


def to_uint8(x: Array) -> Array:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def to_pil(arr: Array) -> Image.Image:
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def from_pil(img: Image.Image, channels: int) -> Array:
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[..., None] if channels == 1 else arr
