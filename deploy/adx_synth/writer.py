"""Writing the demo dataset: MVTec AD folder layout, per-file seeding, exact masks, PNG files.

::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png

Every image comes from its own random generator seeded with (seed, category, split, index), so the
output is byte-identical for the same arguments and a category does not depend on which other
categories were generated with it.

The test defects come from one of two families (``test_defects``): ``demo``, each category's own
defect kinds from :mod:`adx_synth.defects` (whose primitives the anomaly synthesis of CutPaste and
PRNet also paints with), or ``field``, the kinds of :mod:`adx_synth.field_defects` (scratch, crack,
pit, stain, burn), which share no code with that synthesis. The good images do not depend on the
family, so one model trained on ``train/good`` can be evaluated on both test sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from adx_runtime.errors import ConfigError
from adx_synth.defects import CATEGORY_DEFECTS
from adx_synth.digits import MIN_DIGITS_IMAGE_SIZE, generate_digits
from adx_synth.field_defects import FIELD_DEFECT_KINDS, FIELD_DEFECT_SCALES, apply_random_defect
from adx_synth.mvtec import check_int, file_stem, sample_rng, save_png
from adx_synth.textures import RENDERERS

__all__ = [
    "DEFECT_SCALES",
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "EXTRA_CATEGORIES",
    "TEST_DEFECT_FAMILIES",
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

#: Where the test defects come from: ``demo`` (:data:`DEFECT_TYPES`, drawn by :mod:`adx_synth.defects`)
#: or ``field`` (:data:`adx_synth.field_defects.FIELD_DEFECT_KINDS`, an independent module).
TEST_DEFECT_FAMILIES: tuple[str, ...] = ("demo", "field")
#: Defect sizes: ``normal`` relative to the image; ``small`` a few pixels (field family only).
DEFECT_SCALES: tuple[str, ...] = FIELD_DEFECT_SCALES

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
# test/<field kind k> uses split id 32 + k: other backgrounds than the demo defects' (ids 2..5).
_SPLIT_FIRST_FIELD = 32

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
    test_defects: str = "demo",
    defect_scale: str = "normal",
) -> dict[str, dict[str, int]]:
    """Write a synthetic MVTec-AD-style dataset under ``root`` and return the image counts.

    ``categories`` defaults to all of :data:`DEMO_CATEGORIES`; :data:`EXTRA_CATEGORIES` are written
    when named (for ``digits``: the digit 1 is normal and ``n_test_per_defect`` images of each other
    digit are the anomalies). ``progress`` is called with 1 after each image is written (a defect
    image and its mask count as one). Existing files with the same names are overwritten; other
    files already under ``root`` are left alone, except that writing one defect family where a
    category already has the other's test folders is refused (an evaluation would mix them).

    ``test_defects`` picks the family of the test defects (:data:`TEST_DEFECT_FAMILIES`; see the
    module doc); train/good and test/good are byte-identical for either. ``defect_scale`` ``small``
    draws the few-pixel field defects of a megapixel camera (``test_defects="field"`` only: the
    demo defects are sized relative to the image). Both apply to the texture categories; digits
    refuse anything but the defaults.

    Returns ``{category: {"train/good": n, "test/good": n, "test/<defect>": n, ...}}``.
    """
    cats = _resolve_categories(categories)
    _check_counts(n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_per_defect)
    _check_family(cats, test_defects, defect_scale)
    if all(c == _DIGITS for c in cats):
        check_int("image_size", image_size, minimum=MIN_DIGITS_IMAGE_SIZE)
    elif _DIGITS in cats:  # digits alone could be smaller: say which categories set the floor
        check_int("image_size (for the texture categories)", image_size, minimum=_MIN_IMAGE_SIZE)
    else:
        check_int("image_size", image_size, minimum=_MIN_IMAGE_SIZE)
    check_int("seed", seed, minimum=0)

    root = Path(root)
    _refuse_mixed_families(root, cats, test_defects)
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
        if test_defects == "field":
            jobs += [(kind, _SPLIT_FIRST_FIELD + k, n_test_per_defect)
                     for k, kind in enumerate(FIELD_DEFECT_KINDS)]
        else:
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
                if split_id >= _SPLIT_FIRST_FIELD:
                    image, mask = _render_field_sample(category, split_id, index, seed, image_size,
                                                       defect_scale)
                else:
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
    test_defects: str = "demo",
) -> int:
    """Return how many images :func:`generate_demo_dataset` would write (masks not counted)."""
    cats = _resolve_categories(categories)
    _check_counts(n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_per_defect)
    _check_family(cats, test_defects, "normal")
    n_kinds = {c: _DIGITS_OTHERS if c == _DIGITS else len(_defect_kinds(c, test_defects)) for c in cats}
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


def _defect_kinds(category: str, test_defects: str) -> tuple[str, ...]:
    """The test defect folders of a texture category for a family."""
    return FIELD_DEFECT_KINDS if test_defects == "field" else DEFECT_TYPES[category]


def _check_family(cats: Sequence[str], test_defects: str, defect_scale: str) -> None:
    if test_defects not in TEST_DEFECT_FAMILIES:
        raise ConfigError(f"Unknown test defect family {test_defects!r}. "
                          f"Valid families: {', '.join(TEST_DEFECT_FAMILIES)}.")
    if defect_scale not in DEFECT_SCALES:
        raise ConfigError(f"Unknown defect scale {defect_scale!r}. Valid scales: {', '.join(DEFECT_SCALES)}.")
    if defect_scale != "normal" and test_defects != "field":
        raise ConfigError(f"Defect scale {defect_scale!r} needs the field defect family (--test-defects "
                          "field): the demo defects are sized relative to the image.")
    if _DIGITS in cats and (test_defects, defect_scale) != ("demo", "normal"):
        raise ConfigError("The digits category has no defect families or scales (its anomalies are the "
                          "other digits): generate it without --test-defects/--defect-scale.")


def _refuse_mixed_families(root: Path, cats: Sequence[str], test_defects: str) -> None:
    """Refuse to add one family's test folders to a category that holds the other's: an evaluation
    over test/ would then mix the two families without saying so."""
    for category in cats:
        if category == _DIGITS:
            continue
        mine = set(_defect_kinds(category, test_defects))
        other_family = "demo" if test_defects == "field" else "field"
        other = [k for k in _defect_kinds(category, other_family) if k not in mine]
        found = [k for k in other if (root / category / "test" / k).is_dir()]
        if found:
            raise ConfigError(
                f"{root / category / 'test'} already holds {other_family}-family defect folders "
                f"({', '.join(found)}); writing the {test_defects} family there would mix the two. "
                "Write it to another folder (the good images will be the same for the same seed)."
            )


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
    clean, aux, noise, clean_u8 = _render_clean(category, rng, n)
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


def _render_clean(category: str, rng: np.random.Generator, n: int) -> tuple[Array, dict, Array, Array]:
    """(clean float RGB, renderer aux, sensor noise, clean + noise as uint8) of one texture image."""
    clean, aux = RENDERERS[category](rng, n)
    # Drawn before the defect so clean and defective images share it exactly.
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(_SENSOR_NOISE)
    return clean, aux, noise, _to_uint8(clean + noise)


def _render_field_sample(
    category: str, split_id: int, index: int, seed: int, n: int, scale: str
) -> tuple[Array, Array]:
    """(uint8 RGB, uint8 mask) of one test image with a field defect, from its own generator.

    The defect is drawn on the finished image (sensor noise included) by
    :func:`adx_synth.field_defects.apply_random_defect`, whose mask is exact by construction.
    """
    rng = sample_rng(seed, category, split_id, index)
    _, _, _, clean_u8 = _render_clean(category, rng, n)
    kind = FIELD_DEFECT_KINDS[split_id - _SPLIT_FIRST_FIELD]
    image, mask = apply_random_defect(clean_u8, rng, scale=scale, kind=kind)
    return image, np.where(mask, 255, 0).astype(np.uint8)


def _to_uint8(img: Array) -> Array:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
