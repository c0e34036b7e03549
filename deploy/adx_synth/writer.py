"""Writing the demo dataset: MVTec AD folder layout, per-file seeding, exact masks, PNG files.

::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png

Every image comes from its own random generator seeded with (seed, category, split, index), so the
output is byte-identical for the same arguments and a category does not depend on which other
categories were generated with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from adx_runtime.errors import ConfigError
from adx_synth.defects import CATEGORY_DEFECTS
from adx_synth.digits import MIN_DIGITS_IMAGE_SIZE, generate_digits
from adx_synth.mvtec import check_int, file_stem, sample_rng, save_png
from adx_synth.textures import RENDERERS

__all__ = [
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "EXTRA_CATEGORIES",
    "count_demo_images",
    "generate_demo_dataset",
]

#: The texture categories, written when no categories are named.
DEMO_CATEGORIES: tuple[str, ...] = tuple(RENDERERS)

#: Defect kinds of each texture category, in the order that fixes their seeds.
DEFECT_TYPES: dict[str, tuple[str, ...]] = {c: tuple(CATEGORY_DEFECTS[c]) for c in DEMO_CATEGORIES}

#: Categories written only when named: handwritten-like digits (see :mod:`adx_synth.digits`),
#: one normal digit and every other digit as anomalous, without masks.
EXTRA_CATEGORIES: tuple[str, ...] = ("digits",)
_DIGITS = "digits"
_DIGITS_NORMAL = 1  # RIAD's one-class MNIST experiment: normal = the digit 1
_DIGITS_OTHERS = 9

_MIN_IMAGE_SIZE = 32
# A pixel belongs to the mask when some channel changed by more than this (in 0..1 units, about
# 6 grey levels): soft-edged stains fade out, and below this the change is not visible under the
# sensor noise. Smaller changes are undone so the mask is exactly the set of changed pixels.
_MASK_THRESHOLD = 0.025
# Masks smaller than this are re-drawn: a defect of 2-3 pixels is not something a person could see.
_MIN_MASK_PIXELS = 8
_MAX_DEFECT_TRIES = 20
_SENSOR_NOISE = 0.010

# Defects whose changed pixels are scattered over their region; their masks get closed (see below).
_CLOSE_MASK = frozenset({("grid", "bent")})

_SPLIT_TRAIN = 0
_SPLIT_TEST_GOOD = 1
_SPLIT_FIRST_DEFECT = 2  # test/<defect k> uses split id 2 + k

Array = np.ndarray


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

    ``categories`` defaults to all of :data:`DEMO_CATEGORIES`; :data:`EXTRA_CATEGORIES` are written
    when named (for ``digits``: the digit 1 is normal and ``n_test_per_defect`` images of each other
    digit are the anomalies). ``progress`` is called with 1 after each image is written (a defect
    image and its mask count as one). Existing files with the same names are overwritten; other
    files already under ``root`` are left alone.

    Returns ``{category: {"train/good": n, "test/good": n, "test/<defect>": n, ...}}``.
    """
    cats = _resolve_categories(categories)
    _check_counts(n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_per_defect)
    if all(c == _DIGITS for c in cats):
        check_int("image_size", image_size, minimum=MIN_DIGITS_IMAGE_SIZE)
    elif _DIGITS in cats:  # digits alone could be smaller: say which categories set the floor
        check_int("image_size (for the texture categories)", image_size, minimum=_MIN_IMAGE_SIZE)
    else:
        check_int("image_size", image_size, minimum=_MIN_IMAGE_SIZE)
    check_int("seed", seed, minimum=0)

    root = Path(root)
    summary: dict[str, dict[str, int]] = {}
    for category in cats:
        if category == _DIGITS:
            summary[category] = generate_digits(
                root, normal_digit=_DIGITS_NORMAL, n_train=n_train, n_test_good=n_test_good,
                n_test_per_digit=n_test_per_defect, image_size=image_size, seed=seed,
                category=category, progress=progress,
            )
            continue
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
            for index in range(count):
                _, image, mask = _render_sample(category, split_id, index, seed, image_size)
                name = file_stem(index, count)
                save_png(Image.fromarray(image, "RGB"), image_dir / f"{name}.png")
                if mask is not None:
                    save_png(Image.fromarray(mask, "L"), mask_dir / f"{name}_mask.png")
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
    n_kinds = {c: _DIGITS_OTHERS if c == _DIGITS else len(DEFECT_TYPES[c]) for c in cats}
    return sum(n_train + n_test_good + n_test_per_defect * n_kinds[c] for c in cats)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _resolve_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    if categories is None:
        return DEMO_CATEGORIES
    if isinstance(categories, str):  # a lone name, not a sequence of one-letter names
        categories = [categories]
    cats = tuple(dict.fromkeys(categories))  # drop duplicates, keep order
    valid = f"{', '.join(DEMO_CATEGORIES)} (the default set), and {', '.join(EXTRA_CATEGORIES)}"
    if not cats:
        raise ConfigError(f"No demo categories were given. Valid categories: {valid}.")
    unknown = [c for c in cats if c not in DEFECT_TYPES and c not in EXTRA_CATEGORIES]
    if unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise ConfigError(f"Unknown demo category {names}. Valid categories: {valid}.")
    return cats


def _check_counts(*, n_train: int, n_test_good: int, n_test_per_defect: int) -> None:
    check_int("n_train", n_train, minimum=1)
    check_int("n_test_good", n_test_good, minimum=1)
    check_int("n_test_per_defect", n_test_per_defect, minimum=1)


# --------------------------------------------------------------------------------------------
# One texture sample
# --------------------------------------------------------------------------------------------


def _render_sample(
    category: str, split_id: int, index: int, seed: int, n: int
) -> tuple[Array, Array, Array | None]:
    """Return (clean uint8 RGB, final uint8 RGB, mask uint8 or None) for one file.

    For a normal sample clean and final are the same. For a defect sample they are identical outside
    the mask, which is what makes the mask exact.
    """
    rng = sample_rng(seed, category, split_id, index)
    clean, aux = RENDERERS[category](rng, n)
    # Drawn before the defect so clean and defective images share it exactly.
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(_SENSOR_NOISE)
    clean_u8 = _to_uint8(clean + noise)
    if split_id < _SPLIT_FIRST_DEFECT:
        return clean_u8, clean_u8, None

    defect = DEFECT_TYPES[category][split_id - _SPLIT_FIRST_DEFECT]
    defect_fn = CATEGORY_DEFECTS[category][defect]
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
