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

**Tiling** (``PreprocessConfig.tiling``, a :class:`TilingSpec`): instead of resizing the whole image to
the model's input, the image is kept at its own resolution (or resized to a stated working size, its
longer side), then cut into tiles of the model's input size that overlap by ``overlap`` pixels. The
model sees every tile as it would see an image; :mod:`adx_runtime.tiling` stitches the tiles' maps
back onto the working image. Border tiles are **shifted inward** (the last tile of a row ends at the
image's edge and overlaps its neighbour more), never padded: padding would show the model pixels no
camera took (a mirrored or black border), which it would score as anomalous at every image's edge.
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


#: How tiles at an image's edge are placed, and how overlapping tile maps are blended (recorded in the
#: manifest so a reader in another language does the same; the only values this runtime writes).
TILE_BORDER = "shift-inward"
TILE_BLEND = "linear-ramp"


@dataclass(frozen=True)
class TilingSpec:
    """How an image is cut into tiles of the model's input size (``PreprocessConfig.resize``).

    ``overlap``: pixels shared by neighbouring tiles (stride = tile - overlap); their maps are blended
    over the overlap with weights that ramp linearly and sum to one. ``working_size``: the longer side
    the image is resized to before tiling (``None``: its own resolution). ``fixed_size``: ``(H, W)``
    every working image must have (``None``: any size), set by a model whose statistics are kept per
    tile position (aligned parts: tile ``j`` is the same place of every image); an image of another
    size is refused, not scored against another place's statistics."""

    overlap: int = 32
    working_size: int | None = None
    fixed_size: tuple[int, int] | None = None

    def check(self, tile: tuple[int, int]) -> None:
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not 0 <= 2 * self.overlap <= min(tile):
            raise ConfigError(f"tile overlap must be a whole number of pixels from 0 to half the tile "
                              f"({min(tile) // 2}), got {self.overlap!r}")
        if self.working_size is not None and (isinstance(self.working_size, bool) or not isinstance(self.working_size, int)
                                              or not max(tile) <= self.working_size <= 65536):
            raise ConfigError(f"working size (the longer side images are resized to before tiling) must be a whole "
                              f"number of pixels from the tile size {max(tile)} to 65536, got {self.working_size!r}")
        if self.fixed_size is not None and (
                len(self.fixed_size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in self.fixed_size)
                or not (tile[0] <= self.fixed_size[0] <= 65536 and tile[1] <= self.fixed_size[1] <= 65536)):
            raise ConfigError(f"fixed working size must be (height, width) in whole pixels, at least one tile "
                              f"{list(tile)} and at most 65536, got {self.fixed_size!r}")

    def to_dict(self, tile: tuple[int, int]) -> dict[str, Any]:
        return {"tile": list(tile), "overlap": self.overlap,
                "stride": [tile[0] - self.overlap, tile[1] - self.overlap],
                "working_size": self.working_size, "border": TILE_BORDER, "blend": TILE_BLEND,
                # absent unless set, so manifests of models without per-tile statistics are unchanged
                **({"fixed_size": list(self.fixed_size)} if self.fixed_size is not None else {})}

    @classmethod
    def from_dict(cls, d: Any, tile: tuple[int, int]) -> "TilingSpec":
        if not isinstance(d, dict):
            raise BundleError("manifest input.tiling must be an object; re-export the bundle")
        try:
            fixed = d.get("fixed_size")
            spec = cls(overlap=d["overlap"], working_size=d["working_size"],
                       fixed_size=tuple(fixed) if isinstance(fixed, list) else fixed)
            ok = (list(d["tile"]) == list(tile) and list(d["stride"]) == [tile[0] - spec.overlap, tile[1] - spec.overlap]
                  and d["border"] == TILE_BORDER and d["blend"] == TILE_BLEND)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest input.tiling is malformed ({type(exc).__name__}: {exc}); re-export the bundle") from None
        if not ok:
            raise BundleError(f"manifest input.tiling {d} does not fit the input size {list(tile)} (tile = input size, "
                              f"stride = tile - overlap, border {TILE_BORDER!r}, blend {TILE_BLEND!r}); re-export the bundle")
        try:
            spec.check(tile)
        except ConfigError as exc:
            raise BundleError(f"manifest input.tiling: {exc}") from None
        return spec


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
    tiling: TilingSpec | None = None  # None: the whole image is resized to ``resize``

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
        if self.tiling is not None:
            if self.center_crop is not None:
                raise ConfigError("tiling and a centre crop do not go together: a tiled model sees the whole image")
            self.tiling.check(self.resize)

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
        del d["tiling"]
        if self.tiling is not None:  # absent when untiled: untiled manifests stay as they were
            d["tiling"] = self.tiling.to_dict(self.resize)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        tiling = TilingSpec.from_dict(d["tiling"], tuple(d["resize"])) if d.get("tiling") is not None else None
        try:
            return cls(
                tiling=tiling,
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


# ------------------------------------------------------------------------------------ tiling
def working_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """A tiled model's first half: an RGB image -> ``(H, W, C)`` uint8 at the working resolution
    (the image's own, or its longer side resized to ``tiling.working_size``) in the graph's colour.
    Raises :class:`ConfigError` when a side is shorter than the tile."""
    if cfg.tiling is None:
        raise ConfigError("working_array is for tiled input contracts; this one resizes the whole image")
    w0, h0 = img.size
    size = working_size((w0, h0), cfg)
    if size != (w0, h0):
        img = img.resize(size, _INTERPOLATIONS[cfg.interpolation])
    if cfg.colour != img.mode:
        img = img.convert(cfg.colour)
    arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def working_size(size: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int]:
    """Pillow ``(width, height)`` of the image as sent -> ``(width, height)`` the tiles are cut from;
    refused when a side would be shorter than a tile."""
    assert cfg.tiling is not None
    w0, h0 = size
    target = cfg.tiling.working_size
    w, h = (w0, h0) if target is None else (max(1, round(w0 * target / max(w0, h0))), max(1, round(h0 * target / max(w0, h0))))
    th, tw = cfg.resize
    what = f"{w0} x {h0}" + (f" (resized to {w} x {h} by the working size {target})" if (w, h) != (w0, h0) else "")
    if h < th or w < tw:
        raise ConfigError(f"the image is {what}, smaller than the bundle's {tw} x {th} tiles; a tiled model needs "
                          "images at least one tile wide and high")
    fixed = cfg.tiling.fixed_size
    if fixed is not None and (h, w) != tuple(fixed):
        raise ConfigError(f"the image is {what}; this model keeps its statistics per tile position for working images "
                          f"of exactly {fixed[1]} x {fixed[0]} (aligned parts), so it cannot score another size")
    return (w, h)


def tile_offsets(n: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of ``tile`` pixels along a side of ``n >= tile`` pixels, ``tile -
    overlap`` apart; the last one is shifted inward to end at the edge (never past it)."""
    if n < tile:
        raise ConfigError(f"a side of {n} px is shorter than the tile ({tile} px)")
    stride = tile - overlap
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


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
    if cfg.tiling is not None:  # a tiled map is at the working size, the image's own unless resized
        w0, h0 = original_size
        if m.shape != (h0, w0):
            m = np.asarray(Image.fromarray(m, mode="F").resize((w0, h0), Image.Resampling.BILINEAR), np.float32)
        return m
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
    if cfg.tiling is not None:  # the map of a tiled model is at the working size
        size = working_size(img.size, cfg)
        return np.asarray(img if img.size == size else img.resize(size, Image.Resampling.NEAREST)) > 127
    h, w = cfg.resize
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.NEAREST)
    box = _crop_box(cfg)
    if box:
        img = img.crop(box)
    return np.asarray(img) > 127
