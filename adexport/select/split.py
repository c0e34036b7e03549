"""The images ``adx select`` chooses on, and the ones it reports the choice on, as folders.

Choosing a method on the test set and quoting its test score overfits the choice to those images.
So the pick is made on a *selection* set and the chosen bundle is scored once on a *report* set it
was not chosen on. Where they come from, in order:

1. ``<category>/validation/`` (``good/`` and ``<defect>/`` folders, masks in ``ground_truth/`` by
   the MVTec naming rule): selection = validation, report = ``test/``;
2. else a seeded split of ``test/``, stratified by defect type: half of each folder (rounded up)
   to selection, the rest to report;
3. else, when the category has no defective image at all: synthetic defects painted on held-out
   normal images by :mod:`adx_synth.field_defects` (a defect family that shares no code with the
   anomaly synthesis trained methods learn from); there is no report set then, and the output says
   that the ranking is a proxy.

Both sets are materialised as MVTec-style folders under ``DIR/work/`` (symbolic links to the
user's files, written files for synthetic defects), each with its own ``train/good``, so every
function downstream (training's parity images, evaluation, the benchmark's images) sees only the
images of its set. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.datasets import GOOD, Sample, list_images, load_split, mask_for, resolve_category
from adx_runtime.errors import ConfigError, DatasetError

#: How the selection set was made (``ValidationPlan.mode``).
MODE_VALIDATION = "validation-folder"
MODE_SPLIT = "test-split"
MODE_SYNTHETIC = "synthetic"
#: A file in every folder this module writes, so a rerun may delete it and nothing else.
WORK_MARKER = ".adx-select-work"
SYNTHETIC_KIND = "synthetic"
#: Fraction of train/good held out for synthetic defects when the category has no test/good.
SYNTHETIC_HOLDOUT = 0.25


@dataclass
class ValidationPlan:
    """Which files go where; ``select``/``report`` are lists of (defect kind, image, mask or None)."""

    mode: str
    category: str
    train: list[Path]
    select: list[tuple[str, Path, Path | None]]
    report: list[tuple[str, Path, Path | None]]
    #: Normal images to paint synthetic defects on (``MODE_SYNTHETIC`` only).
    synthetic_sources: list[Path] = field(default_factory=list)
    note: str = ""

    def summary(self) -> dict[str, Any]:
        def count(items: list[tuple[str, Path, Path | None]]) -> dict[str, int]:
            out: dict[str, int] = {}
            for kind, _, _ in items:
                out[kind] = out.get(kind, 0) + 1
            return out

        return {"mode": self.mode, "note": self.note, "train_images": len(self.train),
                "select": count(self.select), "report": count(self.report)}


def _rank_key(seed: int, path: Path) -> str:
    # A file's place in its folder's draw depends only on the seed and its own name, so adding or
    # changing one file does not reshuffle the others.
    return hashlib.sha256(f"{seed}:{path.name}".encode()).hexdigest()


def stratified_halves(samples: list[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """Half of each defect kind (rounded up) to the first list, the rest to the second, seeded."""
    by_kind: dict[str, list[Sample]] = {}
    for s in samples:
        by_kind.setdefault(s.defect, []).append(s)
    first: list[Sample] = []
    second: list[Sample] = []
    for kind in sorted(by_kind):
        ordered = sorted(by_kind[kind], key=lambda s: _rank_key(seed, s.path))
        cut = (len(ordered) + 1) // 2
        first += ordered[:cut]
        second += ordered[cut:]
    return first, second


def _validation_samples(cat_dir: Path) -> list[tuple[str, Path, Path | None]]:
    vdir = cat_dir / "validation"
    gt = vdir / "ground_truth"
    out: list[tuple[str, Path, Path | None]] = []
    for d in sorted(p for p in vdir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "ground_truth"):
        for img in list_images(d):
            mask = None if d.name == GOOD or not gt.is_dir() else mask_for(gt / d.name, img)
            out.append((d.name, img, mask))
    return out


def plan_validation(dataset: str | Path, category: str | None, seed: int) -> ValidationPlan:
    """Decide the selection and report sets of one category (the module docstring says how)."""
    cat_dir, name = resolve_category(dataset, category)
    split = load_split(dataset, category, need_test=False)
    train = [s.path for s in split.train]
    if (cat_dir / "validation").is_dir():
        select = _validation_samples(cat_dir)
        kinds = {k for k, _, _ in select}
        if GOOD not in kinds or len(kinds) < 2:
            raise DatasetError(f"{cat_dir / 'validation'} must hold good/ and at least one defect folder with "
                               f"images (found: {', '.join(sorted(kinds)) or 'nothing'})")
        report = [(s.defect, s.path, s.mask_path) for s in split.test]
        return ValidationPlan(MODE_VALIDATION, name, train, select, report,
                              note="selection on validation/, the pick reported on test/")
    anomalous = [s for s in split.test if s.label == 1]
    good = [s for s in split.test if s.label == 0]
    if anomalous:
        if not good:
            raise DatasetError(f"{cat_dir / 'test'} holds defective images but no test/good/: AUROC needs both")
        sel, rep = stratified_halves(split.test, seed)
        return ValidationPlan(MODE_SPLIT, name, train,
                              [(s.defect, s.path, s.mask_path) for s in sel],
                              [(s.defect, s.path, s.mask_path) for s in rep],
                              note=f"test/ split in two by seed {seed}, stratified by defect type: the pick made on "
                                   "the selection half, reported on the other half")
    # No defective image anywhere: normal images held out from training get synthetic defects.
    if len(good) >= 4:
        normals = [s.path for s in good]
        where = "test/good"
    else:
        ordered = sorted(train, key=lambda p: _rank_key(seed, p))
        n_hold = max(4, int(round(len(train) * SYNTHETIC_HOLDOUT)))
        if len(train) - n_hold < 4:
            raise DatasetError(f"{cat_dir} has no defective images and too few normal ones ({len(train)} in "
                               "train/good) to hold some out for synthetic defects; add test/ or validation/ images")
        normals, train = ordered[:n_hold], sorted(ordered[n_hold:])
        where = f"{n_hold} images of train/good (held out of every fit)"
    ordered = sorted(normals, key=lambda p: _rank_key(seed, p))
    cut = (len(ordered) + 1) // 2
    select = [(GOOD, p, None) for p in sorted(ordered[:cut])]
    return ValidationPlan(MODE_SYNTHETIC, name, train, select, [], synthetic_sources=sorted(ordered[cut:]),
                          note=f"no defective images in the data: chosen on synthetic defects (adx_synth.field_defects, "
                               f"a family no candidate trains on) painted on normal images from {where}; a proxy, "
                               "and there is no report set")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _clear_work(folder: Path) -> None:
    if folder.exists():
        if not (folder / WORK_MARKER).is_file():
            raise ConfigError(f"{folder} exists and was not written by adx select; move it away or choose another --out")
        shutil.rmtree(folder)


def _write_set(root: Path, category: str, train: list[Path],
               items: list[tuple[str, Path, Path | None]]) -> Path:
    """An MVTec-style dataset ``root/category`` of links; returns ``root``."""
    _clear_work(root)
    cat = root / category
    (cat / "train" / GOOD).mkdir(parents=True)
    (root / WORK_MARKER).write_text("written by adx select; replaced at every run\n", encoding="utf-8")
    for p in train:
        _link(p, cat / "train" / GOOD / p.name)
    for kind, img, mask in items:
        _link(img, cat / "test" / kind / img.name)
        if mask is not None:
            _link(mask, cat / "ground_truth" / kind / f"{img.stem}_mask.png")
    return root


def _paint_synthetic(sources: list[Path], out_dir: Path, gt_dir: Path, seed: int) -> int:
    """Synthetic defects on ``sources`` (the caller's held-out normal images) into ``out_dir``."""
    from PIL import Image  # noqa: PLC0415

    from adx_runtime.images import decode_image  # noqa: PLC0415

    try:
        from adx_synth.field_defects import apply_random_defect  # noqa: PLC0415  (a separate family, see the docstring)
    except ImportError as exc:
        raise ConfigError("the data has no defective images and this install lacks adx_synth.field_defects, which "
                          f"paints the synthetic ones to select on ({exc}); add test/<defect>/ images") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, src in enumerate(sources):
        rgb = np.asarray(decode_image(src).convert("RGB"))
        result = apply_random_defect(rgb, rng, scale="normal")
        image, mask = result if isinstance(result, tuple) else (result, None)
        name = f"{i:03d}_{src.stem}.png"
        Image.fromarray(np.asarray(image, np.uint8)).save(out_dir / name)
        if mask is not None:
            m = np.asarray(mask)
            m = (m > (0.5 if m.dtype.kind == "f" else 0)).astype(np.uint8) * 255
            Image.fromarray(m).save(gt_dir / f"{Path(name).stem}_mask.png")
    return len(sources)


@dataclass
class Materialised:
    """The folders evaluation and training read: dataset roots holding ``category``."""

    select_root: Path
    report_root: Path | None
    plan: ValidationPlan


def materialise(plan: ValidationPlan, work: Path, seed: int) -> Materialised:
    """Write the plan's selection (and report) sets under ``work`` (replaced if a rerun wrote them)."""
    work.mkdir(parents=True, exist_ok=True)
    select_root = _write_set(work / "select", plan.category, plan.train, plan.select)
    if plan.mode == MODE_SYNTHETIC:
        cat = select_root / plan.category
        _paint_synthetic(plan.synthetic_sources, cat / "test" / SYNTHETIC_KIND, cat / "ground_truth" / SYNTHETIC_KIND,
                         seed)
    report_root = _write_set(work / "report", plan.category, plan.train, plan.report) if plan.report else None
    return Materialised(select_root, report_root, plan)


def data_fingerprint(dataset: str | Path, category: str | None) -> str:
    """Names and sizes of the category's files: a rerun on changed data is not a resume."""
    cat_dir, _ = resolve_category(dataset, category)
    h = hashlib.sha256()
    for p in sorted(cat_dir.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(cat_dir)}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]
