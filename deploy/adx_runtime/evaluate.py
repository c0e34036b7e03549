"""Scoring a test split with the torch-free runtime and computing its metrics (``adx eval``).

Image level: AUROC and F1-max. Pixel level, when every anomalous test image has a mask: AUROC,
AUPRO (FPR up to 0.3, normalised) and F1-max. A breakdown per defect type and for ``good``, and
how the bundle's own threshold does (false positives on good, detections per defect).

Warnings are for results that look like numbers but are no verdict at all: data of another category
than the bundle was trained on, a threshold that flags every good image. They go into the
evaluation's ``warnings`` (its JSON too); the CLI prints them on stderr.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from adx_runtime import __version__, metrics
from adx_runtime.bundle import MANIFEST
from adx_runtime.datasets import GOOD, CategorySplit, load_split
from adx_runtime.errors import ImageDecodeError
from adx_runtime.images import decode_mask
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import preprocess_mask
from adx_runtime.progress import SILENT, Progress


@dataclass
class ImageRecord:
    path: str
    defect: str
    label: int  # 0 normal, 1 anomalous (from the folder)
    score: float | None = None  # raw image score
    normalized: float | None = None
    predicted: bool | None = None  # score >= threshold
    error: str | None = None


@dataclass
class Evaluation:
    bundle: str
    method: str
    category: str
    dataset: str
    threshold: float
    pixel_threshold: float | None
    records: list[ImageRecord]
    metrics: dict[str, Any]  # name -> value (float) or None when undefined
    per_kind: dict[str, dict[str, Any]]
    notes: list[str]
    manifest_sha256: str
    has_masks: bool
    maps: np.ndarray | None = field(default=None, repr=False)  # (N_ok, H, W) raw, for reports
    masks: np.ndarray | None = field(default=None, repr=False)  # (N_ok, H, W) bool
    warnings: list[str] = field(default_factory=list)  # results not to be trusted as they stand

    @property
    def scored(self) -> list[ImageRecord]:
        return [r for r in self.records if r.error is None]

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle, "manifest_sha256": self.manifest_sha256, "method": self.method,
            "dataset": self.dataset, "category": self.category, "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold, "has_masks": self.has_masks, "metrics": self.metrics,
            "per_kind": self.per_kind, "notes": self.notes, "warnings": self.warnings, "versions": library_versions(),
            "images": [r.__dict__ for r in self.records],
        }


def library_versions() -> dict[str, str]:
    out = {"adexport": __version__, "python": platform.python_version()}
    for dist in ("numpy", "onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cuvs", "faiss-gpu-cu12", "scikit-learn", "scipy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def category_warning(manifest: dict[str, Any], category: str) -> str | None:
    """A warning when ``category`` (the data's folder name) is not the one the bundle was trained on.

    A bundle scores the good images of another category as anomalous, so its threshold flags them
    all; the numbers are then about the wrong data, not about the model. A bundle that does not
    record its training category gets no warning (nothing to compare with).
    """
    trained = (manifest.get("training") or {}).get("category")
    if not isinstance(trained, str) or not trained or trained.casefold() == category.casefold():
        return None
    return (f"the bundle was trained on category {trained!r} but this data is category {category!r}: its scores "
            f"and threshold do not apply to these images (expect good images flagged); use a bundle trained on "
            f"{category!r}, or data of {trained!r} (if this folder is {trained!r} data under another name, "
            f"ignore this)")


def all_good_flagged_warning(n_good_flagged: int, n_good: int, threshold: float) -> str | None:
    """A warning when a threshold flags every good image: the verdict "anomalous" then says nothing."""
    if n_good == 0 or n_good_flagged < n_good:
        return None
    return (f"the image threshold {threshold:.4g} flags all {n_good} good images (100%) of this split: every "
            f"verdict here is 'anomalous'; check that the data is the bundle's category and imaging setup, "
            f"then set a threshold from good images of it (adx calibrate BUNDLE DATA --mode fpr)")


def _metric(fn: Callable[..., Any], *args: Any, notes: list[str], name: str) -> Any:
    try:
        return fn(*args)
    except metrics.MetricUndefined as exc:
        notes.append(f"{name}: n/a ({exc})")
        return None


def _pixel_block(masks: np.ndarray, maps: np.ndarray, notes: list[str], prefix: str) -> dict[str, Any]:
    return {
        "pixel_auroc": _metric(metrics.pixel_auroc, masks, maps, notes=notes, name=f"{prefix}pixel AUROC"),
        "aupro": _metric(metrics.aupro, masks, maps, notes=notes, name=f"{prefix}AUPRO"),
    }


def evaluate(
    bundle: str | Path,
    dataset: str | Path,
    category: str | None = None,
    *,
    device: str = "cpu",
    bank_device: str = "auto",
    batch_size: int = 8,
    threshold: float | None = None,
    progress: Progress = SILENT,
    predictor: Predictor | None = None,
) -> Evaluation:
    """Score ``test/`` of one category and compute every metric the data allows."""
    split: CategorySplit = load_split(dataset, category, need_test=True)
    pred = predictor or Predictor.load(bundle, device=device, bank_device=bank_device, threshold=threshold)
    notes: list[str] = []
    use_masks = split.has_masks and pred.has_map
    if not pred.has_map:
        notes.append(f"pixel metrics skipped: the {pred.method} bundle scores whole images and has no anomaly map")
    elif not split.has_masks:
        notes.append(split.mask_note)  # it says why and that pixel metrics are skipped
    records = [ImageRecord(str(s.path), s.defect, s.label) for s in split.test]
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    with progress.task(f"Scoring {len(records)} test images ({split.category})", len(records)) as advance:
        results = pred.predict_files([s.path for s in split.test], batch_size=batch_size, keep_maps=True)
        for sample, rec, res in zip(split.test, records, results):
            advance(1)
            if not res.ok:
                rec.error = res.error
                notes.append(f"left out (not scored): {rec.path}: {res.error}")
                continue
            if res.anomaly_map is not None and use_masks:
                if sample.mask_path is None:
                    mask = np.zeros(res.anomaly_map.shape, bool)
                else:
                    try:
                        mask = preprocess_mask(decode_mask(sample.mask_path), pred.preprocess)
                    except ImageDecodeError as exc:
                        # Leave this one image out (image and pixel metrics alike, so maps, masks and
                        # scored records stay aligned) and say so; the rest keep their pixel metrics.
                        rec.error = f"its ground-truth mask {exc.path} could not be decoded: {exc.reason}"
                        notes.append(f"left out: {rec.path}: {rec.error}")
                        continue
                masks.append(mask)
            rec.score, rec.normalized, rec.predicted = res.image_score, res.normalized_score, res.label
            if res.anomaly_map is not None:
                maps.append(res.anomaly_map)

    ok = [r for r in records if r.error is None]
    labels = np.array([r.label for r in ok], dtype=np.int64)
    scores = np.array([r.score for r in ok], dtype=np.float64)
    maps_arr = np.stack(maps) if maps else None
    masks_arr = np.stack(masks) if masks else None

    result: dict[str, Any] = {"n_images": len(ok), "n_failed": len(records) - len(ok)}
    result["image_auroc"] = _metric(metrics.image_auroc, labels, scores, notes=notes, name="image AUROC")
    f1 = _metric(metrics.f1_max, labels, scores, notes=notes, name="image F1-max")
    result["image_f1_max"], result["image_f1_threshold"] = f1 if f1 else (None, None)
    predicted = scores >= pred.image_threshold
    tp = int((predicted & (labels == 1)).sum())
    result["at_threshold"] = {
        "threshold": pred.image_threshold,
        "true_positive_rate": tp / max(1, int((labels == 1).sum())),
        "false_positive_rate": int((predicted & (labels == 0)).sum()) / max(1, int((labels == 0).sum())),
        "precision": tp / max(1, int(predicted.sum())),
        "accuracy": float((predicted == (labels == 1)).mean()) if len(labels) else None,
    }
    if masks_arr is not None and maps_arr is not None:
        result.update(_pixel_block(masks_arr, maps_arr, notes, ""))
        pf1 = _metric(metrics.f1_max, masks_arr.ravel(), maps_arr.ravel(), notes=notes, name="pixel F1-max")
        result["pixel_f1_max"], result["pixel_f1_threshold"] = pf1 if pf1 else (None, None)

    per_kind: dict[str, dict[str, Any]] = {}
    kinds = [GOOD] + [d for d in split.defect_types]
    is_good = np.array([r.defect == GOOD for r in ok])
    for kind in kinds:
        sel = np.array([r.defect == kind for r in ok])
        if not sel.any():
            continue
        entry: dict[str, Any] = {"n": int(sel.sum()), "mean_score": float(scores[sel].mean()),
                                 "flagged_rate": float(predicted[sel].mean())}
        if kind != GOOD:
            both = sel | is_good
            entry["image_auroc"] = _metric(metrics.image_auroc, labels[both], scores[both], notes=notes,
                                           name=f"{kind}: image AUROC")
            if masks_arr is not None and maps_arr is not None:
                entry.update(_pixel_block(masks_arr[both], maps_arr[both], notes, f"{kind}: "))
        per_kind[kind] = entry

    warnings = [w for w in (category_warning(pred.manifest, split.category),
                            all_good_flagged_warning(int((predicted & (labels == 0)).sum()), int((labels == 0).sum()),
                                                     pred.image_threshold)) if w]
    manifest_sha = hashlib.sha256((pred.bundle_dir / MANIFEST).read_bytes()).hexdigest()
    return Evaluation(
        bundle=str(pred.bundle_dir), method=pred.method, category=split.category, dataset=str(split.root),
        threshold=pred.image_threshold, pixel_threshold=pred.pixel_threshold, records=records, metrics=result,
        per_kind=per_kind, notes=notes, manifest_sha256=manifest_sha, has_masks=use_masks,
        maps=maps_arr, masks=masks_arr, warnings=warnings,
    )


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_evaluation(ev: Evaluation) -> str:
    """A readable table: overall metrics, then one row per defect type and for good, then notes."""
    m = ev.metrics
    lines = [f"{ev.method} on {ev.category}: {m['n_images']} test images scored"
             + (f", {m['n_failed']} failed" if m["n_failed"] else "")]
    rows = [("image AUROC", m.get("image_auroc")), ("image F1-max", m.get("image_f1_max"))]
    if ev.has_masks:
        rows += [("pixel AUROC", m.get("pixel_auroc")), ("AUPRO (FPR<=0.3)", m.get("aupro")),
                 ("pixel F1-max", m.get("pixel_f1_max"))]
    lines += [f"  {name:<18} {_fmt(value)}" for name, value in rows]
    t = m["at_threshold"]
    lines.append(f"  at the bundle threshold {t['threshold']:.4g}: detected {t['true_positive_rate']:.1%} of anomalous, "
                 f"flagged {t['false_positive_rate']:.1%} of good")
    header = f"  {'kind':<14} {'n':>4} {'mean score':>11} {'flagged':>8} {'img AUROC':>10}"
    if ev.has_masks:
        header += f" {'pix AUROC':>10} {'AUPRO':>8}"
    lines.append(header)
    for kind, e in ev.per_kind.items():
        line = f"  {kind:<14} {e['n']:>4} {e['mean_score']:>11.4g} {e['flagged_rate']:>8.1%} {_fmt(e.get('image_auroc')):>10}"
        if ev.has_masks:
            line += f" {_fmt(e.get('pixel_auroc')):>10} {_fmt(e.get('aupro')):>8}"
        lines.append(line)
    lines += [f"  note: {note}" for note in ev.notes]
    return "\n".join(lines)


def format_eval_comparison(a: Evaluation, b: Evaluation) -> str:
    """Two evaluations of one test split side by side (e.g. an int8 bundle and its float32 one),
    with ``B - A`` per metric."""
    def bundle_line(tag: str, ev: Evaluation) -> str:
        return f"{tag}: {ev.bundle} ({ev.method})"

    names = [("image AUROC", "image_auroc"), ("image F1-max", "image_f1_max")]
    if a.has_masks and b.has_masks:
        names += [("pixel AUROC", "pixel_auroc"), ("AUPRO (FPR<=0.3)", "aupro")]
    lines = [f"comparison on {a.category} ({a.metrics['n_images']} test images)", bundle_line("A", a),
             bundle_line("B", b), f"  {'metric':<18} {'A':>8} {'B':>8} {'B - A':>8}"]
    for label, key in names:
        va, vb = a.metrics.get(key), b.metrics.get(key)
        diff = f"{vb - va:+.4f}" if va is not None and vb is not None else "n/a"
        lines.append(f"  {label:<18} {_fmt(va):>8} {_fmt(vb):>8} {diff:>8}")
    return "\n".join(lines)
