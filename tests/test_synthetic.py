"""The generated demo dataset: MVTec layout, deterministic bytes, exact binary masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from adx_runtime.synthetic import DEFECT_TYPES, DEMO_CATEGORIES, count_demo_images, generate_demo_dataset

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_per_defect": 2, "image_size": 64}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("gen")
    return root, generate_demo_dataset(root, **SMALL, seed=0)


def test_layout_and_counts_match_the_summary(generated) -> None:
    root, summary = generated
    assert list(summary) == list(DEMO_CATEGORIES)
    for cat, counts in summary.items():
        assert counts == {"train/good": 3, "test/good": 2, **{f"test/{d}": 2 for d in DEFECT_TYPES[cat]}}
        split = load_split(root, cat)  # the project's own reader accepts it, masks included
        assert len(split.train) == 3 and split.has_masks and split.defect_types == sorted(DEFECT_TYPES[cat])
    n_images = sum(1 for p in root.rglob("*.png") if "ground_truth" not in p.parts)
    assert n_images == count_demo_images(**{k: v for k, v in SMALL.items() if k != "image_size"})


def test_images_are_rgb_and_masks_binary_nonempty_and_aligned(generated) -> None:
    root, _ = generated
    for cat in DEMO_CATEGORIES:
        for img_path in (root / cat / "test").glob("*/*.png"):
            with Image.open(img_path) as img:
                assert img.mode == "RGB" and img.size == (64, 64)
            defect = img_path.parent.name
            if defect == "good":
                continue
            mask = np.asarray(Image.open(root / cat / "ground_truth" / defect / f"{img_path.stem}_mask.png"))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() >= 8


def test_masked_pixels_look_different_from_the_rest(generated) -> None:
    """A visible defect: the masked pixels deviate from the image's typical colour unlike the rest."""
    root, _ = generated
    for cat in DEMO_CATEGORIES:
        for img_path in sorted((root / cat / "test").glob("*/*.png")):
            if img_path.parent.name == "good":
                continue
            img = np.asarray(Image.open(img_path), np.float32)
            mask = np.asarray(Image.open(root / cat / "ground_truth" / img_path.parent.name / f"{img_path.stem}_mask.png")) > 0
            local = np.abs(img - np.median(img.reshape(-1, 3), axis=0)).sum(-1)
            assert local[mask].mean() != pytest.approx(local[~mask].mean(), rel=0.02), img_path


def test_same_seed_same_bytes_other_seed_other_bytes(generated, tmp_path: Path) -> None:
    root, _ = generated
    generate_demo_dataset(tmp_path / "again", **SMALL, seed=0)
    generate_demo_dataset(tmp_path / "other", **SMALL, seed=1)
    assert files(tmp_path / "again") == files(root)
    other = files(tmp_path / "other")
    assert set(other) == set(files(root)) and all(other[k] != v for k, v in files(root).items() if "train" in k)


def test_a_category_alone_equals_it_among_others(generated, tmp_path: Path) -> None:
    root, _ = generated
    generate_demo_dataset(tmp_path, ["tile"], **SMALL, seed=0)
    assert files(tmp_path / "tile") == files(root / "tile")


def test_normal_training_images_all_differ(generated) -> None:
    root, _ = generated
    for cat in DEMO_CATEGORIES:
        blobs = [p.read_bytes() for p in (root / cat / "train" / "good").glob("*.png")]
        assert len(set(blobs)) == len(blobs)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="weave"):
        generate_demo_dataset("/nonexistent", ["carpet"])
    with pytest.raises(ConfigError):
        generate_demo_dataset("/nonexistent", ["weave"], n_train=0)
    with pytest.raises(ConfigError):
        generate_demo_dataset("/nonexistent", ["weave"], image_size=16)
