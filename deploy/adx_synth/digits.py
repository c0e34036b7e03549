"""Handwritten-looking digits in the MVTec AD layout, for one-class experiments (normal = one digit).

RIAD reports image AUROC on MNIST with one digit as the normal class and every other digit as
anomalous. MNIST cannot be downloaded everywhere, so :func:`generate_digits` draws MNIST-like
images itself: white anti-aliased strokes on black, 8-bit grayscale, 28 px by default::

    root/digits/train/good/000.png      the normal digit only
    root/digits/test/good/000.png       the normal digit
    root/digits/test/digit_0/000.png    one folder per other digit

There is no ``ground_truth/`` folder: a whole image is the anomaly, and the runtime skips pixel
metrics (and says so).

Each digit has a stroke skeleton (lines, arcs and Bezier curves in a unit box, with a few style
variants such as a flagged 1 or an open 4) whose key points are jittered, then bent by a smooth
wobble, rotated (+-15 degrees), sheared, stretched, and drawn with a random pen width that varies
along the stroke. Nothing reads a font file, so the output is the same on every machine.

:func:`write_sklearn_digits` writes scikit-learn's bundled 8x8 digits into the same layout: an
independent check that no generator setting was tuned on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError, DependencyError
from adx_synth.mvtec import check_int, file_stem, sample_rng, save_png

__all__ = ["MIN_DIGITS_IMAGE_SIZE", "digit_folder", "generate_digits", "render_digit", "write_sklearn_digits"]

#: The smallest image side the digit generator draws legibly.
MIN_DIGITS_IMAGE_SIZE = 16

Array = np.ndarray
Stroke = Array  # (K, 2) points (x, y) in glyph units: x right, y down, the digit in about [-0.5, 0.5]

_SPLIT_TRAIN = 0
_SPLIT_TEST_GOOD = 1
_SPLIT_FIRST_DIGIT = 2  # test/digit_d uses split id 2 + d, whichever digit is normal
# Seeds depend on this tag, not on the folder name: renaming the category keeps the images.
_SEED_TAG = "digits"

# MNIST fits each digit into a 20x20 box of a 28x28 image.
_HEIGHT_RANGE = (0.62, 0.75)  # digit height / image side
_MAX_WIDTH = 0.80  # digit width / image side, at most
_PEN_RANGE_28 = (1.9, 4.2)  # pen width in pixels of a 28 px image (log-uniform)

_SKLEARN_TRAIN_FRACTION = 2 / 3


def digit_folder(digit: int) -> str:
    """The test folder of an anomalous digit: ``digit_0`` ... ``digit_9``."""
    return f"digit_{digit}"


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_digits(
    root: str | Path,
    *,
    normal_digit: int = 1,
    n_train: int,
    n_test_good: int,
    n_test_per_digit: int,
    image_size: int = 28,
    seed: int = 0,
    category: str = "digits",
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write a one-class digits category under ``root/category`` and return its image counts.

    ``train/good`` and ``test/good`` hold ``normal_digit``; ``test/digit_<d>`` holds
    ``n_test_per_digit`` images of each other digit. Images are ``(image_size, image_size)``
    grayscale PNG (mode ``L``). Each file has its own generator seeded with (seed, split, index),
    so the output is byte-identical for the same arguments and the images of an anomalous digit
    do not depend on which digit is normal. ``progress`` is called with 1 after each image.

    Returns ``{"train/good": n, "test/good": n, "test/digit_<d>": n, ...}``.
    """
    check_int("normal_digit", normal_digit, minimum=0, maximum=9)
    check_int("n_train", n_train, minimum=1)
    check_int("n_test_good", n_test_good, minimum=1)
    check_int("n_test_per_digit", n_test_per_digit, minimum=1)
    check_int("image_size", image_size, minimum=MIN_DIGITS_IMAGE_SIZE)
    check_int("seed", seed, minimum=0)
    _check_category(category)

    jobs = [("train", "good", _SPLIT_TRAIN, normal_digit, n_train),
            ("test", "good", _SPLIT_TEST_GOOD, normal_digit, n_test_good)]
    jobs += [("test", digit_folder(d), _SPLIT_FIRST_DIGIT + d, d, n_test_per_digit)
             for d in range(10) if d != normal_digit]
    counts: dict[str, int] = {}
    for split, kind, split_id, digit, count in jobs:
        folder = Path(root) / category / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = sample_rng(seed, _SEED_TAG, split_id, index)
            image = render_digit(rng, digit, image_size)
            save_png(Image.fromarray(image, "L"), folder / f"{file_stem(index, count)}.png")
            if progress is not None:
                progress(1)
        counts[f"{split}/{kind}"] = count
    return counts


