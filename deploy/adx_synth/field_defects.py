"""Evaluation defects drawn independently of the anomaly synthesis: scratches, cracks, pits, stains, burns.

CutPaste and PRNet learn from anomalies made by :mod:`adx_synth.anomalies`, which paints with the
demo's own defect primitives (:mod:`adx_synth.defects`). Testing them on defects painted by the same
code flatters them. This module is the other family: its shapes and its rendering are written here
and share no code with either module (``tests/test_field_defects.py`` checks the imports), so a
method is measured on defects it was not trained to recognise.

- ``scratch``: a thin anti-aliased arc or bent polyline, brighter (exposed material) or darker,
  fading out at both ends;
- ``crack``: a jagged random walk with branches, dark, tapering towards its tips;
- ``pit``: a small dark disc with a bright highlight on the rim facing the light;
- ``stain``: a soft irregular low-contrast tinted blotch: a sum of anisotropic Gaussians,
  thresholded softly, with a faint darker tide line at its edge;
- ``burn``: a brown scorch that darkens towards a charred, almost black core.

Sizes come in two scales. ``normal`` sizes a defect relative to the image, like the demo defects
(lengths in pixels at 160 px, multiplied by ``side / 160``). ``small`` gives the few-pixel defects a
megapixel camera sees, in absolute pixels whatever the image size: scratches 1-2 px wide, cracks
hairline (at most 1.2 px), pits 1-3 px across, stains 6-14 px, burns 5-12 px.

Every defect is rendered in float inside a window around it, rounded to uint8, and then every pixel
whose change is below :data:`VISIBLE_LEVELS` grey levels in all channels is put back exactly as it
was: the returned mask is exactly the set of changed pixels, and each of them changed visibly.

Imports only numpy and the standard library (and the project's error type). All randomness comes
from the ``rng`` argument: the same generator state gives the same defect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from adx_runtime.errors import ConfigError

__all__ = [
    "FIELD_DEFECT_KINDS",
    "FIELD_DEFECT_SCALES",
    "SMALL_SIZES",
    "VISIBLE_LEVELS",
    "FieldDefect",
    "apply_random_defect",
    "render_field_defect",
]

Array = np.ndarray

#: The defect kinds, in the order that fixes their seeds in the demo writer.
FIELD_DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "pit", "stain", "burn")
#: ``normal``: sized relative to the image, like the demo's defects; ``small``: a few pixels.
FIELD_DEFECT_SCALES: tuple[str, ...] = ("normal", "small")

#: A pixel is in the mask when some channel changed by at least this many grey levels (of 255).
#: About the sensor noise of the demo images: a smaller change is not something a person could see.
VISIBLE_LEVELS = 6

#: The ``small`` scale's size ranges in pixels, whatever the image size: (low, high).
SMALL_SIZES: dict[str, tuple[float, float]] = {
    "scratch_width": (1.0, 2.0),
    "crack_width": (0.8, 1.2),
    "pit_diameter": (1.0, 3.0),
    "stain_diameter": (6.0, 14.0),
    "burn_diameter": (5.0, 12.0),
}

_REFERENCE_SIDE = 160.0  # the demo's default image side: normal sizes are given for it
_MIN_SIDE = 16
_MAX_TRIES = 30
# Fewest changed pixels a defect must have, else it is drawn again (somewhere else): a normal defect
# of 2-3 pixels would be invisible at its scale; a small one is allowed to be that small.
_MIN_PIXELS = {"normal": 8, "small": 2}
_SUPERSAMPLE = 8  # pits are tiny: their disc coverage is averaged over 8 x 8 samples per pixel


@dataclass(frozen=True)
class FieldDefect:
    """One drawn defect.

    Attributes:
        image: uint8 ``(H, W, 3)``, equal to the input outside ``mask``.
        mask: bool ``(H, W)``, exactly the pixels that changed (each by ``VISIBLE_LEVELS`` or more).
        kind: one of :data:`FIELD_DEFECT_KINDS`.
        params: the drawn sizes in pixels (``width_px``, ``length_px`` or ``diameter_px``), the
            centre ``cx``/``cy`` and the contrast; for tests and reports.
    """

    image: Array
    mask: Array
    kind: str
    params: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def apply_random_defect(
    rgb: Array, rng: np.random.Generator, *, scale: str = "normal", kind: str | None = None
) -> tuple[Array, Array]:
    """Draw one field defect on a copy of ``rgb``; return ``(image, mask)``.

    Args:
        rgb: uint8 ``(H, W, 3)`` image, both sides at least 16 px; it is not modified.
        rng: every random draw comes from it, so the same state gives the same defect.
        scale: ``normal`` (relative to the image) or ``small`` (a few pixels, see the module doc).
        kind: one of :data:`FIELD_DEFECT_KINDS`; ``None`` draws one uniformly.

    Returns:
        uint8 ``(H, W, 3)`` image and bool ``(H, W)`` mask: the image differs from ``rgb`` exactly
        where the mask is set, and the mask is not empty.
    """
    defect = render_field_defect(rgb, rng, scale=scale, kind=kind)
    return defect.image, defect.mask


def render_field_defect(
    rgb: Array, rng: np.random.Generator, *, scale: str = "normal", kind: str | None = None
) -> FieldDefect:
    """:func:`apply_random_defect` that also returns the kind and the drawn sizes."""
    _check_args(rgb, rng, scale, kind)
    if kind is None:
        kind = FIELD_DEFECT_KINDS[int(rng.integers(len(FIELD_DEFECT_KINDS)))]
    h, w = rgb.shape[:2]
    painter = _PAINTERS[kind]
    for _ in range(_MAX_TRIES):
        # A defect can land where it barely shows (a dark pit on a dark wire gap): then draw another.
        y0, x0, patch, params = painter(rng, rgb, scale)
        y1, x1 = y0 + patch.shape[0], x0 + patch.shape[1]
        before = rgb[y0:y1, x0:x1]
        after = np.clip(np.rint(patch * 255.0), 0, 255).astype(np.uint8)
        diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2)
        visible = diff >= VISIBLE_LEVELS
        if int(visible.sum()) >= _MIN_PIXELS[scale]:
            break
    else:  # pragma: no cover - needs an almost uniform image the defects cannot show on
        raise ConfigError(
            f"Could not draw a visible {kind} defect on this {w} x {h} image in {_MAX_TRIES} tries: "
            "the image is probably flat black or white where the defects land."
        )
    image = rgb.copy()
    image[y0:y1, x0:x1] = np.where(visible[..., None], after, before)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = visible
    return FieldDefect(image=image, mask=mask, kind=kind, params=params)


def _check_args(rgb: object, rng: object, scale: object, kind: object) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ConfigError(f"Field defects need a uint8 (H, W, 3) RGB image, got {got}.")
    if min(rgb.shape[:2]) < _MIN_SIDE:
        raise ConfigError(f"Field defects need an image of at least {_MIN_SIDE} x {_MIN_SIDE} px, "
                          f"got {rgb.shape[1]} x {rgb.shape[0]}.")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy Generator (np.random.default_rng(seed)), "
                          f"got {type(rng).__name__}.")
    if scale not in FIELD_DEFECT_SCALES:
        raise ConfigError(f"Unknown defect scale {scale!r}. Valid scales: {', '.join(FIELD_DEFECT_SCALES)}.")
    if kind is not None and kind not in FIELD_DEFECT_KINDS:
        raise ConfigError(f"Unknown field defect kind {kind!r}. Valid kinds: {', '.join(FIELD_DEFECT_KINDS)}.")


# --------------------------------------------------------------------------------------------
# Geometry: windows, placement, coverage of lines and discs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """The part of the image a defect may touch: rows ``y0:y1``, columns ``x0:x1``."""

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def around(cls, shape: tuple[int, ...], xs: Array, ys: Array, pad: float) -> _Window:
        h, w = shape[:2]
        x0 = max(0, int(math.floor(float(np.min(xs)) - pad)))
        y0 = max(0, int(math.floor(float(np.min(ys)) - pad)))
        x1 = min(w, int(math.ceil(float(np.max(xs)) + pad)) + 1)
        y1 = min(h, int(math.ceil(float(np.max(ys)) + pad)) + 1)
        # A defect drawn off the image gets an empty window; keep one pixel so the shapes stay valid.
        return cls(y0, max(y1, y0 + 1), x0, max(x1, x0 + 1))

    def patch(self, rgb: Array) -> Array:
        """The window of ``rgb`` as float32 in 0..1, ``(h, w, 3)``."""
        return rgb[self.y0:self.y1, self.x0:self.x1].astype(np.float32) / np.float32(255.0)

    def grid(self) -> tuple[Array, Array]:
        """Image coordinates ``(xx, yy)`` of the window's pixel centres, float32 ``(h, w)``."""
        ys = np.arange(self.y0, self.y1, dtype=np.float32)
        xs = np.arange(self.x0, self.x1, dtype=np.float32)
        return np.meshgrid(xs, ys)


