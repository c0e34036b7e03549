"""Procedural industrial-inspection dataset in the MVTec AD folder layout.

Real anomaly-detection datasets cannot be downloaded everywhere (CI, air-gapped boxes), so the demo
and the tests use this generator instead. It writes texture-like categories (woven fabric, metal
mesh, wood, speckled tile) with several defect kinds each, plus an exact ground-truth mask for every
defect image::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png

Every image comes from its own random generator seeded with (seed, category, split, index), so the
output is byte-identical for the same arguments and a category does not depend on which other
categories were generated with it. Only numpy, Pillow and the standard library are used.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from adx_runtime.errors import ConfigError

__all__ = ["DEMO_CATEGORIES", "DEFECT_TYPES", "count_demo_images", "generate_demo_dataset"]

DEMO_CATEGORIES: tuple[str, ...] = ("weave", "grid", "wood", "tile")

DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "weave": ("color", "cut", "hole", "thread"),
    "grid": ("bent", "broken", "glue", "contamination"),
    "wood": ("color", "hole", "liquid", "scratch"),
    "tile": ("crack", "glue_strip", "gray_stroke", "oil"),
}

_MIN_IMAGE_SIZE = 32
# A pixel belongs to the mask when some channel changed by more than this (in 0..1 units, about
# 6 grey levels): soft-edged stains fade out, and below this the change is not visible under the
# sensor noise. Smaller changes are undone so the mask is exactly the set of changed pixels.
_MASK_THRESHOLD = 0.025
# Masks smaller than this are re-drawn: a defect of 2-3 pixels is not something a person could see.
_MIN_MASK_PIXELS = 8
_MAX_DEFECT_TRIES = 20
_SENSOR_NOISE = 0.010
# Fast PNG: level 1 is several times quicker than the default and still deterministic.
_PNG_COMPRESS_LEVEL = 1

# Defects whose changed pixels are scattered over their region; their masks get closed (see below).
_CLOSE_MASK = frozenset({("grid", "bent")})

_SPLIT_TRAIN = 0
_SPLIT_TEST_GOOD = 1
_SPLIT_FIRST_DEFECT = 2  # test/<defect k> uses split id 2 + k

Array = np.ndarray
Renderer = Callable[[np.random.Generator, int], tuple[Array, dict]]
DefectFn = Callable[[np.random.Generator, Array, dict, int], Array]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_demo_dataset(
    root: str | Path,
    categories: Sequence[str] | None = None,
    *,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 5,
    image_size: int = 160,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Write a synthetic MVTec-AD-style dataset under ``root`` and return the image counts.

    ``categories`` defaults to all of :data:`DEMO_CATEGORIES`. ``progress`` is called with 1 after
    each image is written (a defect image and its mask count as one). Existing files with the same
    names are overwritten; other files already under ``root`` are left alone.

    Returns ``{category: {"train/good": n, "test/good": n, "test/<defect>": n, ...}}``.
    """
    cats = _resolve_categories(categories)
    _check_counts(n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_per_defect)
    _check_int("image_size", image_size, minimum=_MIN_IMAGE_SIZE)
    _check_int("seed", seed, minimum=0)

    root = Path(root)
    summary: dict[str, dict[str, int]] = {}
    for category in cats:
        cat_dir = root / category
        counts: dict[str, int] = {}
        jobs: list[tuple[str, int, int]] = [
            ("good", _SPLIT_TRAIN, n_train),
            ("good", _SPLIT_TEST_GOOD, n_test_good),
        ]
        jobs += [
            (defect, _SPLIT_FIRST_DEFECT + k, n_test_per_defect)
            for k, defect in enumerate(DEFECT_TYPES[category])
        ]
        for kind, split_id, count in jobs:
            split = "train" if split_id == _SPLIT_TRAIN else "test"
            image_dir = cat_dir / split / kind
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir = cat_dir / "ground_truth" / kind
            if split_id >= _SPLIT_FIRST_DEFECT:
                mask_dir.mkdir(parents=True, exist_ok=True)
            width = max(3, len(str(count - 1)))  # MVTec uses 000.png; wider only if needed
            for index in range(count):
                _, image, mask = _render_sample(category, split_id, index, seed, image_size)
                name = f"{index:0{width}d}"
                _save_png(Image.fromarray(image, "RGB"), image_dir / f"{name}.png")
                if mask is not None:
                    _save_png(Image.fromarray(mask, "L"), mask_dir / f"{name}_mask.png")
                if progress is not None:
                    progress(1)
            counts[f"{split}/{kind}"] = count
        summary[category] = counts
    return summary


