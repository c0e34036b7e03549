"""Anomaly synthesis for self-supervised training: CutPaste, CutPaste-scar, Perlin texture anomalies.

Methods that learn from normal images only make their own anomalies:

- **CutPaste** (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection
  and Localization", CVPR 2021) trains a classifier to tell normal images from the same images with
  a rectangle cut out, colour-jittered and pasted elsewhere (:func:`cutpaste`: area 2 % to 15 % of
  the image, aspect ratio 0.3 to 3.3 drawn log-uniformly, ColorJitter 0.1), or with a thin rotated
  "scar" (:func:`scar`: 2 to 16 px wide, 10 to 25 px high on 256 px images, rotated -45 to 45
  degrees). :data:`VARIANTS` names the paper's 2-way ("normal", "scar") and 3-way classifiers and
  :func:`cutpaste_batch` builds one training batch of them.
- **DRAEM** (Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
  for surface anomaly detection", ICCV 2021) pastes a foreign texture (from DTD) through a thresholded
  Perlin-noise mask (:func:`perlin_noise`, :func:`perlin_mask`, :func:`texture_anomaly`); **PRNet**
  (Zhang et al., "Prototypical Residual Networks for Anomaly Detection and Localization", CVPR 2023)
  trains its segmentation head on the same kind of "unseen appearance" anomalies plus CutPaste-like
  patches: :func:`anomaly_batch` returns images and float masks for that.

Images are ``(H, W, C)`` uint8 with ``C`` 1 or 3, masks ``(H, W)`` bool; every draw comes from the
``rng`` argument, so the same seed gives byte-identical output. The mask is *the region that was
replaced*: every pixel outside it is byte-identical to the input, and inside it almost every pixel
changed, but a jittered patch can equal the original at a few pixels by chance, so the mask is not a
per-pixel difference.

:func:`write_preview` (``adx synth-preview``) draws grids of synthetic anomalies of a dataset.

Imports only numpy, Pillow, the standard library and ``adx_runtime``'s torch-free modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.errors import AdxError, ConfigError
from adx_runtime.images import IMAGE_SUFFIXES, decode_image
from adx_synth.defects import blob_alpha, loguniform
from adx_synth.textures import RENDERERS

__all__ = [
    "ANOMALY_KINDS",
    "VARIANTS",
    "Synthetic",
    "TextureSource",
    "anomaly_batch",
    "color_jitter",
    "cutpaste",
    "cutpaste_batch",
    "perlin_mask",
    "perlin_noise",
    "preview_grid",
    "scar",
    "scar_sizes",
    "texture_anomaly",
    "write_preview",
]

Array = np.ndarray


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare by
class Synthetic:
    """One synthetic anomaly."""

    image: Array  # (H, W, C) uint8, the image with the anomaly
    mask: Array  # (H, W) bool, exactly the region that was replaced


# --------------------------------------------------------------------------------------------
# Checks and conversions
# --------------------------------------------------------------------------------------------


def _check_image(image: Array, name: str = "image") -> Array:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ConfigError(
            f"{name} must be an (H, W, C) uint8 array with C = 1 or 3, got shape {image.shape} "
            f"dtype {image.dtype}; add a channel axis to a grayscale (H, W) image with image[..., None]"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ConfigError(f"{name} must be at least 2 x 2 pixels, got {image.shape[1]} x {image.shape[0]}")
    return image


def _check_batch(images: Array) -> Array:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ConfigError(
            f"images must be a (B, H, W, C) uint8 array with C = 1 or 3, got shape {images.shape} "
            f"dtype {images.dtype}"
        )
    return images


def _check_range(name: str, lo: float, hi: float, *, minimum: float | None = None) -> None:
    if not lo <= hi or (minimum is not None and lo < minimum):
        floor = f", both at least {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be a range (low, high) with low <= high{floor}, got ({lo}, {hi})")


def _to_uint8(x: Array) -> Array:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Colour jitter (torchvision ColorJitter)
# --------------------------------------------------------------------------------------------


def _gray(img: Array) -> Array:
    """ITU-R 601-2 luma ``(H, W, 1)`` as torchvision's ``rgb_to_grayscale``; ``C = 1`` is its own gray."""
    if img.shape[2] == 1:
        return img
    return (0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])[..., None]


