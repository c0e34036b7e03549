"""Perlin noise and the thresholded Perlin masks DRAEM pastes foreign textures through."""

from __future__ import annotations

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError
from adx_synth.anomalies.arrays import Array
from adx_synth.defects import blob_alpha


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
