"""Tests for adx_runtime.synthetic: the procedural MVTec-AD-style demo dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from adx_runtime.synthetic import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    count_demo_images,
    generate_demo_dataset,
)

SMALL = dict(n_train=3, n_test_good=2, n_test_per_defect=2, image_size=64)
COUNTS = {k: SMALL[k] for k in ("n_train", "n_test_good", "n_test_per_defect")}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root, keyed by its relative POSIX path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[int]]:
    """All categories, small counts, generated once for the read-only tests."""
    root = tmp_path_factory.mktemp("demo")
    calls: list[int] = []
    summary = generate_demo_dataset(root, seed=7, progress=calls.append, **SMALL)
    return root, summary, calls


def test_constants_are_consistent() -> None:
    assert 3 <= len(DEMO_CATEGORIES) <= 4
    assert set(DEFECT_TYPES) == set(DEMO_CATEGORIES)
    for category, defects in DEFECT_TYPES.items():
        assert len(defects) >= 3, category
        assert len(set(defects)) == len(defects)
        assert "good" not in defects


def test_layout_and_counts_match_summary(small_dataset: tuple[Path, dict, list[int]]) -> None:
    root, summary, calls = small_dataset
    assert list(summary) == list(DEMO_CATEGORIES)

    total = 0
    for category in DEMO_CATEGORIES:
        expected = {"train/good": 3, "test/good": 2}
        expected |= {f"test/{d}": 2 for d in DEFECT_TYPES[category]}
        assert summary[category] == expected

        cat_dir = root / category
        for rel, count in expected.items():
            names = sorted(p.name for p in (cat_dir / rel).iterdir())
            assert names == [f"{i:03d}.png" for i in range(count)], rel
            total += count
        test_dirs = sorted(p.name for p in (cat_dir / "test").iterdir())
        assert test_dirs == sorted(["good", *DEFECT_TYPES[category]])
        # Masks exist for every defect image and for nothing else (no ground_truth/good).
        gt_dirs = sorted(p.name for p in (cat_dir / "ground_truth").iterdir())
        assert gt_dirs == sorted(DEFECT_TYPES[category])
        for defect in DEFECT_TYPES[category]:
            masks = sorted(p.name for p in (cat_dir / "ground_truth" / defect).iterdir())
            assert masks == ["000_mask.png", "001_mask.png"]

        split = load_split(root, category)  # the project's own reader accepts it, masks included
        assert len(split.train) == 3 and len(split.test) == 2 + 2 * len(DEFECT_TYPES[category])
        assert split.has_masks
        assert split.defect_types == sorted(DEFECT_TYPES[category])

    assert total == count_demo_images(**COUNTS)
    assert total == 4 * (3 + 2) + 2 * sum(len(d) for d in DEFECT_TYPES.values())
    assert calls == [1] * total


def test_count_demo_images_defaults_and_subset() -> None:
    n_defects = sum(len(DEFECT_TYPES[c]) for c in DEMO_CATEGORIES)
    assert count_demo_images() == 70 * len(DEMO_CATEGORIES) + 5 * n_defects
    assert count_demo_images(["wood"], n_train=4, n_test_good=1, n_test_per_defect=2) == (
        4 + 1 + 2 * len(DEFECT_TYPES["wood"])
    )
    # A lone string is one category, not a sequence of one-letter names.
    assert count_demo_images("wood") == count_demo_images(["wood"])


def test_images_and_masks_are_well_formed(small_dataset: tuple[Path, dict, list[int]]) -> None:
    root, _, _ = small_dataset
    for category in DEMO_CATEGORIES:
        for image_path in sorted((root / category).glob("t*/*/*.png")):
            with Image.open(image_path) as im:
                assert im.format == "PNG"
                assert im.mode == "RGB", image_path
                assert im.size == (64, 64)
        for defect in DEFECT_TYPES[category]:
            for i in range(2):
                with Image.open(root / category / "test" / defect / f"{i:03d}.png") as im:
                    image_size = im.size
                mask_path = root / category / "ground_truth" / defect / f"{i:03d}_mask.png"
                with Image.open(mask_path) as m:
                    assert m.mode == "L"
                    assert m.size == image_size
                    mask = np.asarray(m)
                assert set(np.unique(mask).tolist()) <= {0, 255}, (category, defect, i)
                assert (mask == 255).sum() > 0, (category, defect, i)
                assert (mask == 0).sum() > 0, (category, defect, i)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_demo_dataset(a, ["grid", "tile"], seed=3, **SMALL)
    generate_demo_dataset(b, ["grid", "tile"], seed=3, **SMALL)
    generate_demo_dataset(c, ["grid", "tile"], seed=4, **SMALL)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)

    assert len(files_a) == count_demo_images(["grid", "tile"], **COUNTS) + 2 * 4 * 2
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    images = [k for k in files_a if not k.endswith("_mask.png")]
    assert all(files_a[k] != files_c[k] for k in images)


def test_category_alone_equals_category_among_others(
    tmp_path: Path, small_dataset: tuple[Path, dict, list[int]]
) -> None:
    root_all, _, _ = small_dataset
    alone = tmp_path / "alone"
    generate_demo_dataset(alone, ["wood"], seed=7, **SMALL)
    assert [p.name for p in alone.iterdir()] == ["wood"]
    files_alone = _files(alone / "wood")
    files_all = _files(root_all / "wood")
    assert len(files_alone) > 0
    assert files_alone == files_all


def test_unknown_category_raises_config_error_listing_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        generate_demo_dataset(tmp_path / "x", ["wood", "bottle"], **SMALL)
    message = str(info.value)
    assert "'bottle'" in message
    for name in DEMO_CATEGORIES:
        assert name in message
    assert not (tmp_path / "x").exists()  # validation happens before anything is written

    with pytest.raises(ConfigError, match="bottle"):
        count_demo_images(["bottle"])
    with pytest.raises(ConfigError, match="Valid categories"):
        count_demo_images([])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test_good": -1}, "n_test_good"),
        ({"n_test_per_defect": 0}, "n_test_per_defect"),
        ({"n_train": 2.5}, "n_train"),
        ({"image_size": 31}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_numbers_raise_config_error(tmp_path: Path, kwargs: dict, name: str) -> None:
    args = dict(SMALL) | kwargs
    with pytest.raises(ConfigError, match=name):
        generate_demo_dataset(tmp_path / "x", ["tile"], **args)
    assert not (tmp_path / "x").exists()


def test_normal_train_images_differ(small_dataset: tuple[Path, dict, list[int]]) -> None:
    root, _, _ = small_dataset
    for category in DEMO_CATEGORIES:
        paths = sorted((root / category / "train" / "good").glob("*.png"))
        paths += sorted((root / category / "test" / "good").glob("*.png"))
        images = [np.asarray(Image.open(p), dtype=np.float32) for p in paths]
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                # Not merely different noise: a shifted/rotated crop differs by far more than that.
                mean_abs = np.abs(images[i] - images[j]).mean()
                assert mean_abs > 5.0, (category, paths[i].name, paths[j].name, mean_abs)


def test_defect_changes_exactly_the_masked_pixels() -> None:
    # Uses the private renderer to compare a defect image with its defect-free version.
    from adx_runtime.synthetic import _render_sample

    for category in DEMO_CATEGORIES:
        for k, defect in enumerate(DEFECT_TYPES[category]):
            for index in range(3):
                clean, image, mask = _render_sample(category, 2 + k, index, 0, 96)
                assert mask is not None
                inside = mask == 255
                changed = np.any(clean != image, axis=2)
                assert not np.any(changed & ~inside), (category, defect, index)
                if (category, defect) == ("grid", "bent"):
                    # The bent region's mask is closed over flat background the warp left alone.
                    assert changed[inside].mean() > 0.5, (category, defect, index)
                else:
                    assert changed[inside].all(), (category, defect, index)
            clean, image, mask = _render_sample(category, 0, 0, 0, 96)
            assert mask is None and np.array_equal(clean, image)


def test_defect_sizes_vary() -> None:
    from adx_runtime.synthetic import _render_sample

    n = 160
    areas = [
        int((_render_sample(category, 2 + k, index, 0, n)[2] == 255).sum())
        for category in DEMO_CATEGORIES
        for k in range(len(DEFECT_TYPES[category]))
        for index in range(4)
    ]
    assert min(areas) < 100  # small defects: a few dozen pixels
    assert max(areas) > 0.02 * n * n  # large ones: a few percent of the image



def test_defects_are_visible() -> None:
    """Inside the mask the defect changes pixels by a visible amount (not just sensor noise)."""
    from adx_runtime.synthetic import _render_sample

    for category in DEMO_CATEGORIES:
        for k, defect in enumerate(DEFECT_TYPES[category]):
            for index in range(5):
                clean, image, mask = _render_sample(category, 2 + k, index, 0, 96)
                change = np.abs(image.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
                mean_change = change[mask == 255].mean()
                assert mean_change > 8.0, (category, defect, index, mean_change)
