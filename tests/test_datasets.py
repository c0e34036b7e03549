"""The MVTec AD layout reader: what it finds, and the errors that name what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adx_runtime.datasets import list_categories, load_split
from adx_runtime.errors import DatasetError


def img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def make(root: Path, masks: bool = True) -> Path:
    cat = root / "bolt"
    for i in range(3):
        img(cat / "train" / "good" / f"{i:03d}.png")
    img(cat / "test" / "good" / "000.png")
    img(cat / "test" / "dent" / "000.png")
    img(cat / "test" / "dent" / "001.png")
    if masks:
        img(cat / "ground_truth" / "dent" / "000_mask.png")
        img(cat / "ground_truth" / "dent" / "001_mask.png")
    return cat


def test_full_layout(tmp_path: Path) -> None:
    make(tmp_path)
    split = load_split(tmp_path, "bolt")
    assert [s.path.name for s in split.train] == ["000.png", "001.png", "002.png"]
    assert [(s.defect, s.label) for s in split.test] == [("dent", 1), ("dent", 1), ("good", 0)]
    assert split.has_masks and split.defect_types == ["dent"]
    assert split.test[0].mask_path.name == "000_mask.png"
    assert list_categories(tmp_path) == ["bolt"]


def test_category_folder_itself_and_single_category_root(tmp_path: Path) -> None:
    cat = make(tmp_path)
    assert load_split(cat).category == "bolt"
    assert load_split(tmp_path).category == "bolt"  # the only category


def test_without_masks_pixel_metrics_are_skipped_with_a_reason(tmp_path: Path) -> None:
    make(tmp_path, masks=False)
    split = load_split(tmp_path, "bolt")
    assert not split.has_masks and "no ground_truth/" in split.mask_note


def test_partial_masks_name_the_missing_ones(tmp_path: Path) -> None:
    cat = make(tmp_path)
    (cat / "ground_truth" / "dent" / "001_mask.png").unlink()
    split = load_split(tmp_path, "bolt")
    assert not split.has_masks and "1 of 2" in split.mask_note and "dent/001.png" in split.mask_note


@pytest.mark.parametrize("breakage,message", [
    (lambda c: shutil.rmtree(c / "train"), "missing train/good/"),
    (lambda c: [p.unlink() for p in (c / "train" / "good").iterdir()], "holds no images"),
    (lambda c: shutil.rmtree(c / "test"), "missing test/"),
])
def test_malformed_trees_name_what_is_missing(tmp_path: Path, breakage, message: str) -> None:
    cat = make(tmp_path)
    breakage(cat)
    with pytest.raises(DatasetError, match=message):
        load_split(tmp_path, "bolt")


def test_training_does_not_need_test(tmp_path: Path) -> None:
    cat = make(tmp_path)
    shutil.rmtree(cat / "test")
    assert len(load_split(tmp_path, "bolt", need_test=False).train) == 3


def test_unknown_and_ambiguous_categories_list_the_valid_ones(tmp_path: Path) -> None:
    make(tmp_path)
    img(tmp_path / "nut" / "train" / "good" / "000.png")
    with pytest.raises(DatasetError, match="category 'screw' not found.*bolt, nut"):
        load_split(tmp_path, "screw")
    with pytest.raises(DatasetError, match="several categories.*bolt, nut"):
        load_split(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no category"):
        load_split(empty)


def test_odd_entries_named_like_images_are_listed_not_dropped(tmp_path: Path) -> None:
    import os

    from adx_runtime.datasets import list_images

    (tmp_path / "a.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "c.png").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png", "c.png"]
