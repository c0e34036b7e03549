"""Defect shapes: alpha masks, strokes, warps and fills, and the defects of each texture category.

The public primitives work on any image size and any ``(H, W, 3)`` float image in 0..1, so anomaly
synthesis (CutPaste, PRNet) can reuse them on real images:

- shapes as alpha maps, float32 ``(H, W)`` in 0..1: :func:`blob_alpha`, :func:`stroke_alpha`
  (along a polyline such as :func:`random_walk`);
- ways to apply an alpha map: :func:`paint` (cover with a colour or texture), :func:`tint`
  (multiply, the texture stays visible), with :func:`textured_fill` for a colour that is not flat;
- geometry: :func:`bilinear_sample`, :func:`bump_warp`, :func:`alpha_centroid`.

Coordinates are pixels, ``x`` along the width and ``y`` down the height, ``(0, 0)`` at the centre
of the top-left pixel. All randomness comes from the ``rng`` argument.

The per-category defect functions at the bottom take ``(rng, clean image, aux, n)`` and return the
defective float image; the writer derives the exact mask from the difference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from adx_synth.textures import pixel_grid, rgb, smoothstep, value_noise

__all__ = [
    "CATEGORY_DEFECTS",
    "alpha_centroid",
    "bilinear_sample",
    "blob_alpha",
    "bump_warp",
    "loguniform",
    "paint",
    "random_centre",
    "random_walk",
    "stroke_alpha",
    "textured_fill",
    "tint",
]

Array = np.ndarray
DefectFn = Callable[[np.random.Generator, Array, dict, int], Array]

# Polylines are drawn this many times larger, then box-downsampled: anti-aliased edges.
_SUPERSAMPLE = 4


# --------------------------------------------------------------------------------------------
# Random placement and sizes
# --------------------------------------------------------------------------------------------


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A size drawn log-uniformly from ``[lo, hi]``, so small and large defects are both common.

    On tiny images a pixel floor ``lo`` can exceed a fraction-of-the-image ceiling ``hi``; then the
    floor wins and ``lo`` is returned.
    """
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))


def random_centre(
    rng: np.random.Generator, shape: tuple[int, int], margin: float = 0.15
) -> tuple[float, float]:
    """A point ``(x, y)`` drawn uniformly at least ``margin`` (a fraction of each side) from the border."""
    h, w = shape
    x = float(rng.uniform(margin * w, (1.0 - margin) * w))
    y = float(rng.uniform(margin * h, (1.0 - margin) * h))
    return x, y


# --------------------------------------------------------------------------------------------
# Shapes: alpha maps (H, W) in 0..1
# --------------------------------------------------------------------------------------------


def blob_alpha(
    rng: np.random.Generator,
    shape: tuple[int, int],
    radius: float,
    *,
    irregular: float = 0.2,
    soft: float = 0.0,
    aspect: float = 1.0,
    centre: tuple[float, float] | None = None,
) -> Array:
    """An irregular, optionally elongated and soft-edged blob: float32 ``(H, W)`` alpha in 0..1.

    Args:
        shape: ``(H, W)`` of the alpha map.
        radius: mean radius in pixels.
        irregular: std of the random harmonics (orders 2 to 5) added to the radius; 0 is an ellipse.
        soft: width of the fading edge as a fraction of ``radius`` (at least 0.6 px, anti-aliased).
        aspect: length over width of the blob, oriented at a random angle.
        centre: ``(x, y)`` in pixels; default :func:`random_centre`.
    """
    cx, cy = random_centre(rng, shape) if centre is None else centre
    xx, yy = pixel_grid(shape)
    dx, dy = xx - cx, yy - cy
    phi = rng.uniform(0, np.pi)
    c, s = np.float32(np.cos(phi)), np.float32(np.sin(phi))
    x_r = (c * dx + s * dy) / np.float32(np.sqrt(aspect))
    y_r = (-s * dx + c * dy) * np.float32(np.sqrt(aspect))
    dist = np.sqrt(x_r * x_r + y_r * y_r)
    ang = np.arctan2(y_r, x_r)
    k = np.arange(2, 6, dtype=np.float32)
    amps = rng.normal(0.0, irregular, size=4).astype(np.float32) / (k - 1)
    phases = rng.uniform(0, 2 * np.pi, size=4).astype(np.float32)
    wobble = np.zeros_like(ang)
    for kk, amp, ph in zip(k, amps, phases):  # 4 harmonics, each vectorised over the image
        wobble += amp * np.cos(kk * ang + ph)
    rad = radius * np.clip(1.0 + wobble, 0.4, 1.8)
    edge = max(0.6, soft * radius)  # 0.6 px at least: anti-aliased rather than jagged
    return smoothstep(rad + edge, rad - edge, dist).astype(np.float32)