def count_demo_images(
    categories: Sequence[str] | None = None,
    *,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 5,
) -> int:
    """Return how many images :func:`generate_demo_dataset` would write (masks not counted)."""
    cats = _resolve_categories(categories)
    _check_counts(n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_per_defect)
    return sum(n_train + n_test_good + n_test_per_defect * len(DEFECT_TYPES[c]) for c in cats)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _resolve_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    if categories is None:
        return DEMO_CATEGORIES
    if isinstance(categories, str):  # a lone name, not a sequence of one-letter names
        categories = [categories]
    cats = tuple(dict.fromkeys(categories))  # drop duplicates, keep order
    valid = ", ".join(DEMO_CATEGORIES)
    if not cats:
        raise ConfigError(f"No demo categories were given. Valid categories: {valid}.")
    unknown = [c for c in cats if c not in DEFECT_TYPES]
    if unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise ConfigError(f"Unknown demo category {names}. Valid categories: {valid}.")
    return cats


def _check_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass, but True as a count is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_counts(*, n_train: int, n_test_good: int, n_test_per_defect: int) -> None:
    _check_int("n_train", n_train, minimum=1)
    _check_int("n_test_good", n_test_good, minimum=1)
    _check_int("n_test_per_defect", n_test_per_defect, minimum=1)


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------


def _sample_rng(seed: int, category: str, split_id: int, index: int) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process and would break determinism.
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8")), split_id, index])


def _render_sample(
    category: str, split_id: int, index: int, seed: int, n: int
) -> tuple[Array, Array, Array | None]:
    """Return (clean uint8 RGB, final uint8 RGB, mask uint8 or None) for one file.

    For a normal sample clean and final are the same. For a defect sample they are identical outside
    the mask, which is what makes the mask exact.
    """
    rng = _sample_rng(seed, category, split_id, index)
    clean, aux = _RENDERERS[category](rng, n)
    # Drawn before the defect so clean and defective images share it exactly.
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(_SENSOR_NOISE)
    clean_u8 = _to_uint8(clean + noise)
    if split_id < _SPLIT_FIRST_DEFECT:
        return clean_u8, clean_u8, None

    defect = DEFECT_TYPES[category][split_id - _SPLIT_FIRST_DEFECT]
    defect_fn = _DEFECTS[category][defect]
    for _ in range(_MAX_DEFECT_TRIES):
        # float32 like clean: mixed precision would round some unchanged pixels differently.
        out = defect_fn(rng, clean, aux, n).astype(np.float32, copy=False)
        changed = np.abs(out - clean).max(axis=2) > _MASK_THRESHOLD
        if int(changed.sum()) >= _MIN_MASK_PIXELS:
            break
    else:  # pragma: no cover - the defect parameters make this practically impossible
        raise RuntimeError(f"could not place a visible {category}/{defect} defect")
    out = np.where(changed[..., None], out, clean)
    mask = np.where(changed, 255, 0).astype(np.uint8)
    if (category, defect) in _CLOSE_MASK:
        # A warp leaves flat background inside the bent area unchanged, so the changed pixels form
        # a speckle; a morphological closing turns it into the region a person would outline.
        closed = Image.fromarray(mask).filter(ImageFilter.MaxFilter(5))
        mask = np.maximum(mask, np.asarray(closed.filter(ImageFilter.MinFilter(5))))
    return clean_u8, _to_uint8(out + noise), mask


