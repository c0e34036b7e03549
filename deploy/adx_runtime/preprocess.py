"""Preprocessing: the only implementation in adexport. Training imports it from here.

decode (``images.decode_image``) -> RGB -> resize (recorded interpolation) -> optional centre
crop -> colour (RGB, or L for a 1-channel graph) -> scale -> (x - mean) / std -> float32
``(C, H, W)``; batched into ``(B, C, H, W)``.

It comes in two public halves so training can put augmentation between them and still use this
one implementation: :func:`geometric_array` (decode result -> ``(H, W, C)`` uint8 at the model's
geometry) and :func:`normalise_pixels` (``(H, W, C)`` uint8 -> ``(C, H, W)`` float32).
:func:`preprocess_image` is the two in a row. :func:`map_to_original` is the inverse of the
geometry, for maps shown on the image the user sent.

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

#: Graph input colour -> channels. ``L`` is Pillow's 8-bit luma (ITU-R 601), exact on grey images.
COLOURS = {"RGB": 3, "L": 1}


@dataclass(frozen=True)
class PreprocessConfig:
    """The input contract of a model; one field per step, all recorded in the manifest."""

    resize: tuple[int, int]  # (height, width) the decoded image is resized to
    interpolation: str = "bilinear"  # Pillow resampling filter used by the resize
    center_crop: tuple[int, int] | None = None  # (height, width) cut from the centre after resize
    scale: float = 1.0 / 255.0  # multiplies the 8-bit values before normalisation
    mean: tuple[float, ...] = IMAGENET_MEAN  # per channel, after scaling
    std: tuple[float, ...] = IMAGENET_STD  # per channel, after scaling
    colour: str = "RGB"  # graph input colour: RGB (3 channels) or L (1 channel, grayscale)
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
        if self.colour not in COLOURS or self.layout != "NCHW" or self.dtype != "float32":
            raise ConfigError(
                f"this runtime reads {' or '.join(COLOURS)}, NCHW, float32 inputs; "
                f"got colour={self.colour}, layout={self.layout}, dtype={self.dtype}"
            )
        n = COLOURS[self.colour]
        if len(self.mean) != n or len(self.std) != n or min(self.std) <= 0:
            raise ConfigError(f"colour {self.colour} needs {n} mean and std value(s) (std > 0); "
                              f"got mean {self.mean}, std {self.std}")

    @property
    def channels(self) -> int:
        """Channels of the graph input: 3 for RGB, 1 for L."""
        return COLOURS[self.colour]

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
        d["channels"] = self.channels
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
    """Resize and crop an image to the model's view of it (no colour change, no normalisation)."""
    h, w = cfg.resize
    if img.size != (w, h):
        img = img.resize((w, h), _INTERPOLATIONS[cfg.interpolation])
    box = _crop_box(cfg)
    return img.crop(box) if box else img


def geometric_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """First half: an RGB image -> ``(H, W, C)`` uint8 at the model's geometry and colour.

    Training augments this array, then calls :func:`normalise_pixels`."""
    view = geometric(img, cfg)
    if cfg.colour != view.mode:
        view = view.convert(cfg.colour)
    arr = np.asarray(view)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalise_pixels(arr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Second half: ``(H, W, C) uint8 -> (C, H, W) float32``, ``(x * scale - mean) / std`` folded
    into one multiply-add."""
    c = cfg.channels
    if arr.ndim != 3 or arr.shape[2] != c:
        raise ConfigError(f"normalise_pixels expects (H, W, {c}) for colour {cfg.colour}, got {arr.shape}")
    gain = (np.float32(cfg.scale) / np.asarray(cfg.std, np.float32)).reshape(c, 1, 1)
    bias = (-np.asarray(cfg.mean, np.float32) / np.asarray(cfg.std, np.float32)).reshape(c, 1, 1)
    # The uint8 transpose first, then a contiguous cast: 5x faster than casting the strided view
    # (0.14 against 0.75 ms at 256 px, measured), and the same float32 arithmetic.
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)
    chw *= gain
    chw += bias
    return chw


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """An RGB image -> ``(C, H, W)`` float32 graph input (:func:`geometric_array` then :func:`normalise_pixels`)."""
    return normalise_pixels(geometric_array(img, cfg), cfg)


def load_image(source: ImageSource, cfg: PreprocessConfig, **decode_kwargs: Any) -> np.ndarray:
    """Decode and preprocess one file -> ``(C, H, W)`` float32. Raises ImageDecodeError."""
    return preprocess_image(decode_image(source, **decode_kwargs), cfg)


def stack(tensors: Sequence[np.ndarray]) -> np.ndarray:
    """``[(C, H, W), ...] -> (B, C, H, W)`` contiguous float32."""
    return np.ascontiguousarray(np.stack(tensors, axis=0), dtype=np.float32)


def map_to_original(anomaly_map: np.ndarray, original_size: tuple[int, int], cfg: PreprocessConfig) -> np.ndarray:
    """The inverse of the geometry: a map ``(H, W)`` at the model's input -> ``(h0, w0)`` over the
    image as it was sent (``original_size`` is Pillow's ``(width, height)``).

    A centre crop is undone first: the cropped-away border was never seen by the model, so it
    takes the nearest value inside the crop (edge padding). Then the resize is undone with a
    bilinear float resize. The result is float32 with the map's own units.
    """
    m = np.asarray(anomaly_map, np.float32)
    box = _crop_box(cfg)
    if box is not None:
        left, top, right, bottom = box
        rh, rw = cfg.resize
        m = np.pad(m, ((top, rh - bottom), (left, rw - right)), mode="edge")
    w0, h0 = original_size
    if m.shape != (h0, w0):
        m = np.asarray(Image.fromarray(m, mode="F").resize((w0, h0), Image.Resampling.BILINEAR), np.float32)
    return m


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