def _centre(rng: np.random.Generator, shape: tuple[int, ...], margin: float = 0.1) -> tuple[float, float]:
    """A point ``(x, y)`` at least ``margin`` of each side away from the border."""
    h, w = shape[:2]
    return float(rng.uniform(margin * w, (1 - margin) * w)), float(rng.uniform(margin * h, (1 - margin) * h))


def _side_scale(shape: tuple[int, ...]) -> float:
    """Normal sizes are given for a 160 px image; this is how much larger this image is (at least 1)."""
    return max(1.0, min(shape[:2]) / _REFERENCE_SIDE)


def _polyline_coverage(
    win: _Window, pts: Array, widths: Array, strengths: Array
) -> Array:
    """Max over segments of (area coverage x strength) of a polyline with varying width, ``(h, w)``.

    ``pts`` ``(K, 2)`` are ``(x, y)`` vertices; ``widths`` and ``strengths`` ``(K,)`` are
    interpolated linearly along each segment. Coverage is the distance-based box-filter estimate:
    ``clip(width / 2 + 0.5 - distance, 0, 1)``, capped at the width for lines thinner than a pixel,
    so a line of width ``w`` darkens about ``w`` pixels across whatever its sub-pixel position.
    Each segment is evaluated only in its own small box, so long lines on large images stay cheap.
    """
    alpha = np.zeros((win.y1 - win.y0, win.x1 - win.x0), dtype=np.float32)
    for k in range(len(pts) - 1):
        (ax, ay), (bx, by) = pts[k], pts[k + 1]
        pad = max(widths[k], widths[k + 1]) / 2 + 1.0
        x0 = max(win.x0, int(math.floor(min(ax, bx) - pad)))
        x1 = min(win.x1, int(math.ceil(max(ax, bx) + pad)) + 1)
        y0 = max(win.y0, int(math.floor(min(ay, by) - pad)))
        y1 = min(win.y1, int(math.ceil(max(ay, by) + pad)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        xx, yy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / seg2, 0.0, 1.0) if seg2 > 0 else np.zeros_like(xx)
        dist = np.hypot(xx - (ax + t * dx), yy - (ay + t * dy))
        width = widths[k] + t * (widths[k + 1] - widths[k])
        cover = np.clip(np.minimum(width / 2 + 0.5 - dist, np.minimum(width, 1.0)), 0.0, 1.0)
        value = cover * (strengths[k] + t * (strengths[k + 1] - strengths[k]))
        sub = alpha[y0 - win.y0:y1 - win.y0, x0 - win.x0:x1 - win.x0]
        np.maximum(sub, value, out=sub)
    return alpha


def _path_param(pts: Array) -> Array:
    """Arc length of each vertex as a fraction of the total, ``(K,)`` in 0..1."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    return s / max(float(s[-1]), 1e-6)


def _bilinear_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> Array:
    """Smooth noise of unit scale over ``shape``: a ``cells x cells`` random grid, bilinearly interpolated."""
    h, w = shape
    n = max(2, cells)
    grid = rng.standard_normal((n, n)).astype(np.float32)
    gy = np.linspace(0, n - 1, h, dtype=np.float32)
    gx = np.linspace(0, n - 1, w, dtype=np.float32)
    iy = np.minimum(gy.astype(np.int32), n - 2)
    ix = np.minimum(gx.astype(np.int32), n - 2)
    fy = (gy - iy)[:, None]
    fx = (gx - ix)[None, :]
    top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
    bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _ramp(x: Array, lo: float, hi: float) -> Array:
    """0 at ``lo``, 1 at ``hi``, a smooth (Hermite) transition between; ``lo > hi`` reverses it."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------
# The defect painters: (rng, rgb uint8, scale) -> (y0, x0, float patch 0..1, params)
# --------------------------------------------------------------------------------------------

Painter = Callable[[np.random.Generator, Array, str], tuple[int, int, Array, dict[str, float]]]


def _scratch(rng: np.random.Generator, rgb: Array, scale: str) -> tuple[int, int, Array, dict[str, float]]:
    side = min(rgb.shape[:2])
    s = _side_scale(rgb.shape)
    if scale == "small":
        width = float(rng.uniform(*SMALL_SIZES["scratch_width"]))
        length = float(rng.uniform(30.0, 160.0))
    else:
        width = float(rng.uniform(1.0, 3.0)) * s
        length = float(rng.uniform(0.15, 0.6)) * side
    length = min(length, 0.6 * side)
    cx, cy = _centre(rng, rgb.shape)
    heading = float(rng.uniform(0, 2 * np.pi))
    n_pts = max(8, int(length / max(1.5, width)))
    if rng.random() < 0.5:
        # An arc: a tool dragged along a curve. Its turn over the whole length is 0.15-1 rad.
        turn = float(rng.uniform(0.15, 1.0)) * (1 if rng.random() < 0.5 else -1)
        ang = heading + np.linspace(-turn / 2, turn / 2, n_pts)
    else:
        # A few straight runs with small kinks between: a scrape that caught on something.
        n_runs = int(rng.integers(2, 5))
        kinks = heading + np.cumsum(rng.normal(0.0, 0.2, n_runs))
        ang = kinks[np.minimum((np.arange(n_pts) * n_runs) // n_pts, n_runs - 1)]
    step = length / (n_pts - 1)
    xs = np.concatenate([[0.0], np.cumsum(step * np.cos(ang[:-1]))])
    ys = np.concatenate([[0.0], np.cumsum(step * np.sin(ang[:-1]))])
    pts = np.stack([xs - xs.mean() + cx, ys - ys.mean() + cy], axis=1)
    # Pressure fades in and out: a scratch is faint at both ends.
    t = _path_param(pts)
    contrast = float(rng.uniform(0.3, 0.7))
    strengths = contrast * np.sin(np.pi * t) ** 0.4
    win = _Window.around(rgb.shape, pts[:, 0], pts[:, 1], width / 2 + 2)
    alpha = _polyline_coverage(win, pts, np.full(len(pts), width), strengths)[..., None]
    base = win.patch(rgb)
    if rng.random() < 0.5:  # bright: the coating is scraped off and bare material shines
        out = base + alpha * (np.minimum(1.0, base * 1.5 + 0.25) - base)
    else:  # dark: a groove that holds shadow or dirt
        out = base * (1.0 - 0.8 * alpha)
    return win.y0, win.x0, out, {"width_px": width, "length_px": length, "cx": cx, "cy": cy,
                                 "contrast": contrast}


def _crack(rng: np.random.Generator, rgb: Array, scale: str) -> tuple[int, int, Array, dict[str, float]]:
    side = min(rgb.shape[:2])
    s = _side_scale(rgb.shape)
    if scale == "small":
        width = float(rng.uniform(*SMALL_SIZES["crack_width"]))
        length, step = float(rng.uniform(25.0, 120.0)), 1.5
    else:
        width = float(rng.uniform(1.0, 2.0)) * s
        length, step = float(rng.uniform(0.2, 0.6)) * side, 2.0 * s
    length = min(length, 0.6 * side)
    cx, cy = _centre(rng, rgb.shape, 0.15)
    heading = float(rng.uniform(0, 2 * np.pi))
    # The main crack grows both ways from its centre; branches leave it at a sharp angle.
    paths = [_crack_walk(rng, (cx, cy), heading, length / 2, step),
             _crack_walk(rng, (cx, cy), heading + np.pi, length / 2, step)]
    main = np.concatenate([paths[0][::-1], paths[1][1:]])
    branches = []
    for _ in range(int(rng.integers(0, 4))):
        # Branches leave from the middle two thirds, at 30-60 degrees to the crack's local direction.
        k = int(rng.integers(len(main) // 6, max(len(main) // 6 + 1, 5 * len(main) // 6)))
        root = main[k]
        off = float(rng.uniform(0.5, 1.1)) * (1 if rng.random() < 0.5 else -1)
        d = main[min(k + 1, len(main) - 1)] - main[max(k - 1, 0)]
        b_heading = math.atan2(float(d[1]), float(d[0])) + off
        branches.append(_crack_walk(rng, (float(root[0]), float(root[1])), b_heading,
                                    length * float(rng.uniform(0.15, 0.4)), step))
    depth = float(rng.uniform(0.5, 0.85))
    all_pts = np.concatenate([main, *branches]) if branches else main
    win = _Window.around(rgb.shape, all_pts[:, 0], all_pts[:, 1], width / 2 + 2)
    alpha = np.zeros((win.y1 - win.y0, win.x1 - win.x0), dtype=np.float32)
    for i, pts in enumerate([main, *branches]):
        t = _path_param(pts)
        # The main crack is widest in its middle, a branch at its root; both taper to a hairline.
        taper = np.sin(np.pi * t) ** 0.5 if i == 0 else (1.0 - t) ** 0.7
        w_line = np.maximum(0.6, width * (0.45 + 0.55 * taper)) * (1.0 if i == 0 else 0.75)
        np.maximum(alpha, _polyline_coverage(win, pts, w_line, np.full(len(pts), depth)), out=alpha)
    out = win.patch(rgb) * (1.0 - alpha[..., None])
    return win.y0, win.x0, out, {"width_px": width, "length_px": length, "cx": cx, "cy": cy,
                                 "contrast": depth, "branches": float(len(branches))}


def _crack_walk(
    rng: np.random.Generator, start: tuple[float, float], heading: float, length: float, step: float
) -> Array:
    """A jagged walk ``(K, 2)`` from ``start``: the direction jitters, kinks now and then, and is
    pulled back towards ``heading`` so the crack runs on instead of curling up."""
    n = max(2, int(length / step))
    pts = np.empty((n + 1, 2))
    pts[0] = start
    a = heading
    for i in range(n):
        a += rng.normal(0.0, 0.3) + (rng.choice([-0.7, 0.7]) if rng.random() < 0.08 else 0.0)
        a += 0.25 * math.remainder(heading - a, 2 * math.pi)
        pts[i + 1] = pts[i] + step * np.array([math.cos(a), math.sin(a)])
    return pts


def _pit(rng: np.random.Generator, rgb: Array, scale: str) -> tuple[int, int, Array, dict[str, float]]:
    s = _side_scale(rgb.shape)
    lo, hi = SMALL_SIZES["pit_diameter"] if scale == "small" else (2.0 * s, 6.0 * s)
    diameter = float(rng.uniform(lo, hi))
    r = diameter / 2
    rim = max(0.6, 0.35 * r)
    cx, cy = _centre(rng, rgb.shape)
    win = _Window.around(rgb.shape, np.array([cx]), np.array([cy]), r + rim + 1.5)
    # Coverage of the disc and of the rim ring, averaged over 8 x 8 samples per pixel: at 1-3 px
    # the distance estimate of a line is too coarse for a disc.
    ss = _SUPERSAMPLE
    offs = (np.arange(ss, dtype=np.float32) + 0.5) / ss - 0.5
    xx, yy = win.grid()
    sx = xx[..., None, None] + offs[None, None, None, :] - cx
    sy = yy[..., None, None] + offs[None, None, :, None] - cy
    dist = np.hypot(sx, sy)
    light = float(rng.uniform(0, 2 * np.pi))
    # The rim catches light on the side facing it, and the pit's wall shades the far side of the floor.
    facing = np.clip(np.cos(np.arctan2(sy, sx) - light), 0.0, 1.0)
    floor_shade = ((dist <= r) * (0.75 + 0.25 * (1 - facing))).mean(axis=(2, 3))
    ring = ((dist > r) & (dist <= r + rim)) * facing
    highlight = ring.mean(axis=(2, 3))
    depth = float(rng.uniform(0.5, 0.85))
    shine = float(rng.uniform(0.3, 0.7))
    base = win.patch(rgb)
    out = base * (1.0 - depth * floor_shade[..., None])
    out = out + (shine * highlight)[..., None] * (1.0 - out)
    return win.y0, win.x0, out, {"diameter_px": diameter, "cx": cx, "cy": cy, "contrast": depth}


def _stain(rng: np.random.Generator, rgb: Array, scale: str) -> tuple[int, int, Array, dict[str, float]]:
    side = min(rgb.shape[:2])
    if scale == "small":
        diameter = float(rng.uniform(*SMALL_SIZES["stain_diameter"]))
    else:
        diameter = float(np.exp(rng.uniform(np.log(0.1), np.log(0.35)))) * side
    R = diameter / 2
    cx, cy = _centre(rng, rgb.shape)
    win = _Window.around(rgb.shape, np.array([cx]), np.array([cy]), R + 1)
    xx, yy = win.grid()
    dx, dy = xx - cx, yy - cy
    # A sum of elongated Gaussians: 3-6 broad lobes about the centre make the body, 2-5 narrow
    # ones further out, pointing away from it, make the fingers where the liquid ran.
    field_ = np.zeros_like(xx)
    n_body, n_fingers = int(rng.integers(3, 7)), int(rng.integers(2, 6))
    for i in range(n_body + n_fingers):
        body = i < n_body
        rho = R * (0.35 * math.sqrt(float(rng.random())) if body else float(rng.uniform(0.4, 0.7)))
        phi = float(rng.uniform(0, 2 * np.pi))
        ox, oy = rho * math.cos(phi), rho * math.sin(phi)
        major = R * float(rng.uniform(0.4, 0.65) if body else rng.uniform(0.15, 0.3))
        minor = major / float(rng.uniform(1.0, 2.5) if body else rng.uniform(2.0, 4.0))
        th = float(rng.uniform(0, np.pi)) if body else phi + float(rng.normal(0.0, 0.3))
        u = (dx - ox) * math.cos(th) + (dy - oy) * math.sin(th)
        v = -(dx - ox) * math.sin(th) + (dy - oy) * math.cos(th)
        weight = float(rng.uniform(0.5, 1.0) if body else rng.uniform(0.4, 0.8))
        field_ += weight * np.exp(-0.5 * ((u / major) ** 2 + (v / minor) ** 2))
    # Fade to nothing at radius R, so the drawn diameter is a bound on the stain.
    field_ *= _ramp(np.hypot(dx, dy), R, 0.8 * R)
    field_ /= max(float(field_.max()), 1e-6)
    threshold = float(rng.uniform(0.15, 0.3))
    alpha = _ramp(field_, threshold - 0.05, threshold + 0.1) * (0.75 + 0.25 * field_)
    # Liquid that dried leaves more pigment at its edge: a faint tide line.
    tide = np.exp(-(((field_ - threshold) / 0.06) ** 2)) * float(rng.uniform(0.0, 0.5))
    contrast = float(rng.uniform(0.1, 0.25))
    tints = np.array([[0.55, 0.8, 1.3],    # yellow-brown (oil, coffee): blue absorbed most
                      [1.0, 1.0, 1.0],     # grey water mark
                      [0.6, 1.1, 1.3],     # rust
                      [1.3, 1.0, 0.7]], dtype=np.float32)  # bluish (coolant)
    absorb = tints[int(rng.integers(len(tints)))]
    amount = (contrast * np.clip(alpha + 0.5 * tide, 0.0, 1.0))[..., None]
    out = win.patch(rgb) * (1.0 - amount * absorb)
    return win.y0, win.x0, out, {"diameter_px": diameter, "cx": cx, "cy": cy, "contrast": contrast}


def _burn(rng: np.random.Generator, rgb: Array, scale: str) -> tuple[int, int, Array, dict[str, float]]:
    side = min(rgb.shape[:2])
    if scale == "small":
        diameter = float(rng.uniform(*SMALL_SIZES["burn_diameter"]))
    else:
        diameter = float(np.exp(rng.uniform(np.log(0.08), np.log(0.25)))) * side
    R = diameter / 2
    cx, cy = _centre(rng, rgb.shape)
    win = _Window.around(rgb.shape, np.array([cx]), np.array([cy]), R * 1.3 + 1)
    xx, yy = win.grid()
    h, w = xx.shape
    # The scorch front is ragged: the radius is modulated by smooth noise (30 % at most) over the window.
    ragged = 1.0 + 0.3 * np.tanh(0.6 * _bilinear_noise(rng, (h, w), 5))
    u = np.hypot(xx - cx, yy - cy) / (R * ragged)
    scorch = _ramp(u, 1.0, 0.45)   # brown: the material is darkened and reddened
    char = _ramp(u, 0.5, 0.1) * float(rng.uniform(0.7, 1.0))  # the charred core
    brown = np.array([0.62, 0.42, 0.28], dtype=np.float32) * float(rng.uniform(0.8, 1.1))
    char_col = np.array([0.07, 0.05, 0.04], dtype=np.float32)
    grain = 1.0 + 0.25 * rng.standard_normal((h, w, 1)).astype(np.float32)  # charcoal is not flat
    base = win.patch(rgb)
    out = base * (1.0 - scorch[..., None] * (1.0 - brown))
    out = out + char[..., None] * (char_col * grain - out)
    return win.y0, win.x0, out, {"diameter_px": diameter, "cx": cx, "cy": cy,
                                 "contrast": float(char.max())}


_PAINTERS: dict[str, Painter] = {
    "scratch": _scratch,
    "crack": _crack,
    "pit": _pit,
    "stain": _stain,
    "burn": _burn,
}