def _to_uint8(img: Array) -> Array:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _pixel_grid(n: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates (x, y), cached and read-only because every image needs them."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    xx.flags.writeable = False
    yy.flags.writeable = False
    return xx, yy


def _coords(rng: np.random.Generator, n: int, max_rot_deg: float) -> tuple[Array, Array]:
    """Texture coordinates with a random small rotation and shift: every image is a new crop."""
    theta = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    ou, ov = rng.uniform(0.0, 256.0, size=2).astype(np.float32)
    xx, yy = _pixel_grid(n)
    return c * xx + s * yy + ou, -s * xx + c * yy + ov


def _noise(rng: np.random.Generator, n: int, cells_y: int, cells_x: int | None = None) -> Array:
    """Smooth value noise, unit std: a small random grid upsampled bicubically to n x n.

    Different cell counts along y and x give streaky (anisotropic) noise, e.g. fibres or grain.
    """
    cells_x = cells_y if cells_x is None else cells_x
    small = rng.standard_normal((max(2, int(cells_y)), max(2, int(cells_x)))).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((n, n), Image.Resampling.BICUBIC), np.float32)
    return (big - big.mean()) / (big.std() + 1e-6)


def _smoothstep(edge0: float | Array, edge1: float | Array, x: Array) -> Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _illumination(rng: np.random.Generator, n: int, amount: float) -> Array:
    """Global brightness jitter times a gentle low-frequency light falloff."""
    return (rng.uniform(1.0 - amount, 1.0 + amount) * (1.0 + 0.5 * amount * _noise(rng, n, 3)))[
        ..., None
    ]


def _rgb(*values: float) -> Array:
    return np.asarray(values, dtype=np.float32)


def _lerp(a: Array, b: Array, t: Array) -> Array:
    return a + (b - a) * t


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Sizes are log-uniform so small and large defects are both common. On tiny images a pixel
    # floor can exceed a fraction-of-the-image ceiling; the floor wins.
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))


