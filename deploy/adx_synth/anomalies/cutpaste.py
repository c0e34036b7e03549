"""CutPaste and CutPaste-scar (Li, Sohn, Yoon, Pfister, CVPR 2021), and the classifier's training
batch."""

from __future__ import annotations

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError
from adx_synth.anomalies.arrays import Array, Synthetic, check_batch, check_image, check_range, from_pil, to_pil
from adx_synth.anomalies.jitter import jitter_all
from adx_synth.defects import loguniform


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
    image = check_image(image)
    check_range("cutpaste area", *area, minimum=0.0)
    check_range("cutpaste aspect", *aspect, minimum=1e-6)
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
    patch = jitter_all(image[sy:sy + cut_h, sx:sx + cut_w], rng, jitter)
    out = image.copy()
    out[ty:ty + cut_h, tx:tx + cut_w] = patch
    mask = np.zeros((h, w), dtype=bool)
    mask[ty:ty + cut_h, tx:tx + cut_w] = True
    return Synthetic(out, mask)


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
    image = check_image(image)
    check_range("scar width", *width, minimum=1)
    check_range("scar height", *height, minimum=1)
    check_range("scar angle", *angle)
    h, w = image.shape[:2]
    cut_w = min(int(rng.integers(int(width[0]), int(width[1]) + 1)), w)
    cut_h = min(int(rng.integers(int(height[0]), int(height[1]) + 1)), h)
    sx, sy = int(rng.integers(0, w - cut_w + 1)), int(rng.integers(0, h - cut_h + 1))
    patch = jitter_all(image[sy:sy + cut_h, sx:sx + cut_w], rng, jitter)
    deg = float(rng.uniform(angle[0], angle[1]))
    # Same size, same resampling for both: the alpha is exactly 0 or 255 where the patch landed.
    rot = to_pil(patch).rotate(deg, resample=Image.Resampling.NEAREST, expand=True)
    alpha = Image.new("L", (cut_w, cut_h), 255).rotate(deg, resample=Image.Resampling.NEAREST, expand=True)
    rot_arr = from_pil(rot, image.shape[2])
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
    images = check_batch(images)
    classes = VARIANTS[variant]
    base = [images[i] if pre_jitter <= 0 else jitter_all(images[i], rng, pre_jitter) for i in range(len(images))]
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
