"""Colour jitter as torchvision's ``ColorJitter``, in numpy (CutPaste jitters every patch)."""

from __future__ import annotations

import numpy as np

from adx_runtime.errors import ConfigError
from adx_synth.anomalies.arrays import Array, check_image, to_uint8


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
    image = check_image(image)
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
    return to_uint8(x)


def jitter_all(image: Array, rng: np.random.Generator, amount: float) -> Array:
    """ColorJitter with all four amounts ``amount``, as CutPaste jitters its patches."""
    if amount < 0 or amount > 0.5:
        raise ConfigError(f"jitter must be in [0, 0.5] (it is also the hue shift, a fraction of a turn), got {amount}")
    return _jitter(image, rng, (amount, amount, amount, amount))
