"""Reading datasets in the MVTec AD folder layout (torch-free: evaluation uses it too).

```
<dataset>/<category>/train/good/*.png
<dataset>/<category>/test/good/*.png
<dataset>/<category>/test/<defect>/*.png
<dataset>/<category>/ground_truth/<defect>/<name>_mask.png     (optional)
```

``<dataset>`` may also be a category folder itself (it holds ``train/``). Any category name and any
custom dataset in this layout works. Masks are optional: without them only image-level metrics
can be computed, and :attr:`CategorySplit.mask_note` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adx_runtime.errors import DatasetError
from adx_runtime.images import IMAGE_SUFFIXES

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a split."""

    path: Path
    defect: str  # "good" or the defect type (the folder name under test/)
    mask_path: Path | None = None  # ground-truth mask; None for good images and when absent

    @property
    def label(self) -> int:
        """0 for normal, 1 for anomalous."""
        return 0 if self.defect == GOOD else 1


@dataclass
class CategorySplit:
    """The train and test samples of one category."""

    root: Path
    category: str
    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = False  # every anomalous test image has a mask
    mask_note: str = ""  # why pixel metrics are unavailable, when has_masks is False

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.defect != GOOD})


def list_images(folder: Path) -> list[Path]:
    """Entries directly inside ``folder`` named like images, sorted by name (hidden ones skipped).

    Whatever they are: a FIFO, a device link or a folder named ``x.png`` is listed too, so that
    decoding reports it (training skips it with the reason, evaluation names it) instead of it
    vanishing silently."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _is_category(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "test").is_dir()


def list_categories(dataset: str | Path) -> list[str]:
    """Category folders of a dataset root (folders holding ``train/`` or ``test/``)."""
    root = Path(dataset)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_category(p))


def resolve_category(dataset: str | Path, category: str | None) -> tuple[Path, str]:
    """Find the category folder: ``dataset/category``, or ``dataset`` itself if it is one."""
    root = Path(dataset)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    if category is None:
        if _is_category(root):
            return root, root.name
        cats = list_categories(root)
        if len(cats) == 1:
            return root / cats[0], cats[0]
        if not cats:
            raise DatasetError(
                f"{str(root)!r} holds no category in the MVTec AD layout: expected "
                "<category>/train/good/ (or train/good/ directly inside it)"
            )
        raise DatasetError(f"{str(root)!r} holds several categories; choose one with --category: {', '.join(cats)}")
    path = root / category
    if not path.is_dir():
        cats = list_categories(root)
        raise DatasetError(
            f"category {category!r} not found in {str(root)!r}; categories there: {', '.join(cats) or 'none'}"
        )
    return path, category


def mask_for(gt_dir: Path, image: Path) -> Path | None:
    """The ground-truth mask of ``image`` in ``gt_dir`` (MVTec's ``<name>_mask.png``, or the
    image's own name), or ``None``: the one naming rule, also used for PRNet's real anomalies."""
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}"):
        candidate = gt_dir / name
        if candidate.is_file():
            return candidate
    return None


def load_split(dataset: str | Path, category: str | None = None, *, need_test: bool = True) -> CategorySplit:
    """Scan one category. Raises :class:`DatasetError` naming what is missing.

    Args:
        need_test: training needs only ``train/good``; evaluation needs ``test/`` too.
    """
    path, name = resolve_category(dataset, category)
    train_dir = path / "train" / GOOD
    if not train_dir.is_dir():
        raise DatasetError(f"{str(path)!r} is missing train/good/ (the normal training images)")
    train = [Sample(p, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(f"{str(train_dir)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    split = CategorySplit(root=path, category=name, train=train)

    test_dir = path / "test"
    if not test_dir.is_dir():
        if need_test:
            raise DatasetError(f"{str(path)!r} is missing test/ (test/good/ and test/<defect>/ folders)")
        split.mask_note = "no test split"
        return split
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if need_test and not defect_dirs:
        raise DatasetError(f"{str(test_dir)!r} holds no folders; expected test/good/ and test/<defect>/")
    gt_root = path / "ground_truth"
    missing: list[str] = []
    for d in defect_dirs:
        for img in list_images(d):
            if d.name == GOOD:
                split.test.append(Sample(img, GOOD))
                continue
            mask = mask_for(gt_root / d.name, img) if gt_root.is_dir() else None
            if mask is None:
                missing.append(f"{d.name}/{img.name}")
            split.test.append(Sample(img, d.name, mask))
    if need_test and not split.test:
        raise DatasetError(f"{str(test_dir)!r} holds no images in its folders")
    anomalous = [s for s in split.test if s.label == 1]
    if not gt_root.is_dir():
        split.mask_note = "no ground_truth/ folder: pixel metrics skipped"
    elif missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        split.mask_note = (
            f"{len(missing)} of {len(anomalous)} anomalous test images have no mask in ground_truth/ "
            f"({shown}): pixel metrics skipped"
        )
    elif not anomalous:
        split.mask_note = "no anomalous test images: pixel metrics skipped"
    else:
        split.has_masks = True
    return split