def render_digit(rng: np.random.Generator, digit: int, size: int = 28) -> Array:
    """One handwritten-looking ``digit``: uint8 ``(size, size)``, white (255) ink on black (0)."""
    check_int("digit", digit, minimum=0, maximum=9)
    strokes = _SKELETONS[digit](rng)
    strokes = _deform(rng, strokes)
    strokes = _fit_to_image(rng, strokes, size)
    pen = math.exp(rng.uniform(*np.log(_PEN_RANGE_28))) * size / 28
    # MNIST's edges are soft (it was downsampled): the ramp spans about a pixel and a half at 28 px.
    soft = rng.uniform(1.0, 1.8) * size / 28
    ink = np.zeros((size, size), np.float64)
    for stroke in strokes:
        radii = _pen_pressure(rng, stroke, pen / 2)
        ink = np.maximum(ink, _stroke_coverage(stroke, radii, size, soft))
    return np.clip(np.rint(ink * 255.0), 0, 255).astype(np.uint8)


def write_sklearn_digits(
    root: str | Path,
    *,
    normal_digit: int = 1,
    image_size: int = 28,
    category: str = "sklearn_digits",
    seed: int = 0,
) -> dict[str, int]:
    """Write scikit-learn's 1797 bundled 8x8 digits into the layout of :func:`generate_digits`.

    Values 0..16 are scaled to 0..255 and upsampled bilinearly to ``image_size``. A seeded random
    2/3 of the ``normal_digit`` images go to ``train/good``, the rest to ``test/good``; every other
    digit goes to ``test/digit_<d>``. Needs scikit-learn (the ``eval`` extra).

    Returns ``{"train/good": n, "test/good": n, "test/digit_<d>": n, ...}``.
    """
    check_int("normal_digit", normal_digit, minimum=0, maximum=9)
    check_int("image_size", image_size, minimum=8)
    check_int("seed", seed, minimum=0)
    _check_category(category)
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise DependencyError(
            "write_sklearn_digits needs scikit-learn, which is not installed. "
            "Install it with: pip install 'adexport[eval]' (or pip install scikit-learn)."
        ) from exc
    data = load_digits()
    images, labels = data.images, data.target

    normal = np.flatnonzero(labels == normal_digit)
    normal = normal[sample_rng(seed, category, _SPLIT_TRAIN, 0).permutation(len(normal))]
    n_train = round(len(normal) * _SKLEARN_TRAIN_FRACTION)
    groups = [("train", "good", np.sort(normal[:n_train])), ("test", "good", np.sort(normal[n_train:]))]
    groups += [("test", digit_folder(d), np.flatnonzero(labels == d))
               for d in range(10) if d != normal_digit]
    counts: dict[str, int] = {}
    for split, kind, indices in groups:
        folder = Path(root) / category / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(indices):
            values = Image.fromarray((images[idx] * (255.0 / 16.0)).astype(np.float32), "F")
            big = np.asarray(values.resize((image_size, image_size), Image.Resampling.BILINEAR))
            pixels = np.clip(np.rint(big), 0, 255).astype(np.uint8)
            save_png(Image.fromarray(pixels, "L"), folder / f"{file_stem(i, len(indices))}.png")
        counts[f"{split}/{kind}"] = len(indices)
    return counts


def _check_category(category: object) -> None:
    if not isinstance(category, str) or not category or category in (".", "..") \
            or "/" in category or "\\" in category:
        raise ConfigError(f"category must be a plain folder name such as 'digits', got {category!r}.")


# --------------------------------------------------------------------------------------------
# Strokes in glyph units
# --------------------------------------------------------------------------------------------


