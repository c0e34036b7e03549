"""Normal images of the texture categories, and the noise and lighting helpers they share.

Each renderer takes ``(rng, n)`` and returns ``(image, aux)``: a float32 ``(n, n, 3)`` RGB image in
about 0..1, and a dict of layers that the category's defects need (for example where the wires of
the grid are). Every draw comes from ``rng``, so one generator seeded per file gives one image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = [
    "RENDERERS",
    "illumination",
    "lerp",
    "pixel_grid",
    "rgb",
    "smoothstep",
    "value_noise",
]

Array = np.ndarray
Renderer = Callable[[np.random.Generator, int], tuple[Array, dict]]


# --------------------------------------------------------------------------------------------
# Shared helpers (the defects use them too)
# --------------------------------------------------------------------------------------------


def pixel_grid(shape: tuple[int, int]) -> tuple[Array, Array]:
    """Pixel coordinates ``(xx, yy)``, each float32 ``(H, W)``, for ``shape = (H, W)``.

    Cached and read-only because every image needs them.
    """
    return _pixel_grid(int(shape[0]), int(shape[1]))


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx.flags.writeable = False
    yy.flags.writeable = False
    return xx, yy


def value_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells_y: int, cells_x: int | None = None
) -> Array:
    """Smooth value noise with unit std, float32 ``(H, W)``: a small random grid upsampled bicubically.

    ``cells_y`` x ``cells_x`` random values (at least 2 each) span the image. Different counts along
    y and x give streaky (anisotropic) noise, e.g. fibres or wood grain.
    """
    h, w = shape
    cells_x = cells_y if cells_x is None else cells_x
    small = rng.standard_normal((max(2, int(cells_y)), max(2, int(cells_x)))).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return (big - big.mean()) / (big.std() + 1e-6)


def smoothstep(edge0: float | Array, edge1: float | Array, x: Array) -> Array:
    """0 below ``edge0``, 1 above ``edge1``, a cubic ramp between (edges may be reversed)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def illumination(rng: np.random.Generator, n: int, amount: float) -> Array:
    """``(n, n, 1)`` gain: global brightness jitter times a gentle low-frequency light falloff."""
    return (rng.uniform(1.0 - amount, 1.0 + amount)
            * (1.0 + 0.5 * amount * value_noise(rng, (n, n), 3)))[..., None]


def rgb(*values: float) -> Array:
    """A colour (or per-channel factor) as a float32 ``(3,)`` array."""
    return np.asarray(values, dtype=np.float32)


def lerp(a: Array, b: Array, t: Array) -> Array:
    return a + (b - a) * t


def _coords(rng: np.random.Generator, n: int, max_rot_deg: float) -> tuple[Array, Array]:
    """Texture coordinates with a random small rotation and shift: every image is a new crop."""
    theta = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    ou, ov = rng.uniform(0.0, 256.0, size=2).astype(np.float32)
    xx, yy = pixel_grid((n, n))
    return c * xx + s * yy + ou, -s * xx + c * yy + ov


# --------------------------------------------------------------------------------------------
# Category renderers
# --------------------------------------------------------------------------------------------