def _centre(rng: np.random.Generator, n: int, margin: float = 0.15) -> tuple[float, float]:
    lo, hi = margin * n, (1.0 - margin) * n
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------------------------
# Normal textures. Each returns (float32 RGB in about 0..1, aux) where aux holds layers that
# category-specific defects need (for example where the wires of the grid are).
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
    fibre = np.where(warp_on_top, _noise(rng, n, n // 8, n), _noise(rng, n, n, n // 8))
    warp_col = _rgb(0.60, 0.50, 0.40) * rng.uniform(0.97, 1.03)
    weft_col = _rgb(0.53, 0.46, 0.39) * rng.uniform(0.97, 1.03)
    colour = np.where(warp_on_top[..., None], warp_col, weft_col)
    img = colour * (0.28 + 0.72 * height * (1.0 + 0.10 * fibre))[..., None]
    img = img * _illumination(rng, n, 0.05)
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
    cov_u = _smoothstep(half_width + 0.7, half_width - 0.7, du)  # anti-aliased wire edge
    cov_v = _smoothstep(half_width + 0.7, half_width - 0.7, dv)
    # Round wire: bright highlight in the middle; it darkens where it dives under the other wire.
    shade_u = np.sqrt(np.clip(1.0 - (du / half_width) ** 2, 0.0, 1.0))
    shade_v = np.sqrt(np.clip(1.0 - (dv / half_width) ** 2, 0.0, 1.0))
    val_u = (0.35 + 0.65 * shade_u) * (0.80 + 0.20 * np.cos(np.pi * (2 * fb - 1) + np.pi * ia))
    val_v = (0.35 + 0.65 * shade_v) * (0.80 + 0.20 * np.cos(np.pi * (2 * fa - 1) + np.pi * ib))
    u_on_top = ((ia + ib) % 2) == 0
    use_u = np.where(u_on_top, cov_u > 0.5, ~(cov_v > 0.5))
    wire_val = np.where(use_u, val_u, val_v)
    wire = np.maximum(cov_u, cov_v)
    metal = _rgb(0.70, 0.72, 0.74) * rng.uniform(0.95, 1.05)
    background = _background_grid(rng, n)
    img = _lerp(background, metal * wire_val[..., None], wire[..., None])
    img = img * _illumination(rng, n, 0.05)
    return img.astype(np.float32), {"wire": wire, "background": background, "period": period}


def _background_grid(rng: np.random.Generator, n: int) -> Array:
    level = rng.uniform(0.13, 0.17) * (1.0 + 0.15 * _noise(rng, n, 6))
    return level[..., None] * _rgb(1.0, 1.0, 1.05)


def _render_wood(rng: np.random.Generator, n: int) -> tuple[Array, dict]:
    """Planed wood: wavy growth rings, fine streaks along the grain and small dark pores."""
    scale = n / 160
    u, v = _coords(rng, n, 3.0)
    ring_spacing = 13.0 * scale * rng.uniform(0.9, 1.1)
    # Distortion varies slowly along the grain (x) and faster across it: long, gently wavy rings.
    distortion = 0.8 * _noise(rng, n, 4, 2) + 0.2 * _noise(rng, n, 8, 4)
    t = v / ring_spacing + distortion + 0.02 * u / ring_spacing * rng.uniform(-1, 1)
    ring = t - np.floor(t)
    # Late wood: a dark band that fades in slowly and ends sharply, as on a real board.
    late = _smoothstep(0.45, 0.92, ring) * _smoothstep(1.0, 0.95, ring)
    streak = _noise(rng, n, n // 2, max(2, n // 24))
    pores = _smoothstep(2.0, 2.8, _noise(rng, n, n // 3, n // 10))
    light = _rgb(0.80, 0.62, 0.42) * rng.uniform(0.96, 1.04)
    dark = _rgb(0.56, 0.37, 0.21) * rng.uniform(0.96, 1.04)
    g = np.clip(0.80 * late + 0.10 * streak, 0.0, 1.0)
    img = _lerp(light, dark, g[..., None]) * (1.0 - 0.25 * pores)[..., None]
    img = img * _illumination(rng, n, 0.05)
    return img.astype(np.float32), {}


def _render_tile(rng: np.random.Generator, n: int) -> tuple[Array, dict]:
    """Speckled ceramic tile (terrazzo-like): light base with dark grey and brown speckles."""
    base = _rgb(0.80, 0.78, 0.74) * rng.uniform(0.97, 1.03)
    fine = 1.0 + 0.035 * _noise(rng, n, n // 2)
    img = base * fine[..., None]
    grey = _smoothstep(1.7, 2.4, _noise(rng, n, n // 4))
    brown = _smoothstep(1.9, 2.6, _noise(rng, n, n // 5))
    dots = _smoothstep(2.3, 2.8, _noise(rng, n, n // 2))
    img = _lerp(img, _rgb(0.36, 0.35, 0.35), grey[..., None])
    img = _lerp(img, _rgb(0.62, 0.46, 0.36), brown[..., None])
    img = _lerp(img, _rgb(0.25, 0.25, 0.27), dots[..., None])
    img = img * _illumination(rng, n, 0.04)
    return img.astype(np.float32), {}


# --------------------------------------------------------------------------------------------
# Defect shapes: alpha maps in 0..1
# --------------------------------------------------------------------------------------------


def _blob_alpha(
    rng: np.random.Generator,
    n: int,
    radius: float,
    *,
    irregular: float = 0.2,
    soft: float = 0.0,
    aspect: float = 1.0,
    centre: tuple[float, float] | None = None,
) -> Array:
    """Irregular (random harmonics on the radius), optionally elongated and soft-edged blob."""
    cx, cy = _centre(rng, n) if centre is None else centre
    xx, yy = _pixel_grid(n)
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
    return _smoothstep(rad + edge, rad - edge, dist).astype(np.float32)


def _stroke_alpha(n: int, points: Array, width: float, blur: float = 0.0) -> Array:
    """Rasterise a polyline with anti-aliasing (draw at 4x, box-downsample), optionally blurred."""
    ss = 4
    canvas = Image.new("L", (n * ss, n * ss), 0)
    pts = [(float(x) * ss, float(y) * ss) for x, y in points]
    ImageDraw.Draw(canvas).line(pts, fill=255, width=max(1, round(width * ss)), joint="curve")
    small = canvas.resize((n, n), Image.Resampling.BOX)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, np.float32) / 255.0


def _walk(
    rng: np.random.Generator,
    n: int,
    length: float,
    wiggle: float,
    *,
    step: float = 1.5,
    start: tuple[float, float] | None = None,
    angle: float | None = None,
) -> Array:
    """Polyline of a random walk: ``wiggle`` is the std of the turn per step (radians)."""
    steps = max(2, int(length / step))
    x0, y0 = _centre(rng, n, 0.2) if start is None else start
    a0 = rng.uniform(0, 2 * np.pi) if angle is None else angle
    angles = a0 + np.cumsum(rng.normal(0.0, wiggle, steps))
    xs = x0 + np.concatenate([[0.0], np.cumsum(step * np.cos(angles))])
    ys = y0 + np.concatenate([[0.0], np.cumsum(step * np.sin(angles))])
    # Centre the walk on its start point so it stays mostly inside the image.
    xs -= (xs.max() + xs.min()) / 2 - x0
    ys -= (ys.max() + ys.min()) / 2 - y0
    return np.stack([xs, ys], axis=1)


def _bilinear(img: Array, xs: Array, ys: Array) -> Array:
    """Sample an HxWx3 image at float coordinates (clamped to the border)."""
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


def _paint(img: Array, alpha: Array, colour: Array) -> Array:
    return img + alpha[..., None] * (colour - img)


def _tint(img: Array, alpha: Array, factor: Array) -> Array:
    """Multiply by ``factor`` where alpha is 1: a stain that keeps the texture visible under it."""
    return img * (1.0 + alpha[..., None] * (factor - 1.0))


def _textured(rng: np.random.Generator, n: int, colour: Array, amount: float) -> Array:
    """A colour with a little smooth variation, so painted defects are not flat stickers."""
    return colour * (1.0 + amount * _noise(rng, n, max(2, n // 10)))[..., None]


# --------------------------------------------------------------------------------------------
# Defects. Each takes (rng, clean image, aux, n) and returns the defective float image; the mask is
# derived from the difference in _render_sample. Sizes and contrasts are drawn from wide ranges.
# --------------------------------------------------------------------------------------------


def _scaled(n: int, px: float) -> float:
    """A length given for 160 px images, scaled to n but never below 2 px."""
    return max(2.0, px * n / 160)


def _weave_color(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 5), 0.14 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.3, soft=0.35, aspect=rng.uniform(1, 2.5))
    hue = [_rgb(1.5, 0.55, 0.45), _rgb(0.5, 0.7, 1.5), _rgb(0.55, 1.3, 0.6)][rng.integers(3)]
    strength = rng.uniform(0.35, 1.0)
    return _tint(img, alpha * strength, hue)


def _weave_cut(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = _loguniform(rng, _scaled(n, 10), 0.45 * n)
    pts = _walk(rng, n, length, 0.04)
    alpha = _stroke_alpha(n, pts, rng.uniform(1.0, 2.6) * max(1.0, n / 160))
    backing = _textured(rng, n, _rgb(0.10, 0.08, 0.07), 0.2)
    return _paint(img, alpha * rng.uniform(0.55, 1.0), backing)


def _weave_hole(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 3), 0.10 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.3, aspect=rng.uniform(1, 1.8))
    # Frayed rim: a slightly larger, softer dark halo around the hole.
    rim = _blob_alpha(rng, n, r * 1.3, irregular=0.3, soft=0.25, centre=_last_centre(alpha))
    out = _tint(img, rim * 0.35, _rgb(0.4, 0.4, 0.4))
    hole = _textured(rng, n, _rgb(0.06, 0.05, 0.05) * rng.uniform(1, 3), 0.3)
    return _paint(out, alpha, hole)


def _weave_thread(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = _loguniform(rng, _scaled(n, 20), 0.7 * n)
    pts = _walk(rng, n, length, 0.10)
    width = rng.uniform(1.5, 3.0) * max(1.0, n / 160)
    alpha = _stroke_alpha(n, pts, width)
    colour = [_rgb(0.85, 0.80, 0.70), _rgb(0.25, 0.20, 0.17), _rgb(0.55, 0.25, 0.22)][
        rng.integers(3)
    ]
    return _paint(img, alpha * rng.uniform(0.6, 1.0), _textured(rng, n, colour, 0.15))


def _grid_bent(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    # Push the mesh sideways inside a Gaussian bump: the wires bend instead of moving rigidly.
    period = aux["period"]
    cx, cy = _centre(rng, n)
    sigma = _loguniform(rng, 0.35 * period, 1.0 * period)
    amp = rng.uniform(0.25, 0.6) * period
    phi = rng.uniform(0, 2 * np.pi)
    xx, yy = _pixel_grid(n)
    # Compact bump (zero beyond 2.5 sigma): a Gaussian's long tail would nudge sharp wire edges far
    # away by a fraction of a pixel and scatter thin slivers over the mask.
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (2.5 * sigma) ** 2
    bump = np.clip(1.0 - d2, 0.0, 1.0) ** 2
    return _bilinear(img, xx - amp * np.cos(phi) * bump, yy - amp * np.sin(phi) * bump)


def _grid_broken(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    # Missing wire pieces: inside a small region the wires are replaced by the background.
    period = aux["period"]
    r = _loguniform(rng, 0.35 * period, 1.3 * period)
    region = _blob_alpha(rng, n, r, irregular=0.3, aspect=rng.uniform(1, 3))
    return _paint(img, region * aux["wire"], aux["background"])


def _grid_glue(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 5), 0.14 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.35, soft=0.3, aspect=rng.uniform(1, 2))
    glue = _textured(rng, n, _rgb(0.78, 0.74, 0.55), 0.08)
    return _paint(img, alpha * rng.uniform(0.25, 0.75), glue)


def _grid_contamination(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 2.5), 0.06 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.45, aspect=rng.uniform(1, 4))
    colour = [_rgb(0.80, 0.50, 0.25), _rgb(0.95, 0.95, 0.90), _rgb(0.35, 0.45, 0.70)][
        rng.integers(3)
    ]
    return _paint(img, alpha * rng.uniform(0.6, 1.0), _textured(rng, n, colour, 0.2))


def _wood_color(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 6), 0.15 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.3, soft=0.4, aspect=rng.uniform(1, 3))
    factor = [_rgb(0.55, 0.50, 0.50), _rgb(1.25, 1.25, 1.3), _rgb(0.8, 0.9, 1.15)][
        rng.integers(3)
    ]
    return _tint(img, alpha * rng.uniform(0.4, 1.0), factor)


def _wood_hole(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 2.5), 0.08 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.15, aspect=rng.uniform(1, 1.5))
    rim = _blob_alpha(rng, n, r * 1.4, irregular=0.1, soft=0.3, centre=_last_centre(alpha))
    out = _tint(img, rim * 0.3, _rgb(0.6, 0.5, 0.45))
    hole = _textured(rng, n, _rgb(0.12, 0.07, 0.04), 0.25)
    return _paint(out, alpha * rng.uniform(0.75, 1.0), hole)


def _wood_liquid(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    # Wet patch: darker and slightly saturated, faint - one of the harder defects.
    r = _loguniform(rng, _scaled(n, 6), 0.15 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.45, soft=0.12, aspect=rng.uniform(1, 2))
    return _tint(img, alpha * rng.uniform(0.35, 1.0), _rgb(0.72, 0.68, 0.62))


def _wood_scratch(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = _loguniform(rng, _scaled(n, 12), 0.6 * n)
    pts = _walk(rng, n, length, 0.015)
    alpha = _stroke_alpha(n, pts, rng.uniform(0.8, 2.2) * max(1.0, n / 160))
    colour = [_rgb(0.95, 0.85, 0.70), _rgb(0.30, 0.18, 0.10)][rng.integers(2)]
    return _paint(img, alpha * rng.uniform(0.35, 0.9), colour)


def _tile_crack(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = _loguniform(rng, _scaled(n, 15), 0.7 * n)
    pts = _walk(rng, n, length, 0.35, step=_scaled(n, 2))
    width = rng.uniform(1.0, 2.0) * max(1.0, n / 160)
    alpha = _stroke_alpha(n, pts, width)
    if rng.random() < 0.5:  # a side branch from somewhere along the crack
        start = pts[rng.integers(len(pts))]
        branch = _walk(rng, n, length * rng.uniform(0.2, 0.5), 0.35, step=_scaled(n, 2),
                       start=(float(start[0]), float(start[1])))
        branch -= branch[0] - start  # _walk re-centres; pin the branch to its start again
        alpha = np.maximum(alpha, _stroke_alpha(n, branch, width * 0.7))
    return _paint(img, alpha * rng.uniform(0.5, 0.95), _rgb(0.12, 0.11, 0.11))


def _tile_glue_strip(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = _loguniform(rng, 0.2 * n, 0.9 * n)
    pts = _walk(rng, n, length, 0.03, step=_scaled(n, 3))
    width = _loguniform(rng, _scaled(n, 5), _scaled(n, 18))
    alpha = _stroke_alpha(n, pts, width, blur=width * 0.15)
    glue = _textured(rng, n, _rgb(0.90, 0.86, 0.62), 0.1)
    return _paint(img, alpha * rng.uniform(0.35, 0.85), glue)


def _tile_gray_stroke(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    length = _loguniform(rng, _scaled(n, 15), 0.6 * n)
    pts = _walk(rng, n, length, 0.08, step=_scaled(n, 2))
    width = _loguniform(rng, _scaled(n, 2), _scaled(n, 7))
    alpha = _stroke_alpha(n, pts, width, blur=width * 0.25)
    return _paint(img, alpha * rng.uniform(0.35, 0.8), _rgb(0.45, 0.45, 0.47))


def _tile_oil(rng: np.random.Generator, img: Array, aux: dict, n: int) -> Array:
    r = _loguniform(rng, _scaled(n, 5), 0.15 * n)
    alpha = _blob_alpha(rng, n, r, irregular=0.4, soft=0.3, aspect=rng.uniform(1, 2.2))
    return _tint(img, alpha * rng.uniform(0.3, 0.8), _rgb(0.55, 0.50, 0.40))


def _last_centre(alpha: Array) -> tuple[float, float]:
    """Centroid of an alpha map, to put a rim around a blob that was just drawn."""
    w = alpha.sum()
    if w <= 0:
        n = alpha.shape[0]
        return n / 2, n / 2
    xx, yy = _pixel_grid(alpha.shape[0])
    return float((xx * alpha).sum() / w), float((yy * alpha).sum() / w)


_RENDERERS: dict[str, Renderer] = {
    "weave": _render_weave,
    "grid": _render_grid,
    "wood": _render_wood,
    "tile": _render_tile,
}

_DEFECTS: dict[str, dict[str, DefectFn]] = {
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