def _arc(cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float) -> Stroke:
    """Elliptic arc; angles in degrees with y down, so increasing angles run clockwise on screen."""
    k = max(6, int(abs(end_deg - start_deg) / 10) + 1)
    t = np.deg2rad(np.linspace(start_deg, end_deg, k))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bezier(*ctrl: tuple[float, float], k: int = 14) -> Stroke:
    """Cubic (4 control points) or quadratic (3) Bezier curve."""
    p = np.asarray(ctrl, np.float64)
    t = np.linspace(0.0, 1.0, k)[:, None]
    if len(p) == 3:
        return (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def _line(*pts: tuple[float, float], k: int = 6) -> Stroke:
    """Polyline through ``pts``, each leg subdivided so later bending stays smooth."""
    p = np.asarray(pts, np.float64)
    t = np.linspace(0.0, 1.0, k)[:-1, None]
    legs = [a + (b - a) * t for a, b in zip(p[:-1], p[1:])]
    return np.concatenate([*legs, p[-1:]], axis=0)


def _join(*parts: Stroke) -> Stroke:
    """One pen stroke made of consecutive parts (each starts where the previous one ended)."""
    return np.concatenate([parts[0], *(p[1:] for p in parts[1:])], axis=0)


def _pt(stroke: Stroke, i: int) -> tuple[float, float]:
    return float(stroke[i, 0]), float(stroke[i, 1])


def _zero(rng: np.random.Generator) -> list[Stroke]:
    rx, ry = rng.uniform(0.2, 0.32), rng.uniform(0.42, 0.5)
    start = rng.uniform(-120, -60)
    return [_arc(rng.normal(0, 0.02), 0.0, rx, ry, start, start + rng.uniform(345, 385))]


def _one(rng: np.random.Generator) -> list[Stroke]:
    top = (rng.normal(0.03, 0.03), -0.5)
    bottom = (rng.normal(-0.03, 0.03), 0.5)
    bow = rng.normal(0, 0.03)  # a slightly curved down-stroke
    stem = _bezier(top, (top[0] + bow, -0.1), (bottom[0] + bow, 0.2), bottom, k=10)
    style = rng.random()
    if style < 0.62:
        return [stem]
    # A flag at the top, sometimes a base as well.
    flag = _line((top[0] - rng.uniform(0.12, 0.24), -0.5 + rng.uniform(0.12, 0.28)), top, k=4)
    if style < 0.88:
        return [_join(flag, stem)]
    half = rng.uniform(0.12, 0.22)
    base = _line((bottom[0] - half, 0.5 + rng.normal(0, 0.02)), (bottom[0] + half, 0.5), k=4)
    return [_join(flag, stem), base]


def _two(rng: np.random.Generator) -> list[Stroke]:
    r = rng.uniform(0.22, 0.3)
    cy = -0.5 + rng.uniform(0.2, 0.28)
    top = _arc(0.0, cy, r, rng.uniform(0.2, 0.28), rng.uniform(190, 215), rng.uniform(365, 395))
    corner = (rng.uniform(-0.32, -0.2), 0.5 + rng.normal(0, 0.02))
    end = _pt(top, -1)
    neck = _bezier(end, (end[0] - 0.05, end[1] + 0.2), (corner[0] + 0.15, corner[1] - 0.2), corner)
    if rng.random() < 0.25:  # a small loop at the corner, as many people write it
        loop = _arc(corner[0] + 0.06, corner[1] - 0.05, 0.07, 0.05, 160, -110)
        neck = _join(neck, loop)
    base = _line(_pt(neck, -1), (rng.uniform(0.22, 0.34), 0.5 + rng.normal(0, 0.03)), k=5)
    return [_join(top, neck, base)]


def _three(rng: np.random.Generator) -> list[Stroke]:
    mid = rng.uniform(-0.06, 0.04)  # where the two bowls meet
    upper_r = (rng.uniform(0.2, 0.27), (mid + 0.5) / 2)
    lower_r = (rng.uniform(0.24, 0.31), (0.5 - mid) / 2)
    upper = _arc(0.0, -0.5 + upper_r[1], *upper_r, rng.uniform(195, 220), 450)
    lower = _arc(0.0, mid + lower_r[1], *lower_r, 270, rng.uniform(495, 525))
    # The pen returns to a middle tip, a little left of the bowls' ends, then sets off again.
    tip = (rng.uniform(-0.12, 0.02), mid)
    return [_join(upper, _line(_pt(upper, -1), tip, k=3), _line(tip, _pt(lower, 0), k=3), lower)]


def _four(rng: np.random.Generator) -> list[Stroke]:
    bar_y = rng.uniform(0.05, 0.22)
    stem_x = rng.uniform(0.06, 0.18)
    right = (rng.uniform(0.26, 0.34), bar_y + rng.normal(0, 0.02))
    if rng.random() < 0.5:  # closed: a diagonal from the top of the stem
        left = (rng.uniform(-0.34, -0.26), bar_y)
        first = _line((stem_x, -0.5), left, right, k=6)
        stem = _line((stem_x, -0.5), (stem_x + rng.normal(0, 0.03), 0.5), k=8)
    else:  # open: a separate down-stroke on the left
        left = (rng.uniform(-0.3, -0.2), bar_y)
        first = _line((rng.uniform(-0.26, -0.1), -0.5), left, right, k=6)
        stem = _line((stem_x, rng.uniform(-0.42, -0.28)), (stem_x + rng.normal(0, 0.03), 0.5), k=8)
    return [first, stem]


def _five(rng: np.random.Generator) -> list[Stroke]:
    cy = rng.uniform(0.16, 0.24)
    r = (rng.uniform(0.24, 0.31), 0.5 - cy)
    bowl = _arc(0.0, cy, *r, rng.uniform(205, 225), rng.uniform(490, 520))
    corner = (rng.uniform(-0.24, -0.12), -0.5)
    stem = _line(corner, _pt(bowl, 0), k=5)
    bar = _line(corner, (rng.uniform(0.2, 0.32), -0.5 + rng.normal(0, 0.03)), k=5)
    return [_join(stem, bowl), bar]


def _six(rng: np.random.Generator) -> list[Stroke]:
    cy = rng.uniform(0.15, 0.24)
    rx, ry = rng.uniform(0.22, 0.3), 0.5 - cy
    start = (rng.uniform(0.1, 0.26), -0.5)
    # Down the left side into the loop, entering it at its leftmost point heading down.
    entry = _bezier(start, (-0.15, -0.45), (-rx, cy - 0.3), (-rx, cy))
    loop = _arc(0.0, cy, rx, ry, 180, rng.uniform(-195, -160))
    return [_join(entry, loop)]


def _seven(rng: np.random.Generator) -> list[Stroke]:
    left = (rng.uniform(-0.32, -0.2), -0.5 + rng.normal(0, 0.03))
    corner = (rng.uniform(0.24, 0.32), -0.5)
    foot = (rng.uniform(-0.12, 0.06), 0.5)
    bend = rng.normal(0, 0.05)
    down = _bezier(corner, (corner[0] - 0.05 + bend, -0.1), (foot[0] + bend, 0.25), foot, k=10)
    strokes = [_join(_line(left, corner, k=5), down)]
    if rng.random() < 0.2:  # crossed 7
        y = rng.uniform(-0.05, 0.08)
        x = float(np.interp(y, down[:, 1], down[:, 0]))
        strokes.append(_line((x - 0.14, y), (x + 0.14, y + rng.normal(0, 0.02)), k=4))
    return strokes


def _eight(rng: np.random.Generator) -> list[Stroke]:
    # Two closed loops that touch in the middle, the lower one usually wider.
    mid = rng.uniform(-0.08, 0.02)
    up_c, up_r = (rng.normal(0, 0.02), (mid - 0.5) / 2), (rng.uniform(0.16, 0.24), (mid + 0.5) / 2)
    lo_c, lo_r = (rng.normal(0, 0.02), (mid + 0.5) / 2), (rng.uniform(0.22, 0.3), (0.5 - mid) / 2)
    a0, a1 = rng.uniform(-20, 20), rng.uniform(150, 210)
    return [_arc(*up_c, *up_r, a0, a0 + rng.uniform(355, 375)),
            _arc(*lo_c, *lo_r, a1, a1 + rng.uniform(355, 375))]


def _nine(rng: np.random.Generator) -> list[Stroke]:
    cy = rng.uniform(-0.28, -0.2)
    rx, ry = rng.uniform(0.2, 0.28), cy + 0.5
    start = rng.uniform(-10, 20)
    # The loop is drawn anticlockwise from its right side, then the stem goes down from there.
    loop = _arc(0.0, cy, rx, ry, start, start - rng.uniform(350, 375))
    top = (rx, cy)
    if rng.random() < 0.7:
        stem = _bezier(top, (rx, cy + 0.3), (rx * 0.7 + rng.normal(0, 0.05), 0.3),
                       (rng.uniform(0.02, 0.2), 0.5), k=10)
    else:  # a curved tail ending on the left
        stem = _bezier(top, (rx + 0.02, 0.25), (0.15, 0.5), (rng.uniform(-0.25, -0.1), 0.45), k=10)
    return [_join(loop, _line(_pt(loop, -1), top, k=2), stem)]


_SKELETONS: dict[int, Callable[[np.random.Generator], list[Stroke]]] = {
    0: _zero, 1: _one, 2: _two, 3: _three, 4: _four,
    5: _five, 6: _six, 7: _seven, 8: _eight, 9: _nine,
}


# --------------------------------------------------------------------------------------------
# Deformation, placement and drawing
# --------------------------------------------------------------------------------------------


def _deform(rng: np.random.Generator, strokes: list[Stroke]) -> list[Stroke]:
    """A smooth wobble (two random sine waves per axis), then a random affine map."""
    amp = rng.uniform(0.0, 0.03)
    freq = rng.uniform(0.6, 1.8, size=(2, 2, 2))  # (axis, wave, along x|y)
    phase = rng.uniform(0, 2 * np.pi, size=(2, 2))
    theta = np.deg2rad(rng.uniform(-15, 15))
    shear = rng.uniform(-0.3, 0.3)
    sx = rng.uniform(0.75, 1.15)
    c, s = math.cos(theta), math.sin(theta)
    # Stretch width, shear (slant), then rotate: x' = R @ Sh @ S @ x.
    m = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, 1.0])
    out = []
    for p in strokes:
        q = p.copy()
        for axis in range(2):
            arg = 2 * np.pi * (p @ freq[axis].T) + phase[axis]  # (K, 2 waves)
            q[:, axis] += amp * np.sin(arg).sum(axis=1)
        out.append(q @ m.T)
    return out