def stroke_alpha(shape: tuple[int, int], points: Array, width: float, blur: float = 0.0) -> Array:
    """A polyline drawn as an anti-aliased line: float32 ``(H, W)`` alpha in 0..1.

    Args:
        shape: ``(H, W)`` of the alpha map.
        points: ``(K, 2)`` vertices ``(x, y)`` in pixels; they may lie outside the image.
        width: line width in pixels.
        blur: std in pixels of a Gaussian blur applied after drawing (soft-edged smears).
    """
    h, w = shape
    ss = _SUPERSAMPLE
    canvas = Image.new("L", (w * ss, h * ss), 0)
    pts = [(float(x) * ss, float(y) * ss) for x, y in points]
    ImageDraw.Draw(canvas).line(pts, fill=255, width=max(1, round(width * ss)), joint="curve")
    small = canvas.resize((w, h), Image.Resampling.BOX)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, np.float32) / 255.0


def random_walk(
    rng: np.random.Generator,
    shape: tuple[int, int],
    length: float,
    wiggle: float,
    *,
    step: float = 1.5,
    start: tuple[float, float] | None = None,
    angle: float | None = None,
) -> Array:
    """Vertices ``(K, 2)`` as ``(x, y)`` of a random walk about ``length`` pixels long.

    The direction turns by a normal draw with std ``wiggle`` (radians) at every ``step`` pixels:
    0.02 is an almost straight scratch, 0.35 a jagged crack. The walk is shifted so that its
    bounding box is centred on ``start`` (default :func:`random_centre` with a 0.2 margin), which
    keeps it mostly inside the image; ``angle`` is the initial direction (default random).
    """
    steps = max(2, int(length / step))
    x0, y0 = random_centre(rng, shape, 0.2) if start is None else start
    a0 = rng.uniform(0, 2 * np.pi) if angle is None else angle
    angles = a0 + np.cumsum(rng.normal(0.0, wiggle, steps))
    xs = x0 + np.concatenate([[0.0], np.cumsum(step * np.cos(angles))])
    ys = y0 + np.concatenate([[0.0], np.cumsum(step * np.sin(angles))])
    xs -= (xs.max() + xs.min()) / 2 - x0
    ys -= (ys.max() + ys.min()) / 2 - y0
    return np.stack([xs, ys], axis=1)


