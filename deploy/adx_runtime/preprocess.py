"""Preprocessing: the only implementation in adexport. Training imports it from here.

decode (``images.decode_image``) -> RGB -> resize (recorded interpolation) -> optional centre
crop -> scale -> (x - mean) / std -> float32 ``(3, H, W)``; batched into ``(B, 3, H, W)``.

Every parameter lives in :class:`PreprocessConfig`, which is written into the bundle manifest, so
the runtime does exactly what training did instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.images import ImageSource, decode_image

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """The input contract of a model; one field per step, all recorded in the manifest."""

    resize: tuple[int, int]  # (height, width) the decoded image is resized to
    interpolation: str = "bilinear"  # Pillow resampling filter used by the resize
    center_crop: tuple[int, int] | None = None  # (height, width) cut from the centre after resize
    scale: float = 1.0 / 255.0  # multiplies the 8-bit values before normalisation
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per RGB channel, after scaling
    std: tuple[float, float, float] = IMAGENET_STD  # per RGB channel, after scaling
    colour: str = "RGB"  # channel order of the graph input
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r} is not known; valid: {sorted(_INTERPOLATIONS)}"
            )
        if len(self.resize) != 2 or min(self.resize) < 8:
            raise ConfigError(f"resize must be (height, width) of at least 8 px, got {self.resize}")
        if self.center_crop is not None:
            ch, cw = self.center_crop
            if ch > self.resize[0] or cw > self.resize[1] or min(ch, cw) < 8:
                raise ConfigError(
                    f"center_crop {self.center_crop} must fit inside resize {self.resize} and be >= 8 px"
                )
        if self.colour != "RGB" or self.layout != "NCHW" or self.dtype != "float32":
            raise ConfigError(
                "this runtime reads RGB, NCHW, float32 inputs; "
                f"got colour={self.colour}, layout={self.layout}, dtype={self.dtype}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each (std > 0); got {self.mean}, {self.std}")

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the graph receives."""
        return tuple(self.center_crop) if self.center_crop else tuple(self.resize)  # type: ignore[return-value]

    @classmethod
    def square(cls, image_size: int, **kwargs: Any) -> "PreprocessConfig":
        return cls(resize=(image_size, image_size), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize"] = list(self.resize)
        d["center_crop"] = list(self.center_crop) if self.center_crop else None
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        try:
            return cls(
                resize=tuple(d["resize"]),
                interpolation=d["interpolation"],
                center_crop=tuple(d["center_crop"]) if d.get("center_crop") else None,
                scale=float(d["scale"]),
                mean=tuple(d["mean"]),
                std=tuple(d["std"]),
                colour=d["colour"],
                layout=d["layout"],
                dtype=d["dtype"],
            )
        except KeyError as exc:
            raise BundleError(f"manifest 'input' section lacks the field {exc.args[0]!r}") from None


def _crop_box(cfg: PreprocessConfig) -> tuple[int, int, int, int] | None:
    if cfg.center_crop is None:
        return None
    (rh, rw), (ch, cw) = cfg.resize, cfg.center_crop
    top, left = (rh - ch) // 2, (rw - cw) // 2
    return (left, top, left + cw, top + ch)


def geometric(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize and crop an RGB image to the model's view of it (no normalisation)."""
    h, w = cfg.resize
    if img.size != (w, h):
        img = img.resize((w, h), _INTERPOLATIONS[cfg.interpolation])
    box = _crop_box(cfg)
    return img.crop(box) if box else img


def _normalise(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """``(H, W, 3) uint8 -> (3, H, W) float32``: ``(x * scale - mean) / std`` folded into one FMA."""
    gain = (np.float32(cfg.scale) / np.asarray(cfg.std, np.float32)).reshape(3, 1, 1)
    bias = (-np.asarray(cfg.mean, np.float32) / np.asarray(cfg.std, np.float32)).reshape(3, 1, 1)
    chw = rgb.transpose(2, 0, 1).astype(np.float32)
    chw *= gain
    chw += bias
    return chw


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """An RGB image -> ``(3, H, W)`` float32 graph input."""
    return _normalise(np.asarray(geometric(img, cfg)), cfg)


def load_image(source: ImageSource, cfg: PreprocessConfig, **decode_kwargs: Any) -> np.ndarray:
    """Decode and preprocess one file -> ``(3, H, W)`` float32. Raises ImageDecodeError."""
    return preprocess_image(decode_image(source, **decode_kwargs), cfg)


def stack(tensors: Sequence[np.ndarray]) -> np.ndarray:
    """``[(3, H, W), ...] -> (B, 3, H, W)`` contiguous float32."""
    return np.ascontiguousarray(np.stack(tensors, axis=0), dtype=np.float32)


def preprocess_mask(mask: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """A boolean ground-truth mask ``(h, w)`` -> the model's geometry ``(H, W)`` (nearest resize)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    h, w = cfg.resize
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.NEAREST)
    box = _crop_box(cfg)
    if box:
        img = img.crop(box)
    return np.asarray(img) > 127