def _render_weave(rng: np.random.Generator, n: int) -> tuple[Array, dict]:
    """Plain-weave fabric: warp and weft threads alternating over and under, with fibre streaks."""
    period = max(5.0, 9.0 * n / 160) * rng.uniform(0.97, 1.03)
    u, v = _coords(rng, n, 4.0)
    a, b = u / period, v / period
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    warp_on_top = ((ia + ib) % 2) == 0
    # Across a thread it is round (sqrt of sine); along it, it dips where it goes under.
    sa, sb = np.sin(np.pi * fa), np.sin(np.pi * fb)
    h_warp = np.sqrt(sa) * (0.55 + 0.45 * sb)
    h_weft = np.sqrt(sb) * (0.55 + 0.45 * sa)
    height = np.where(warp_on_top, h_warp, h_weft)
    fibre = np.where(
        warp_on_top, value_noise(rng, (n, n), n // 8, n), value_noise(rng, (n, n), n, n // 8)
    )
    warp_col = rgb(0.60, 0.50, 0.40) * rng.uniform(0.97, 1.03)
    weft_col = rgb(0.53, 0.46, 0.39) * rng.uniform(0.97, 1.03)
    colour = np.where(warp_on_top[..., None], warp_col, weft_col)
    img = colour * (0.28 + 0.72 * height * (1.0 + 0.10 * fibre))[..., None]
    img = img * illumination(rng, n, 0.05)
    return img.astype(np.float32), {"period": period}


def _render_grid(rng: np.random.Generator, n: int) -> tuple[Array, dict]:
    """Woven metal wire mesh over a dark background."""
    period = max(8.0, 16.0 * n / 160) * rng.uniform(0.98, 1.02)
    half_width = 0.17 * period
    u, v = _coords(rng, n, 3.0)
    a, b = u / period, v / period
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    du, dv = np.abs(fa - 0.5) * period, np.abs(fb - 0.5) * period
    cov_u = smoothstep(half_width + 0.7, half_width - 0.7, du)  # anti-aliased wire edge
    cov_v = smoothstep(half_width + 0.7, half_width - 0.7, dv)
    # Round wire: bright highlight in the middle; it darkens where it dives under the other wire.
    shade_u = np.sqrt(np.clip(1.0 - (du / half_width) ** 2, 0.0, 1.0))
    shade_v = np.sqrt(np.clip(1.0 - (dv / half_width) ** 2, 0.0, 1.0))
    val_u = (0.35 + 0.65 * shade_u) * (0.80 + 0.20 * np.cos(np.pi * (2 * fb - 1) + np.pi * ia))
    val_v = (0.35 + 0.65 * shade_v) * (0.80 + 0.20 * np.cos(np.pi * (2 * fa - 1) + np.pi * ib))
    u_on_top = ((ia + ib) % 2) == 0
    use_u = np.where(u_on_top, cov_u > 0.5, ~(cov_v > 0.5))
    wire_val = np.where(use_u, val_u, val_v)
    wire = np.maximum(cov_u, cov_v)
    metal = rgb(0.70, 0.72, 0.74) * rng.uniform(0.95, 1.05)
    background = _background_grid(rng, n)
    img = lerp(background, metal * wire_val[..., None], wire[..., None])
    img = img * illumination(rng, n, 0.05)
    return img.astype(np.float32), {"wire": wire, "background": background, "period": period}


def _background_grid(rng: np.random.Generator, n: int) -> Array:
    level = rng.uniform(0.13, 0.17) * (1.0 + 0.15 * value_noise(rng, (n, n), 6))
    return level[..., None] * rgb(1.0, 1.0, 1.05)


def _render_wood(rng: np.random.Generator, n: int) -> tuple[Array, dict]:
    """Planed wood: wavy growth rings, fine streaks along the grain and small dark pores."""
    scale = n / 160
    u, v = _coords(rng, n, 3.0)
    ring_spacing = 13.0 * scale * rng.uniform(0.9, 1.1)
    # Distortion varies slowly along the grain (x) and faster across it: long, gently wavy rings.
    distortion = 0.8 * value_noise(rng, (n, n), 4, 2) + 0.2 * value_noise(rng, (n, n), 8, 4)
    t = v / ring_spacing + distortion + 0.02 * u / ring_spacing * rng.uniform(-1, 1)
    ring = t - np.floor(t)
    # Late wood: a dark band that fades in slowly and ends sharply, as on a real board.
    late = smoothstep(0.45, 0.92, ring) * smoothstep(1.0, 0.95, ring)
    streak = value_noise(rng, (n, n), n // 2, max(2, n // 24))
    pores = smoothstep(2.0, 2.8, value_noise(rng, (n, n), n // 3, n // 10))
    light = rgb(0.80, 0.62, 0.42) * rng.uniform(0.96, 1.04)
    dark = rgb(0.56, 0.37, 0.21) * rng.uniform(0.96, 1.04)
    g = np.clip(0.80 * late + 0.10 * streak, 0.0, 1.0)
    img = lerp(light, dark, g[..., None]) * (1.0 - 0.25 * pores)[..., None]
    img = img * illumination(rng, n, 0.05)
    return img.astype(np.float32), {}


def _render_tile(rng: np.random.Generator, n: int) -> tuple[Array, dict]:
    """Speckled ceramic tile (terrazzo-like): light base with dark grey and brown speckles."""
    base = rgb(0.80, 0.78, 0.74) * rng.uniform(0.97, 1.03)
    fine = 1.0 + 0.035 * value_noise(rng, (n, n), n // 2)
    img = base * fine[..., None]
    grey = smoothstep(1.7, 2.4, value_noise(rng, (n, n), n // 4))
    brown = smoothstep(1.9, 2.6, value_noise(rng, (n, n), n // 5))
    dots = smoothstep(2.3, 2.8, value_noise(rng, (n, n), n // 2))
    img = lerp(img, rgb(0.36, 0.35, 0.35), grey[..., None])
    img = lerp(img, rgb(0.62, 0.46, 0.36), brown[..., None])
    img = lerp(img, rgb(0.25, 0.25, 0.27), dots[..., None])
    img = img * illumination(rng, n, 0.04)
    return img.astype(np.float32), {}


#: Category name -> renderer of its normal images. The order is the default category order.
RENDERERS: dict[str, Renderer] = {
    "weave": _render_weave,
    "grid": _render_grid,
    "wood": _render_wood,
    "tile": _render_tile,
}