def alpha_centroid(alpha: Array) -> tuple[float, float]:
    """Centre of mass ``(x, y)`` of an ``(H, W)`` alpha map (the image centre if it is empty).

    Used to put a rim around a blob that was just drawn.
    """
    h, w = alpha.shape
    total = alpha.sum()
    if total <= 0:
        return w / 2, h / 2
    xx, yy = pixel_grid((h, w))
    return float((xx * alpha).sum() / total), float((yy * alpha).sum() / total)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def bilinear_sample(img: Array, xs: Array, ys: Array) -> Array:
    """Sample an ``(H, W, C)`` image at float pixel coordinates; the result is ``S + (C,)``.

    ``xs`` and ``ys`` have any one shape ``S``. Coordinates are clamped to ``[0, W - 1.001]`` and
    ``[0, H - 1.001]``, so points on or beyond the last row or column read it blended with 0.1 % of
    its neighbour (kept as it is: the published demo data depend on it).
    """
    h, w = img.shape[:2]
    xs = np.clip(xs, 0, w - 1.001)
    ys = np.clip(ys, 0, h - 1.001)
    x0 = xs.astype(np.int32)
    y0 = ys.astype(np.int32)
    fx = (xs - x0)[..., None]
    fy = (ys - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def bump_warp(
    img: Array, centre: tuple[float, float], radius: float, amplitude: float, angle: float
) -> Array:
    """Push an ``(H, W, C)`` image sideways inside a round bump; returns the warped ``(H, W, C)`` copy.

    The shift is ``amplitude`` pixels at ``centre`` in direction ``angle`` (radians) and falls to
    zero at ``radius`` as ``(1 - d^2 / radius^2)^2``: straight lines bend instead of moving rigidly.
    The support is compact because a long tail (a Gaussian's) would nudge sharp edges far away by a
    fraction of a pixel and scatter thin slivers over the defect's mask.
    """
    cx, cy = centre
    xx, yy = pixel_grid(img.shape[:2])
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2
    bump = np.clip(1.0 - d2, 0.0, 1.0) ** 2
    inside = bump > 0  # resample only there: every other pixel stays exactly as it was
    b = bump[inside]
    out = img.copy()
    out[inside] = bilinear_sample(
        img, xx[inside] - amplitude * np.cos(angle) * b, yy[inside] - amplitude * np.sin(angle) * b
    )
    return out


# --------------------------------------------------------------------------------------------
# Applying an alpha map
# --------------------------------------------------------------------------------------------


def paint(img: Array, alpha: Array, colour: Array) -> Array:
    """Cover ``img`` ``(H, W, 3)`` with ``colour`` (``(3,)`` or ``(H, W, 3)``) where ``alpha`` ``(H, W)`` is 1."""
    return img + alpha[..., None] * (colour - img)


def tint(img: Array, alpha: Array, factor: Array) -> Array:
    """Multiply ``img`` ``(H, W, 3)`` by ``factor`` (``(3,)``) where ``alpha`` ``(H, W)`` is 1.

    A stain that keeps the texture visible under it.
    """
    return img * (1.0 + alpha[..., None] * (factor - 1.0))


def textured_fill(
    rng: np.random.Generator, shape: tuple[int, int], colour: Array, amount: float
) -> Array:
    """``colour`` ``(3,)`` with smooth brightness variation of relative std ``amount``: ``(H, W, 3)``.

    Painted defects filled with it are not flat stickers.
    """
    h, w = shape
    return colour * (1.0 + amount * value_noise(rng, shape, max(2, h // 10), max(2, w // 10)))[
        ..., None
    ]


# --------------------------------------------------------------------------------------------
# Defects of the texture categories. Sizes and contrasts are drawn from wide ranges.
# --------------------------------------------------------------------------------------------


def _scaled(n: int, px: float) -> float:
    """A length given for 160 px images, scaled to n but never below 2 px."""
    return max(2.0, px * n / 160)


def _weave_color(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 5), 0.14 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.3, soft=0.35, aspect=rng.uniform(1, 2.5))
    hue = [rgb(1.5, 0.55, 0.45), rgb(0.5, 0.7, 1.5), rgb(0.55, 1.3, 0.6)][rng.integers(3)]
    strength = rng.uniform(0.35, 1.0)
    return tint(img, alpha * strength, hue)


def _weave_cut(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = loguniform(rng, _scaled(n, 10), 0.45 * n)
    pts = random_walk(rng, (n, n), length, 0.04)
    alpha = stroke_alpha((n, n), pts, rng.uniform(1.0, 2.6) * max(1.0, n / 160))
    backing = textured_fill(rng, (n, n), rgb(0.10, 0.08, 0.07), 0.2)
    return paint(img, alpha * rng.uniform(0.55, 1.0), backing)


def _weave_hole(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 3), 0.10 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.3, aspect=rng.uniform(1, 1.8))
    # Frayed rim: a slightly larger, softer dark halo around the hole.
    rim = blob_alpha(rng, (n, n), r * 1.3, irregular=0.3, soft=0.25, centre=alpha_centroid(alpha))
    out = tint(img, rim * 0.35, rgb(0.4, 0.4, 0.4))
    hole = textured_fill(rng, (n, n), rgb(0.06, 0.05, 0.05) * rng.uniform(1, 3), 0.3)
    return paint(out, alpha, hole)


def _weave_thread(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = loguniform(rng, _scaled(n, 20), 0.7 * n)
    pts = random_walk(rng, (n, n), length, 0.10)
    width = rng.uniform(1.5, 3.0) * max(1.0, n / 160)
    alpha = stroke_alpha((n, n), pts, width)
    colour = [rgb(0.85, 0.80, 0.70), rgb(0.25, 0.20, 0.17), rgb(0.55, 0.25, 0.22)][
        rng.integers(3)
    ]
    return paint(img, alpha * rng.uniform(0.6, 1.0), textured_fill(rng, (n, n), colour, 0.15))


def _grid_bent(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    period = aux["period"]
    cx, cy = random_centre(rng, (n, n))
    sigma = loguniform(rng, 0.35 * period, 1.0 * period)
    amp = rng.uniform(0.25, 0.6) * period
    phi = rng.uniform(0, 2 * np.pi)
    return bump_warp(img, (cx, cy), 2.5 * sigma, amp, phi)


def _grid_broken(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    # Missing wire pieces: inside a small region the wires are replaced by the background.
    period = aux["period"]
    r = loguniform(rng, 0.35 * period, 1.3 * period)
    region = blob_alpha(rng, (n, n), r, irregular=0.3, aspect=rng.uniform(1, 3))
    return paint(img, region * aux["wire"], aux["background"])


def _grid_glue(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 5), 0.14 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.35, soft=0.3, aspect=rng.uniform(1, 2))
    glue = textured_fill(rng, (n, n), rgb(0.78, 0.74, 0.55), 0.08)
    return paint(img, alpha * rng.uniform(0.25, 0.75), glue)


def _grid_contamination(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 2.5), 0.06 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.45, aspect=rng.uniform(1, 4))
    colour = [rgb(0.80, 0.50, 0.25), rgb(0.95, 0.95, 0.90), rgb(0.35, 0.45, 0.70)][
        rng.integers(3)
    ]
    return paint(img, alpha * rng.uniform(0.6, 1.0), textured_fill(rng, (n, n), colour, 0.2))


def _wood_color(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 6), 0.15 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.3, soft=0.4, aspect=rng.uniform(1, 3))
    factor = [rgb(0.55, 0.50, 0.50), rgb(1.25, 1.25, 1.3), rgb(0.8, 0.9, 1.15)][rng.integers(3)]
    return tint(img, alpha * rng.uniform(0.4, 1.0), factor)


def _wood_hole(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 2.5), 0.08 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.15, aspect=rng.uniform(1, 1.5))
    rim = blob_alpha(rng, (n, n), r * 1.4, irregular=0.1, soft=0.3, centre=alpha_centroid(alpha))
    out = tint(img, rim * 0.3, rgb(0.6, 0.5, 0.45))
    hole = textured_fill(rng, (n, n), rgb(0.12, 0.07, 0.04), 0.25)
    return paint(out, alpha * rng.uniform(0.75, 1.0), hole)


def _wood_liquid(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    # Wet patch: darker and slightly saturated, faint - one of the harder defects.
    r = loguniform(rng, _scaled(n, 6), 0.15 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.45, soft=0.12, aspect=rng.uniform(1, 2))
    return tint(img, alpha * rng.uniform(0.35, 1.0), rgb(0.72, 0.68, 0.62))


def _wood_scratch(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = loguniform(rng, _scaled(n, 12), 0.6 * n)
    pts = random_walk(rng, (n, n), length, 0.015)
    alpha = stroke_alpha((n, n), pts, rng.uniform(0.8, 2.2) * max(1.0, n / 160))
    colour = [rgb(0.95, 0.85, 0.70), rgb(0.30, 0.18, 0.10)][rng.integers(2)]
    return paint(img, alpha * rng.uniform(0.35, 0.9), colour)


def _tile_crack(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = loguniform(rng, _scaled(n, 15), 0.7 * n)
    pts = random_walk(rng, (n, n), length, 0.35, step=_scaled(n, 2))
    width = rng.uniform(1.0, 2.0) * max(1.0, n / 160)
    alpha = stroke_alpha((n, n), pts, width)
    if rng.random() < 0.5:  # a side branch from somewhere along the crack
        start = pts[rng.integers(len(pts))]
        branch = random_walk(rng, (n, n), length * rng.uniform(0.2, 0.5), 0.35,
                             step=_scaled(n, 2), start=(float(start[0]), float(start[1])))
        branch -= branch[0] - start  # random_walk re-centres; pin the branch to its start again
        alpha = np.maximum(alpha, stroke_alpha((n, n), branch, width * 0.7))
    return paint(img, alpha * rng.uniform(0.5, 0.95), rgb(0.12, 0.11, 0.11))


def _tile_glue_strip(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = loguniform(rng, 0.2 * n, 0.9 * n)
    pts = random_walk(rng, (n, n), length, 0.03, step=_scaled(n, 3))
    width = loguniform(rng, _scaled(n, 5), _scaled(n, 18))
    alpha = stroke_alpha((n, n), pts, width, blur=width * 0.15)
    glue = textured_fill(rng, (n, n), rgb(0.90, 0.86, 0.62), 0.1)
    return paint(img, alpha * rng.uniform(0.35, 0.85), glue)


def _tile_gray_stroke(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = loguniform(rng, _scaled(n, 15), 0.6 * n)
    pts = random_walk(rng, (n, n), length, 0.08, step=_scaled(n, 2))
    width = loguniform(rng, _scaled(n, 2), _scaled(n, 7))
    alpha = stroke_alpha((n, n), pts, width, blur=width * 0.25)
    return paint(img, alpha * rng.uniform(0.35, 0.8), rgb(0.45, 0.45, 0.47))


def _tile_oil(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = loguniform(rng, _scaled(n, 5), 0.15 * n)
    alpha = blob_alpha(rng, (n, n), r, irregular=0.4, soft=0.3, aspect=rng.uniform(1, 2.2))
    return tint(img, alpha * rng.uniform(0.3, 0.8), rgb(0.55, 0.50, 0.40))


#: Category -> defect name -> defect function. The order of the names fixes each defect's seed.
CATEGORY_DEFECTS: dict[str, dict[str, DefectFn]] = {
    "weave": {
        "color": _weave_color,
        "cut": _weave_cut,
        "hole": _weave_hole,
        "thread": _weave_thread,
    },
    "grid": {
        "bent": _grid_bent,
        "broken": _grid_broken,
        "glue": _grid_glue,
        "contamination": _grid_contamination,
    },
    "wood": {
        "color": _wood_color,
        "hole": _wood_hole,
        "liquid": _wood_liquid,
        "scratch": _wood_scratch,
    },
    "tile": {
        "crack": _tile_crack,
        "glue_strip": _tile_glue_strip,
        "gray_stroke": _tile_gray_stroke,
        "oil": _tile_oil,
    },
}