def _fit_to_image(rng: np.random.Generator, strokes: list[Stroke], size: int) -> list[Stroke]:
    """Scale the digit to a random MNIST-like height and centre it, in pixel units."""
    pts = np.concatenate(strokes, axis=0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = np.maximum(hi - lo, 1e-6)
    scale = min(rng.uniform(*_HEIGHT_RANGE) * size / extent[1], _MAX_WIDTH * size / extent[0])
    shift = rng.normal(0.0, 0.025 * size, size=2)
    centre = np.array([size / 2, size / 2]) + shift
    return [(p - (lo + hi) / 2) * scale + centre for p in strokes]


def _pen_pressure(rng: np.random.Generator, stroke: Stroke, radius: float) -> Array:
    """``(K,)`` pen radius along a stroke: +-15 % slow variation with the distance drawn."""
    seg = np.sqrt((np.diff(stroke, axis=0) ** 2).sum(axis=1))
    dist = np.concatenate([[0.0], np.cumsum(seg)]) / max(float(seg.sum()), 1e-6)
    return radius * (1.0 + rng.uniform(0, 0.15) * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * dist
                                                          + rng.uniform(0, 2 * np.pi)))


def _stroke_coverage(stroke: Stroke, radii: Array, size: int, soft: float) -> Array:
    """``(size, size)`` coverage in 0..1 of a polyline with varying pen radius.

    A signed distance to the stroke (distance to the nearest segment minus the local radius) ramps
    linearly over ``soft`` pixels: anti-aliased and without any supersampling.
    """
    best = np.full((size, size), np.inf)
    reach = float(radii.max()) + soft  # beyond this from the segments the coverage is 0
    for lo in range(0, len(stroke) - 1, 16):
        a, b = stroke[lo:lo + 16], stroke[lo + 1:lo + 17]
        ra, rb = radii[lo:lo + 16], radii[lo + 1:lo + 17]
        a, ra = a[: len(b)], ra[: len(b)]
        # Only the pixels near these segments: large images stay fast.
        (x0, y0), (x1, y1) = np.minimum(a.min(0), b.min(0)), np.maximum(a.max(0), b.max(0))
        c0, c1 = max(0, int(x0 - reach)), min(size, int(x1 + reach) + 1)
        r0, r1 = max(0, int(y0 - reach)), min(size, int(y1 + reach) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        xs, ys = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5, indexing="xy")
        px = np.stack([xs, ys], axis=-1)[..., None, :]  # (h, w, 1, 2)
        ab = b - a
        length2 = np.maximum((ab**2).sum(axis=1), 1e-12)
        t = np.clip(((px - a) * ab).sum(axis=-1) / length2, 0.0, 1.0)  # (h, w, S)
        d = np.sqrt((((a + t[..., None] * ab) - px) ** 2).sum(axis=-1))
        window = best[r0:r1, c0:c1]
        np.minimum(window, (d - (ra + t * (rb - ra))).min(axis=-1), out=window)
    return np.clip(0.5 - best / soft, 0.0, 1.0)
