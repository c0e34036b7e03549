"""Tests for adx_synth: the procedural MVTec-AD-style demo datasets and the defect primitives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError, DependencyError
from adx_synth import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    EXTRA_CATEGORIES,
    alpha_centroid,
    bilinear_sample,
    blob_alpha,
    bump_warp,
    count_demo_images,
    generate_demo_dataset,
    generate_digits,
    paint,
    random_walk,
    render_digit,
    stroke_alpha,
    textured_fill,
    tint,
    write_sklearn_digits,
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
    assert EXTRA_CATEGORIES == ("digits",) and not set(EXTRA_CATEGORIES) & set(DEMO_CATEGORIES)
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
    from adx_synth.writer import _render_sample

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
    from adx_synth.writer import _render_sample

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
    from adx_synth.writer import _render_sample

    for category in DEMO_CATEGORIES:
        for k, defect in enumerate(DEFECT_TYPES[category]):
            for index in range(5):
                clean, image, mask = _render_sample(category, 2 + k, index, 0, 96)
                change = np.abs(image.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
                mean_change = change[mask == 255].mean()
                assert mean_change > 8.0, (category, defect, index, mean_change)


# --------------------------------------------------------------------------------------------
# Defect primitives: any size, (x, y) not swapped, ranges, seeded
# --------------------------------------------------------------------------------------------

SHAPE = (37, 53)  # (H, W): not square, so a swapped x and y shows


def test_blob_alpha_is_a_disc_where_asked() -> None:
    alpha = blob_alpha(np.random.default_rng(0), SHAPE, 6.0, irregular=0.0, centre=(40.0, 12.0))
    assert alpha.shape == SHAPE and alpha.dtype == np.float32
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    assert alpha[12, 40] == 1.0 and alpha[12, 40 - 8] == 0.0 and alpha[12 + 8, 40] == 0.0
    assert abs(alpha.sum() - np.pi * 6.0**2) < 0.05 * np.pi * 6.0**2
    cx, cy = alpha_centroid(alpha)
    assert abs(cx - 40.0) < 0.05 and abs(cy - 12.0) < 0.05
    assert alpha_centroid(np.zeros(SHAPE, np.float32)) == (53 / 2, 37 / 2)


def test_blob_alpha_is_seeded_and_soft_edges_are_partial() -> None:
    def blob(seed: int) -> np.ndarray:
        return blob_alpha(np.random.default_rng(seed), SHAPE, 7.0, irregular=0.4, soft=0.5, aspect=2.0)

    a, b, c = blob(3), blob(3), blob(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert ((a > 0.05) & (a < 0.95)).sum() > 20  # a soft rim, not a hard cut-out
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_stroke_alpha_draws_a_line_of_the_given_width() -> None:
    points = np.array([[5.0, 20.0], [45.0, 20.0]])
    alpha = stroke_alpha(SHAPE, points, 3.0)
    assert alpha.shape == SHAPE and alpha.dtype == np.float32
    assert alpha[20, 25] == 1.0 and alpha[10, 25] == 0.0 and alpha[20, 50] == 0.0
    assert abs(alpha.sum() - 40 * 3) < 0.1 * 40 * 3
    blurred = stroke_alpha(SHAPE, points, 3.0, blur=2.0)
    assert blurred[20, 25] < 1.0 and blurred[16, 25] > 0.0


def test_random_walk_is_seeded_and_centred_on_its_start() -> None:
    def walk(seed: int) -> np.ndarray:
        return random_walk(np.random.default_rng(seed), SHAPE, 30.0, 0.1, step=1.5, start=(26.0, 18.0))

    pts = walk(1)
    assert pts.shape == (21, 2)  # int(30 / 1.5) steps, plus the start
    assert np.allclose(np.linalg.norm(np.diff(pts, axis=0), axis=1), 1.5)
    assert np.allclose((pts.max(axis=0) + pts.min(axis=0)) / 2, [26.0, 18.0])
    assert np.array_equal(pts, walk(1)) and not np.array_equal(pts, walk(2))
    inside = random_walk(np.random.default_rng(0), SHAPE, 10.0, 0.1)
    assert np.all(inside >= 0) and np.all(inside[:, 0] < 53) and np.all(inside[:, 1] < 37)


def test_bilinear_sample_and_bump_warp() -> None:
    img = np.random.default_rng(0).random((*SHAPE, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:36, 0:52].astype(np.float32)  # the last row and column are clamped
    assert np.allclose(bilinear_sample(img, xx, yy), img[:36, :52], atol=1e-6)
    half = bilinear_sample(img, np.array([2.5]), np.array([4.0]))
    assert np.allclose(half[0], (img[4, 2] + img[4, 3]) / 2, atol=1e-6)

    warped = bump_warp(img, (30.0, 15.0), 8.0, 3.0, 0.0)
    assert warped.shape == img.shape
    d2 = (np.mgrid[0:37, 0:53][1] - 30.0) ** 2 + (np.mgrid[0:37, 0:53][0] - 15.0) ** 2
    assert np.array_equal(warped[d2 >= 64], img[d2 >= 64])  # untouched outside the bump
    assert np.allclose(warped[15, 30], img[15, 27], atol=1e-6)  # centre pulls from 3 px to the left


def test_paint_tint_and_textured_fill() -> None:
    rng = np.random.default_rng(5)
    img = rng.random((*SHAPE, 3)).astype(np.float32)
    alpha = np.zeros(SHAPE, np.float32)
    alpha[10:20, 30:40] = 1.0
    colour = np.array([0.1, 0.2, 0.9], np.float32)
    painted = paint(img, alpha, colour)
    assert np.array_equal(painted[alpha == 0], img[alpha == 0])
    assert np.allclose(painted[alpha == 1], colour)
    tinted = tint(img, alpha * 0.5, np.array([0.5, 1.0, 1.5], np.float32))
    assert np.allclose(tinted[alpha == 1], img[alpha == 1] * [0.75, 1.0, 1.25])

    fill = textured_fill(np.random.default_rng(1), SHAPE, colour, 0.2)
    assert fill.shape == (*SHAPE, 3)
    assert np.allclose(fill.mean(axis=(0, 1)), colour, rtol=1e-3)
    assert abs(fill[..., 2].std() / 0.9 - 0.2) < 0.01
    assert np.array_equal(fill, textured_fill(np.random.default_rng(1), SHAPE, colour, 0.2))


def test_package_imports_without_torch_or_sklearn() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tempfile, adx_synth\n"
        "d = tempfile.mkdtemp()\n"
        "adx_synth.generate_demo_dataset(d, ['tile', 'digits'], n_train=1, n_test_good=1,"
        " n_test_per_defect=1, image_size=32)\n"
        "loaded = {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "print(sorted(loaded & {'torch', 'timm', 'adexport', 'sklearn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------

DIGITS = dict(n_train=4, n_test_good=2, n_test_per_digit=2, image_size=28)


def _nearest_digit(images: list[np.ndarray]) -> list[int]:
    """Label images by the nearest of 30 references per digit drawn with unrelated seeds."""
    refs = np.stack([render_digit(np.random.default_rng([99, d, i]), d).ravel()
                     for d in range(10) for i in range(30)]).astype(np.float32)
    labels = np.repeat(np.arange(10), 30)
    x = np.stack([im.ravel() for im in images]).astype(np.float32)
    dist = (x**2).sum(1)[:, None] - 2 * x @ refs.T + (refs**2).sum(1)[None]
    return labels[dist.argmin(axis=1)].tolist()


def _read(folder: Path) -> list[np.ndarray]:
    out = []
    for p in sorted(folder.glob("*.png")):
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (28, 28), p
            out.append(np.asarray(im))
    return out


def test_digits_layout_and_content(tmp_path: Path) -> None:
    summary = generate_digits(tmp_path, normal_digit=7, seed=0, **DIGITS)
    cat = tmp_path / "digits"
    others = [d for d in range(10) if d != 7]
    assert summary == {"train/good": 4, "test/good": 2} | {f"test/digit_{d}": 2 for d in others}
    assert sorted(p.name for p in cat.iterdir()) == ["test", "train"]  # no ground_truth
    assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(
        ["good", *(f"digit_{d}" for d in others)])
    assert sorted(p.name for p in (cat / "train" / "good").iterdir()) == [
        "000.png", "001.png", "002.png", "003.png"]

    normal = _read(cat / "train" / "good") + _read(cat / "test" / "good")
    for im in normal:  # white ink on black, anti-aliased
        assert im.max() == 255 and im[0, 0] == 0 and len(np.unique(im)) > 10
    assert _nearest_digit(normal) == [7] * 6
    anomalous = [(d, im) for d in others for im in _read(cat / "test" / f"digit_{d}")]
    predicted = _nearest_digit([im for _, im in anomalous])
    # 1-NN on raw pixels with few references: far above chance (0.1), not perfect.
    assert np.mean([p == d for (d, _), p in zip(anomalous, predicted)]) >= 0.7

    split = load_split(tmp_path, "digits")
    assert len(split.train) == 4 and len(split.test) == 2 + 2 * 9
    assert not split.has_masks and "ground_truth" in split.mask_note


def test_digits_are_seeded_and_independent_of_the_normal_digit(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / k for k in "abcd")
    generate_digits(a, seed=3, **DIGITS)
    generate_digits(b, seed=3, **DIGITS)
    generate_digits(c, seed=4, **DIGITS)
    generate_digits(d, seed=3, normal_digit=2, **DIGITS)
    files_a, files_c = _files(a), _files(c)
    assert len(files_a) == 4 + 2 + 2 * 9
    assert files_a == _files(b)
    assert files_a.keys() == files_c.keys() and all(files_a[k] != files_c[k] for k in files_a)
    # The anomalous digit 3 is the same images whichever digit is normal.
    assert _files(a / "digits" / "test" / "digit_3") == _files(d / "digits" / "test" / "digit_3")
    # 1s vary: not the same shape shifted about.
    ones = np.stack(_read(a / "digits" / "train" / "good")).astype(np.float32)
    assert min(np.abs(ones[i] - ones[j]).mean() for i in range(4) for j in range(i + 1, 4)) > 5.0


def test_digits_via_the_demo_dataset_and_at_64_px(tmp_path: Path) -> None:
    calls: list[int] = []
    summary = generate_demo_dataset(tmp_path, ["digits"], n_train=2, n_test_good=1, n_test_per_defect=1,
                                    image_size=64, seed=0, progress=calls.append)
    assert list(summary) == ["digits"] and summary["digits"]["train/good"] == 2
    n_files = sum(1 for p in (tmp_path / "digits").rglob("*.png"))
    assert n_files == len(calls) == count_demo_images(["digits"], n_train=2, n_test_good=1,
                                                      n_test_per_defect=1) == 2 + 1 + 9
    with Image.open(tmp_path / "digits" / "test" / "digit_0" / "000.png") as im:
        assert im.mode == "L" and im.size == (64, 64)
    # Normal = 1 through the demo entry point, as in RIAD's one-class MNIST experiment.
    assert not (tmp_path / "digits" / "test" / "digit_1").exists()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda root: generate_digits(root, normal_digit=10, **DIGITS), "normal_digit"),
        (lambda root: generate_digits(root, **(DIGITS | {"image_size": 8})), "image_size"),
        (lambda root: generate_digits(root, category="../x", **DIGITS), "category"),
        (lambda root: generate_demo_dataset(root, ["digits", "tile"], image_size=28), "texture"),
    ],
)
def test_digits_bad_arguments_raise_config_error(tmp_path: Path, call, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        call(tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def sklearn_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("skd")
    return root, write_sklearn_digits(root, normal_digit=1, seed=0)


def test_sklearn_digits_layout_and_counts(sklearn_digits: tuple[Path, dict]) -> None:
    from sklearn.datasets import load_digits

    root, summary = sklearn_digits
    per_digit = np.bincount(load_digits().target, minlength=10)
    assert summary["train/good"] == round(per_digit[1] * 2 / 3)
    assert summary["train/good"] + summary["test/good"] == per_digit[1]
    assert {k: v for k, v in summary.items() if "digit_" in k} == {
        f"test/digit_{d}": per_digit[d] for d in range(10) if d != 1}
    cat = root / "sklearn_digits"
    assert sorted(p.name for p in cat.iterdir()) == ["test", "train"]
    for rel, count in summary.items():
        assert len(list((cat / rel).glob("*.png"))) == count, rel
    with Image.open(cat / "test" / "digit_0" / "000.png") as im:
        assert im.mode == "L" and im.size == (28, 28)
        assert np.asarray(im).max() > 200  # 0..16 scaled to 0..255, not left at 0..16


def test_sklearn_digits_split_is_seeded(sklearn_digits: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = sklearn_digits
    write_sklearn_digits(tmp_path / "same", seed=0, image_size=28)
    write_sklearn_digits(tmp_path / "other", seed=1, image_size=28)
    train = "sklearn_digits/train/good"
    assert _files(tmp_path / "same" / train) == _files(root / train)
    assert set(_files(tmp_path / "other" / train).values()) != set(_files(root / train).values())


def test_sklearn_digits_without_sklearn_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    with pytest.raises(DependencyError, match="pip install"):
        write_sklearn_digits(tmp_path)
