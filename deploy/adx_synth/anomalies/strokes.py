"""Thin curved marks and clusters of small specks: anomalies that are *paint*, not moved texture.

CutPaste, its scar and the Perlin texture anomaly all fill their region with image content (the
image's own, jittered, or a foreign texture). Many real surface defects are instead a change of
shade along a thin curve (a line of darker or brighter material) or a few pixels wide (a dent, a
speck of dirt). These two give a model that kind of example:

- :func:`stroke`: a quadratic Bezier curve, tapering towards both ends, anti-aliased, painted darker
  or brighter than the pixels under it with a slight tint;
- :func:`specks`: one to a few small soft discs close together, each darker or brighter.

Sizes are fractions of the image side, so they scale with it. Same contract as the rest of the
package: ``(H, W, C)`` uint8 in, :class:`Synthetic` out, every pixel outside ``mask`` byte-identical
to the input (coverage below :data:`MASK_COVERAGE` is put back exactly), every draw from ``rng``.
"""

from __future__ import annotations

import numpy as np

from adx_synth.anomalies.arrays import Array, Synthetic, check_image, check_range, to_uint8

#: A pixel whose painted coverage is below this keeps its original bytes and stays out of the mask:
#: a faint anti-aliased fringe is not an anomaly anyone could mark.
MASK_COVERAGE = 0.3


def _shade(pixels: Array, rng: np.random.Generator, strength: float) -> Array:
    """Pixels made darker (towards 0) or brighter (towards 255) by ``strength``, with a slight tint."""
    tint = 1.0 + rng.uniform(-0.15, 0.15, size=pixels.shape[-1])  # per channel: not a pure grey change
    if rng.random() < 0.5:
        return pixels * (1.0 - strength * tint)
    return pixels + (255.0 - pixels) * strength * tint


def _paint(image: Array, coverage: Array, rng: np.random.Generator, strength: float) -> Synthetic:
    """Blend a shaded copy in with ``coverage`` (H, W) in [0, 1]; the mask is where coverage counts."""
    mask = coverage >= MASK_COVERAGE
    src = image.astype(np.float64)
    target = _shade(src, rng, strength)
    a = coverage[..., None]
    out = to_uint8(src * (1.0 - a) + target * a)
    out[~mask] = image[~mask]  # the contract: outside the mask nothing changes, not even by rounding
    return Synthetic(out, mask)


def _disc_coverage(yy: Array, xx: Array, cy: Array, cx: Array, r: Array) -> Array:
    """Max over discs (centres cy, cx, radii r: 1-D) of a one-pixel anti-aliased edge, at (yy, xx)."""
    d = np.sqrt((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2)
    return np.clip(r + 0.5 - d, 0.0, 1.0).max(axis=-1)


def stroke(
    image: Array,
    rng: np.random.Generator,
    *,
    width: tuple[float, float] = (0.008, 0.03),
    length: tuple[float, float] = (0.15, 0.5),
    bend: float = 0.35,
    strength: tuple[float, float] = (0.3, 0.7),
) -> Synthetic:
    """A thin curved mark, darker or brighter than the surface under it.

    The curve is a quadratic Bezier from a random point, in a random direction, of length a fraction
    of the image side uniform in ``length``; its middle control point is pushed sideways by up to
    ``bend`` times the length (0 = straight). Its width (fraction of the side, uniform in ``width``,
    at least 1.5 px) is full in the middle and tapers to a third at the ends. The pixels under it
    are shaded by a fraction uniform in ``strength`` (darker or brighter, equally likely, tinted
    slightly per channel) with anti-aliased coverage.
    """
    image = check_image(image)
    check_range("stroke width", *width, minimum=0.0)
    check_range("stroke length", *length, minimum=0.0)
    check_range("stroke strength", *strength, minimum=0.0)
    h, w = image.shape[:2]
    side = float(min(h, w))
    half = max(0.75, float(rng.uniform(*width)) * side / 2)
    n_len = max(2.0, float(rng.uniform(*length)) * side)
    p0 = np.array([rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
    theta = float(rng.uniform(0, 2 * np.pi))
    p2 = p0 + n_len * np.array([np.sin(theta), np.cos(theta)])
    normal = np.array([np.cos(theta), -np.sin(theta)])
    p1 = (p0 + p2) / 2 + normal * n_len * float(rng.uniform(-bend, bend))
    # Points every half pixel along the curve: their discs make a continuous stroke.
    t = np.linspace(0.0, 1.0, int(np.ceil(2 * n_len * (1 + bend))) + 2)
    pts = ((1 - t) ** 2)[:, None] * p0 + (2 * (1 - t) * t)[:, None] * p1 + (t ** 2)[:, None] * p2
    # At least 0.75 px: the pixel nearest any curve point (p0 is inside the image) is then covered
    # by more than MASK_COVERAGE, so the mask is never empty.
    radii = np.maximum(0.75, half * (1 / 3 + 2 / 3 * np.sin(np.pi * t)))
    # Only the window around the curve is computed (the curve may leave the image: it is cut there).
    y0, x0 = (max(0, int(np.floor(pts[:, i].min() - half - 2))) for i in (0, 1))
    y1, x1 = min(h, int(np.ceil(pts[:, 0].max() + half + 2))), min(w, int(np.ceil(pts[:, 1].max() + half + 2)))
    coverage = np.zeros((h, w))
    if y1 > y0 and x1 > x0:
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        coverage[y0:y1, x0:x1] = _disc_coverage(yy, xx, pts[:, 0], pts[:, 1], radii)
    return _paint(image, coverage, rng, float(rng.uniform(*strength)))


def specks(
    image: Array,
    rng: np.random.Generator,
    *,
    radius: tuple[float, float] = (0.004, 0.02),
    count: tuple[int, int] = (1, 6),
    spread: float = 0.08,
    strength: tuple[float, float] = (0.3, 0.7),
) -> Synthetic:
    """A small cluster of soft discs (dents, specks of dirt), darker or brighter than the surface.

    ``count`` discs (inclusive range) of radius a fraction of the side uniform in ``radius`` (at
    least 0.75 px, so that every disc covers a pixel), scattered within ``spread`` times the side of a random centre, all shaded
    the same way by a fraction uniform in ``strength``.
    """
    image = check_image(image)
    check_range("specks radius", *radius, minimum=0.0)
    check_range("specks count", *count, minimum=1)
    check_range("specks strength", *strength, minimum=0.0)
    h, w = image.shape[:2]
    side = float(min(h, w))
    n = int(rng.integers(int(count[0]), int(count[1]) + 1))
    centre = np.array([rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
    offsets = rng.uniform(-spread, spread, size=(n, 2)) * side
    cy = np.clip(centre[0] + offsets[:, 0], 0, h - 1)
    cx = np.clip(centre[1] + offsets[:, 1], 0, w - 1)
    r = np.maximum(0.75, rng.uniform(*radius, size=n) * side)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coverage = _disc_coverage(yy, xx, cy, cx, r)
    return _paint(image, coverage, rng, float(rng.uniform(*strength)))