def _rgb_to_hsv(img: Array) -> tuple[Array, Array, Array]:
    """``(H, W, 3)`` RGB in 0..1 -> hue (turns), saturation, value; torchvision's ``_rgb2hsv``."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    maxc, minc = img.max(axis=-1), img.min(axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1.0, maxc)
    div = np.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: Array, s: Array, v: Array) -> Array:
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def color_jitter(
    image: Array,
    rng: np.random.Generator,
    *,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    hue: float = 0.1,
) -> Array:
    """Random brightness, contrast, saturation and hue, as torchvision's ``ColorJitter``: ``(H, W, C)`` uint8.

    As in torchvision: the four adjustments are applied in a random order, each factor is uniform in
    ``[max(0, 1 - x), 1 + x]`` (brightness scales the pixels, contrast blends with the mean gray
    level, saturation with the pixel's gray level), the hue shift is uniform in ``[-hue, hue]`` of a
    turn, the result is clipped to 0..255 after each step, and an amount of 0 skips that step (no
    draw). Grayscale images (``C = 1``) get brightness and contrast only. CutPaste (Li et al., CVPR
    2021) jitters every amount by 0.1.
    """
    image = _check_image(image)
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ConfigError(f"color_jitter {name} must be >= 0, got {value}")
    if not 0 <= hue <= 0.5:
        raise ConfigError(f"color_jitter hue must be in [0, 0.5] (a fraction of a turn), got {hue}")
    return _jitter(image, rng, (brightness, contrast, saturation, hue))


def _jitter(image: Array, rng: np.random.Generator, amounts: tuple[float, float, float, float]) -> Array:
    """:func:`color_jitter` without the checks, for patches of any size (a scar can be 1 px wide)."""
    if image.shape[2] == 1:
        amounts = (amounts[0], amounts[1], 0.0, 0.0)
    if not any(amounts):
        return image.copy()
    order = rng.permutation(4)  # torchvision draws the order first, then the factors
    factors: list[float | None] = []
    for i, a in enumerate(amounts):
        if a <= 0:
            factors.append(None)
        elif i == 3:
            factors.append(float(rng.uniform(-a, a)))
        else:
            factors.append(float(rng.uniform(max(0.0, 1.0 - a), 1.0 + a)))
    x = image.astype(np.float32)
    for i in order:
        f = factors[i]
        if f is None:
            continue
        if i == 0:
            x = np.clip(x * f, 0.0, 255.0)
        elif i == 1:
            x = np.clip(f * x + (1.0 - f) * _gray(x).mean(), 0.0, 255.0)
        elif i == 2:
            x = np.clip(f * x + (1.0 - f) * _gray(x), 0.0, 255.0)
        else:
            h, s, v = _rgb_to_hsv(x / 255.0)
            x = np.clip(_hsv_to_rgb(np.mod(h + f, 1.0), s, v) * 255.0, 0.0, 255.0).astype(np.float32)
    return _to_uint8(x)


def _jitter_all(image: Array, rng: np.random.Generator, amount: float) -> Array:
    if amount < 0 or amount > 0.5:
        raise ConfigError(f"jitter must be in [0, 0.5] (it is also the hue shift, a fraction of a turn), got {amount}")
    return _jitter(image, rng, (amount, amount, amount, amount))


# --------------------------------------------------------------------------------------------
# CutPaste and CutPaste-scar
# --------------------------------------------------------------------------------------------


def cutpaste(
    image: Array,
    rng: np.random.Generator,
    *,
    area: tuple[float, float] = (0.02, 0.15),
    aspect: tuple[float, float] = (0.3, 3.3),
    jitter: float = 0.1,
) -> Synthetic:
    """CutPaste (Li et al., CVPR 2021): a rectangle of the image, colour-jittered, pasted at another place.

    The rectangle covers a fraction of the image uniform in ``area`` (paper: 0.02 to 0.15) with width
    over height drawn log-uniformly in ``aspect`` (paper: 0.3 to 3.3; log-uniform so that tall and
    wide patches are equally likely); its sides are rounded to pixels and clipped to the image. It is
    cut from a uniformly random place, jittered with ColorJitter ``jitter`` for all four amounts
    (paper: 0.1), and pasted fully inside the image at another uniformly random place (drawn again
    if it would land exactly where it was cut; the two may overlap). ``mask`` is the pasted rectangle.
    """
    image = _check_image(image)
    _check_range("cutpaste area", *area, minimum=0.0)
    _check_range("cutpaste aspect", *aspect, minimum=1e-6)
    h, w = image.shape[:2]
    frac = float(rng.uniform(area[0], area[1]))
    ratio = loguniform(rng, aspect[0], aspect[1])
    pixels = frac * h * w
    cut_w = int(np.clip(round(np.sqrt(pixels * ratio)), 1, w))
    cut_h = int(np.clip(round(np.sqrt(pixels / ratio)), 1, h))
    sx, sy = int(rng.integers(0, w - cut_w + 1)), int(rng.integers(0, h - cut_h + 1))
    tx, ty = sx, sy
    movable = cut_w < w or cut_h < h  # a patch the size of the image has nowhere else to go
    while movable and (tx, ty) == (sx, sy):
        tx, ty = int(rng.integers(0, w - cut_w + 1)), int(rng.integers(0, h - cut_h + 1))
    patch = _jitter_all(image[sy:sy + cut_h, sx:sx + cut_w], rng, jitter)
    out = image.copy()
    out[ty:ty + cut_h, tx:tx + cut_w] = patch
    mask = np.zeros((h, w), dtype=bool)
    mask[ty:ty + cut_h, tx:tx + cut_w] = True
    return Synthetic(out, mask)


def _to_pil(arr: Array) -> Image.Image:
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def _from_pil(img: Image.Image, channels: int) -> Array:
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[..., None] if channels == 1 else arr


def scar(
    image: Array,
    rng: np.random.Generator,
    *,
    width: tuple[int, int] = (2, 16),
    height: tuple[int, int] = (10, 25),
    angle: tuple[float, float] = (-45, 45),
    jitter: float = 0.1,
) -> Synthetic:
    """CutPaste-scar (Li et al., CVPR 2021): a thin rotated rectangle, colour-jittered, pasted elsewhere.

    Width and height are integers uniform in the inclusive pixel ranges ``width`` and ``height``
    (paper: 2 to 16 and 10 to 25 px on 256 px images; callers scale them to their image size), clipped
    to the image. The rectangle is cut at a random place, jittered with ColorJitter ``jitter`` (paper:
    0.1), rotated counter-clockwise by an angle uniform in ``angle`` degrees (paper: -45 to 45) and
    pasted at a random place where it fits (a rotated scar larger than the image is cropped to it).
    Rotation is nearest-neighbour for the patch and its alpha alike, so only the rotated rectangle's
    pixels change and ``mask`` is exactly them.
    """
    image = _check_image(image)
    _check_range("scar width", *width, minimum=1)
    _check_range("scar height", *height, minimum=1)
    _check_range("scar angle", *angle)
    h, w = image.shape[:2]
    cut_w = min(int(rng.integers(int(width[0]), int(width[1]) + 1)), w)
    cut_h = min(int(rng.integers(int(height[0]), int(height[1]) + 1)), h)
    sx, sy = int(rng.integers(0, w - cut_w + 1)), int(rng.integers(0, h - cut_h + 1))
    patch = _jitter_all(image[sy:sy + cut_h, sx:sx + cut_w], rng, jitter)
    deg = float(rng.uniform(angle[0], angle[1]))
    # Same size, same resampling for both: the alpha is exactly 0 or 255 where the patch landed.
    rot = _to_pil(patch).rotate(deg, resample=Image.Resampling.NEAREST, expand=True)
    alpha = Image.new("L", (cut_w, cut_h), 255).rotate(deg, resample=Image.Resampling.NEAREST, expand=True)
    rot_arr = _from_pil(rot, image.shape[2])
    alpha_arr = np.asarray(alpha) > 127
    rh, rw = alpha_arr.shape
    oy, ox = max(0, (rh - h) // 2), max(0, (rw - w) // 2)  # crop a scar larger than the image
    rot_arr, alpha_arr = rot_arr[oy:oy + h, ox:ox + w], alpha_arr[oy:oy + h, ox:ox + w]
    rh, rw = alpha_arr.shape
    tx, ty = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    out = image.copy()
    region = out[ty:ty + rh, tx:tx + rw]
    region[alpha_arr] = rot_arr[alpha_arr]
    mask = np.zeros((h, w), dtype=bool)
    mask[ty:ty + rh, tx:tx + rw] = alpha_arr
    return Synthetic(out, mask)


#: CutPaste classifier variants (Li et al., CVPR 2021, Table 1): variant -> its classes; the class
#: index (label) is the position in the tuple. The paper's "CutPaste" (here "normal") is the 2-way
#: original vs cutpaste task, "scar" is original vs scar, "3way" all three.
VARIANTS: dict[str, tuple[str, ...]] = {
    "normal": ("normal", "cutpaste"),
    "scar": ("normal", "scar"),
    "3way": ("normal", "cutpaste", "scar"),
}


#: The paper's scar sizes in pixels (Li et al. 2021, sec. 3.1), for its 256 x 256 images.
SCAR_WIDTH, SCAR_HEIGHT, SCAR_IMAGE_SIZE = (2, 16), (10, 25), 256


def scar_sizes(side: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The paper's scar width and height ranges, 2-16 and 10-25 px at 256 px, scaled to an image of
    ``side`` pixels: ``(width_range, height_range)``, each ``(lo, hi)`` with ``1 <= lo <= hi``."""
    f = side / SCAR_IMAGE_SIZE

    def scale(r: tuple[int, int]) -> tuple[int, int]:
        hi = max(1, round(r[1] * f))
        return min(max(1, round(r[0] * f)), hi), hi

    return scale(SCAR_WIDTH), scale(SCAR_HEIGHT)


def cutpaste_batch(
    images: Array,
    rng: np.random.Generator,
    variant: str = "3way",
    *,
    pre_jitter: float = 0.1,
    area: tuple[float, float] = (0.02, 0.15),
    aspect: tuple[float, float] = (0.3, 3.3),
    scar_width: tuple[int, int] = (2, 16),
    scar_height: tuple[int, int] = (10, 25),
    jitter: float = 0.1,
) -> dict[str, Array]:
    """One CutPaste training batch: every image and its synthetic anomalies, with class labels.

    Args:
        images: ``(B, H, W, C)`` uint8 normal images.
        variant: a key of :data:`VARIANTS`; its ``K`` classes are made from every image.
        pre_jitter: ColorJitter amount (all four) applied to every image first, as the paper's
            training pipeline does before cutting (0 = off); each class is made from that jittered
            image, so class 0 is the jittered image itself.

    Returns:
        ``{"image": (B*K, H, W, C) uint8, "label": (B*K,) int64, "mask": (B*K, H, W) bool}`` in
        class-major order: all ``B`` images of class 0, then all of class 1, ...; class 0 masks are
        all False.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown CutPaste variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    images = _check_batch(images)
    classes = VARIANTS[variant]
    base = [images[i] if pre_jitter <= 0 else _jitter_all(images[i], rng, pre_jitter) for i in range(len(images))]
    out_images, out_masks = [], []
    for cls in classes:
        for img in base:
            if cls == "normal":
                out_images.append(img)
                out_masks.append(np.zeros(img.shape[:2], dtype=bool))
                continue
            if cls == "cutpaste":
                syn = cutpaste(img, rng, area=area, aspect=aspect, jitter=jitter)
            else:
                syn = scar(img, rng, width=scar_width, height=scar_height, jitter=jitter)
            out_images.append(syn.image)
            out_masks.append(syn.mask)
    b, hh, ww, c = images.shape
    k = len(classes)
    return {
        "image": np.stack(out_images) if out_images else np.zeros((0, hh, ww, c), np.uint8),
        "label": np.repeat(np.arange(k, dtype=np.int64), b),
        "mask": np.stack(out_masks) if out_masks else np.zeros((0, hh, ww), bool),
    }


# --------------------------------------------------------------------------------------------
# Perlin noise and masks (DRAEM)
# --------------------------------------------------------------------------------------------


def _fade(t: Array) -> Array:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)  # Perlin's quintic 6t^5 - 15t^4 + 10t^3


def perlin_noise(
    shape: tuple[int, int], rng: np.random.Generator, *, scale: tuple[int, int] = (1, 6)
) -> Array:
    """2-D gradient (Perlin) noise: float32 ``(H, W)`` in ``[-1, 1]``.

    As DRAEM's ``rand_perlin_2d_np`` (Zavrtanik et al., ICCV 2021): random unit gradients on a
    lattice of ``2**ky`` x ``2**kx`` cells spanning the image, with ``k`` a uniform integer in
    ``[scale[0], scale[1])`` drawn per axis (DRAEM draws ``[0, 6)``), interpolated with the quintic fade
    and scaled by sqrt(2) so the range is ``[-1, 1]``. Coarse lattices give large blobs, fine ones
    speckle. Pixels are sampled at their centres in continuous lattice coordinates (DRAEM samples at
    pixel corners on a grid that must divide the image), so any shape works and no pixel sits exactly
    on a lattice point, where gradient noise is 0. Not tileable.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ConfigError(f"perlin_noise shape must be positive, got {shape}")
    lo, hi = int(scale[0]), int(scale[1])
    if not 0 <= lo < hi:
        raise ConfigError(f"perlin_noise scale must be (low, high) with 0 <= low < high, got {scale}")
    ky, kx = rng.integers(lo, hi, size=2)
    res_y, res_x = 2 ** int(ky), 2 ** int(kx)
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(res_y + 1, res_x + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (res_y+1, res_x+1, [gy, gx])
    y = (np.arange(h) + 0.5) * (res_y / h)
    x = (np.arange(w) + 0.5) * (res_x / w)
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]

    def corner(dy: int, dx: int) -> Array:
        g = grad[(iy + dy)[:, None], (ix + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) + tx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + tx * (corner(1, 1) - corner(1, 0))
    return (np.sqrt(2.0) * (top + ty * (bottom - top))).astype(np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    threshold: float = 0.5,
    scale: tuple[int, int] = (1, 6),
    min_pixels: int = 16,
    max_tries: int = 10,
) -> Array:
    """Bool ``(H, W)`` anomaly region: :func:`perlin_noise` rotated by -90 to 90 degrees, above ``threshold``.

    As DRAEM (threshold 0.5, rotation -90 to 90 degrees with zero fill, so the corners the rotation
    uncovers stay normal). A draw with fewer than ``min_pixels`` pixels set (at most the image) is
    drawn again, up to ``max_tries`` times; then a small random blob is used, so the mask is never
    empty.
    """
    h, w = int(shape[0]), int(shape[1])
    need = max(1, min(int(min_pixels), h * w))
    for _ in range(max(1, int(max_tries))):
        noise = perlin_noise((h, w), rng, scale=scale)
        deg = float(rng.uniform(-90.0, 90.0))
        rotated = np.asarray(Image.fromarray(noise, "F").rotate(deg, resample=Image.Resampling.BILINEAR))
        mask = rotated > threshold
        if mask.sum() >= need:
            return mask
    mask = blob_alpha(rng, (h, w), max(1.5, 0.08 * min(h, w)), irregular=0.3) > 0.5
    if not mask.any():
        mask[h // 2, w // 2] = True
    return mask


# --------------------------------------------------------------------------------------------
# Foreign textures and texture anomalies
# --------------------------------------------------------------------------------------------

_PIL_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "MPO"}


class TextureSource:
    """Foreign textures for texture anomalies (DRAEM and PRNet use the Describable Textures Dataset).

    Build one with :meth:`generated` (the demo generator's texture renderers, no files needed) or
    :meth:`from_folder` (any folder of images, such as DTD's ``images/``). Picklable, so it can go
    into data-loader workers.
    """

    def __init__(self, *, names: Sequence[str], paths: Sequence[Path] = (), root: Path | None = None,
                 skipped: int = 0) -> None:
        self._names = tuple(names)  # renderer names, or file paths relative to root
        self._paths = list(paths)  # empty for generated textures
        self._root = root
        #: Files found undecodable: at construction (not an image) and when first sampled (corrupt data).
        self.skipped = skipped

    @classmethod
    def generated(cls, exclude: Sequence[str] = ()) -> TextureSource:
        """The demo generator's texture renderers (``adx_synth.textures.RENDERERS``) minus ``exclude``.

        Pass the training category in ``exclude`` so that its own texture is not an anomaly. Each
        sample is rendered on demand at the requested size.
        """
        if isinstance(exclude, str):
            exclude = (exclude,)
        names = [n for n in RENDERERS if n not in set(exclude)]
        if not names:
            raise ConfigError(
                f"no generated textures left after excluding {', '.join(exclude)}; the generated "
                f"textures are {', '.join(RENDERERS)}: exclude fewer, or use a folder of textures"
            )
        return cls(names=names)

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextureSource:
        """Every image file under ``folder`` (recursively; hidden files skipped), decoded when sampled.

        Files are checked at construction by reading their header (cheap, for folders of thousands
        of images) and decoded with ``adx_runtime.images.decode_image`` on use; files that are not
        images, or whose data turns out corrupt, are skipped and counted in :attr:`skipped`.

        Raises:
            ConfigError: the folder does not exist, or holds no decodable image.
        """
        root = Path(folder)
        looked_for = ", ".join(IMAGE_SUFFIXES)
        if not root.is_dir():
            raise ConfigError(f"texture folder {str(root)!r} does not exist or is not a folder; "
                              f"expected a folder of images ({looked_for}), such as DTD's images/")
        candidates = sorted(
            p for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        paths, skipped = [], 0
        for p in candidates:
            try:
                with Image.open(p) as im:
                    ok = im.format in _PIL_FORMATS
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
                ok = False
            if ok:
                paths.append(p)
            else:
                skipped += 1
        if not paths:
            found = f"{len(candidates)} image files, none decodable" if candidates else "no image files"
            raise ConfigError(f"texture folder {str(root)!r} holds {found} (looked for {looked_for}, "
                              "recursively); point --textures at a folder of texture images such as DTD's images/")
        return cls(names=[str(p.relative_to(root)) for p in paths], paths=paths, root=root, skipped=skipped)

    @property
    def names(self) -> tuple[str, ...]:
        """Renderer names (generated) or file paths relative to the folder."""
        return self._names

    @property
    def description(self) -> str:
        """One line for messages, e.g. ``generated textures: grid, wood, tile``."""
        if self._root is None:
            return f"generated textures: {', '.join(self._names)}"
        skipped = f" ({self.skipped} undecodable skipped)" if self.skipped else ""
        return f"folder {self._root}: {len(self._paths)} images{skipped}"

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"TextureSource({self.description})"

    def sample(self, rng: np.random.Generator, shape: tuple[int, int], channels: int) -> Array:
        """A random texture ``(H, W, channels)`` uint8 (``channels`` 1: converted to gray, 3: RGB).

        Generated textures are rendered at ``max(H, W)`` and randomly cropped; folder images get a
        random crop of the target's aspect ratio covering 50 % to 100 % of the largest one that
        fits, resized bilinearly.
        """
        h, w = int(shape[0]), int(shape[1])
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        if self._root is None:
            name = self._names[int(rng.integers(len(self._names)))]
            n = max(h, w)
            img, _ = RENDERERS[name](rng, n)
            arr = _to_uint8(img * 255.0)
            y0, x0 = int(rng.integers(0, n - h + 1)), int(rng.integers(0, n - w + 1))
            pil = Image.fromarray(arr[y0:y0 + h, x0:x0 + w], "RGB")
            return _from_pil(pil, channels)
        return _from_pil(self._sample_file(rng, h, w), channels)

    def _sample_file(self, rng: np.random.Generator, h: int, w: int) -> Image.Image:
        while self._paths:
            i = int(rng.integers(len(self._paths)))
            try:
                img = decode_image(self._paths[i])
            except AdxError:
                # Corrupt data behind a valid header: drop it and draw again.
                del self._paths[i]
                self._names = self._names[:i] + self._names[i + 1:]
                self.skipped += 1
                continue
            sw, sh = img.size
            crop_w = min(sw, sh * w / h)  # the largest crop with the target's aspect ratio
            crop_w *= float(rng.uniform(0.5, 1.0)) ** 0.5  # 50 % to 100 % of its area
            crop_h = crop_w * h / w
            x0 = float(rng.uniform(0.0, sw - crop_w))
            y0 = float(rng.uniform(0.0, sh - crop_h))
            return img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
        raise ConfigError(f"texture folder {str(self._root)!r}: none of its images could be decoded "
                          f"({self.skipped} skipped)")


def texture_anomaly(
    image: Array,
    rng: np.random.Generator,
    textures: TextureSource,
    *,
    opacity: tuple[float, float] = (0.0, 0.8),
    threshold: float = 0.5,
) -> Synthetic:
    """A foreign texture blended in through a Perlin mask (DRAEM, Zavrtanik et al., ICCV 2021, eq. 1).

    ``out = image * (1 - M) + M * ((1 - beta) * texture + beta * image)`` with ``M`` the
    :func:`perlin_mask` (threshold 0.5) and ``beta`` uniform in ``opacity`` (DRAEM: 0 to 0.8, so the
    texture always dominates a little at least). Rounded to uint8 inside the mask; outside it the
    image is copied. DRAEM also applies random augmentations to the texture first; a folder source
    only crops and resizes it. ``mask`` is the Perlin mask.
    """
    image = _check_image(image)
    _check_range("texture_anomaly opacity", *opacity, minimum=0.0)
    if opacity[1] > 1.0:
        raise ConfigError(f"texture_anomaly opacity must lie in [0, 1], got {opacity}")
    h, w, c = image.shape
    mask = perlin_mask((h, w), rng, threshold=threshold)
    texture = textures.sample(rng, (h, w), c)
    beta = np.float32(rng.uniform(opacity[0], opacity[1]))
    out = image.copy()
    out[mask] = _to_uint8((1 - beta) * texture[mask].astype(np.float32) + beta * image[mask].astype(np.float32))
    return Synthetic(out, mask)


ANOMALY_KINDS = ("texture", "cutpaste", "scar")


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in ANOMALY_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"unknown anomaly kinds {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"valid kinds: {', '.join(ANOMALY_KINDS)}")
    return kinds


def _check_textures(kinds: tuple[str, ...], textures: TextureSource | None) -> None:
    if "texture" in kinds and textures is None:
        raise ConfigError("anomaly kind 'texture' needs a TextureSource (TextureSource.generated(...) or "
                          "TextureSource.from_folder(...)); pass textures=..., or leave 'texture' out of kinds")


def anomaly_batch(
    images: Array,
    rng: np.random.Generator,
    *,
    textures: TextureSource | None,
    p_anomaly: float = 0.5,
    kinds: Sequence[str] = ANOMALY_KINDS,
    scar_width: tuple[int, int] = (2, 16),
    scar_height: tuple[int, int] = (10, 25),
) -> dict[str, Array]:
    """A segmentation training batch (PRNet; DRAEM): some images get one synthetic anomaly each.

    Each image independently becomes anomalous with probability ``p_anomaly`` (DRAEM: 0.5), with one
    kind drawn uniformly from ``kinds``: ``"texture"`` (:func:`texture_anomaly`, needs ``textures``),
    ``"cutpaste"`` (:func:`cutpaste`, paper defaults) or ``"scar"`` (:func:`scar` with
    ``scar_width``/``scar_height``, to be scaled to the image size).

    Args:
        images: ``(B, H, W, C)`` uint8 normal images.

    Returns:
        ``{"image": (B, H, W, C) uint8, "mask": (B, 1, H, W) float32}`` with mask 1 on the anomaly and
        all zero for images left normal.
    """
    images = _check_batch(images)
    kinds = _check_kinds(kinds)
    _check_textures(kinds, textures)
    if not 0.0 <= p_anomaly <= 1.0:
        raise ConfigError(f"p_anomaly must be in [0, 1], got {p_anomaly}")
    b, h, w, _ = images.shape
    out = images.copy()
    masks = np.zeros((b, 1, h, w), dtype=np.float32)
    for i in range(b):
        if not rng.random() < p_anomaly:
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "texture":
            assert textures is not None  # checked by _check_textures
            syn = texture_anomaly(images[i], rng, textures)
        elif kind == "cutpaste":
            syn = cutpaste(images[i], rng)
        else:
            syn = scar(images[i], rng, width=scar_width, height=scar_height)
        out[i] = syn.image
        masks[i, 0] = syn.mask
    return {"image": out, "mask": masks}


# --------------------------------------------------------------------------------------------
# Previews
# --------------------------------------------------------------------------------------------

_PAD = 2  # px between tiles
_BACKGROUND = (32, 32, 32)


def _outline(mask: Array) -> Array:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def preview_grid(images: Sequence[Array], masks: Sequence[Array], *, columns: int = 8) -> Image.Image:
    """A grid of synthetic anomalies: RGB :class:`PIL.Image.Image`.

    Rows come in pairs: the anomalous images, then the same images with the mask's outline in red.
    With ``n`` images of ``H`` x ``W`` and ``k = min(columns, n)`` columns, ``r = ceil(n / k)`` pairs of
    rows, and 2 px gaps, the grid is ``k*W + (k+1)*2`` wide and ``2*r*H + (2*r+1)*2`` high.
    """
    if len(images) != len(masks) or not images:
        raise ConfigError(f"preview_grid needs as many masks as images, and at least one; "
                          f"got {len(images)} images and {len(masks)} masks")
    if columns < 1:
        raise ConfigError(f"preview_grid columns must be >= 1, got {columns}")
    h, w = np.asarray(images[0]).shape[:2]
    n = len(images)
    k = min(columns, n)
    rows = -(-n // k)
    canvas = Image.new("RGB", (k * w + (k + 1) * _PAD, 2 * rows * h + (2 * rows + 1) * _PAD), _BACKGROUND)
    for j, (img, mask) in enumerate(zip(images, masks)):
        img = np.asarray(img)
        mask = np.asarray(mask, dtype=bool)
        if img.shape[:2] != (h, w) or mask.shape != (h, w):
            raise ConfigError(f"preview_grid: image {j} is {img.shape} with mask {mask.shape}; "
                              f"all must be {h} x {w} like the first")
        rgb = np.repeat(img, 3, axis=2) if img.ndim == 3 and img.shape[2] == 1 else img.reshape(h, w, -1)
        x = _PAD + (j % k) * (w + _PAD)
        y = _PAD + 2 * (j // k) * (h + _PAD)
        canvas.paste(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), (x, y))
        outlined = rgb.copy()
        outlined[_outline(mask)] = (255, 0, 0)
        canvas.paste(Image.fromarray(outlined, "RGB"), (x, y + h + _PAD))
    return canvas


def write_preview(
    dataset: str | Path,
    category: str | None,
    out: str | Path,
    *,
    kinds: Sequence[str] = ("cutpaste", "scar", "texture"),
    n: int = 8,
    image_size: int = 128,
    seed: int = 0,
    textures: str | Path | None = None,
) -> list[Path]:
    """Draw synthetic anomalies on a category's training images: one grid PNG per kind.

    Reads the first ``n`` images of ``DATASET/CATEGORY/train/good``, resizes them to ``image_size``
    (bilinear), and writes ``out/<kind>.png`` (:func:`preview_grid`) for each of ``kinds``. Scar sizes
    are the paper's for 256 px images scaled by ``image_size / 256``. ``textures``: a folder of texture
    images, or None for the generated textures except the category's own. Each kind's grid is seeded
    by ``seed`` and the kind alone, so it does not depend on which other kinds are drawn.

    Returns:
        The written paths, in the order of ``kinds``.
    """
    from adx_runtime.datasets import load_split  # noqa: PLC0415  (only previews read a dataset)

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if image_size < 8:
        raise ConfigError(f"image_size must be at least 8 px, got {image_size}")
    kinds = _check_kinds(kinds)
    split = load_split(dataset, category, need_test=False)
    texture_source = None
    if "texture" in kinds:
        texture_source = (TextureSource.generated(exclude=(split.category,)) if textures is None
                          else TextureSource.from_folder(textures))
    images = [
        np.asarray(decode_image(s.path).resize((image_size, image_size), Image.Resampling.BILINEAR))
        for s in split.train[:n]
    ]
    width, height = scar_sizes(image_size)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        rng = np.random.default_rng([seed, ANOMALY_KINDS.index(kind)])
        results = []
        for img in images:
            if kind == "cutpaste":
                results.append(cutpaste(img, rng))
            elif kind == "scar":
                results.append(scar(img, rng, width=width, height=height))
            else:
                assert texture_source is not None
                results.append(texture_anomaly(img, rng, texture_source))
        path = folder / f"{kind}.png"
        preview_grid([r.image for r in results], [r.mask for r in results]).save(path)
        written.append(path)
    return written
