"""``adx demo``: the whole job on the built-in dataset: generate, train, export, infer, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from adexport.export import export_bundle
from adexport.fitted import save_fitted
from adexport.fit_pipeline import train
from adx_runtime.evaluate import Evaluation, evaluate
from adx_runtime.images import decode_image
from adx_runtime.overlay import save_overlay
from adx_runtime.predictor import Predictor
from adx_runtime.progress import SILENT, Progress
from adx_synth import DEMO_CATEGORIES, count_demo_images, generate_demo_dataset


@dataclass
class DemoResult:
    category: str
    fit_seconds: float
    bundle: Path
    heatmaps: Path | None  # None: the method has no maps (image-level scores only)
    evaluation: Evaluation
    parity: dict[str, Any] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    categories: Sequence[str] | None = None,
    *,
    method: str = "patchcore",
    options: dict[str, Any] | None = None,
    n_train: int = 60,
    image_size: int = 160,
    seed: int = 0,
    progress: Progress = SILENT,
) -> list[DemoResult]:
    """Run the demo into ``out``: ``data/``, then ``models/``, ``bundles/``, ``heatmaps/`` per method."""
    out = Path(out)
    cats = list(categories) if categories else list(DEMO_CATEGORIES)
    data = out / "data"
    if not all((data / c / "train").is_dir() for c in cats):
        total = count_demo_images(cats, n_train=n_train)
        with progress.task(f"Generating the demo dataset ({total} images)", total) as advance:
            generate_demo_dataset(data, cats, n_train=n_train, image_size=image_size, seed=seed, progress=advance)
    results = []
    for cat in cats:
        progress.note(f"[{cat}] training {method}")
        t0 = time.perf_counter()
        fitted = train(data, cat, method, options=options, progress=progress)
        fit_seconds = time.perf_counter() - t0
        model_dir = save_fitted(fitted, out / "models" / method / cat, overwrite=True)
        bundle = out / "bundles" / method / cat
        manifest = export_bundle(model_dir, bundle, overwrite=True, progress=progress)
        predictor = Predictor.load(bundle)
        evaluation = evaluate(bundle, data, cat, progress=progress, predictor=predictor)
        heatmaps: Path | None = None
        if evaluation.maps is not None:
            heatmaps = out / "heatmaps" / method / cat
            for rec, raw_map in zip(evaluation.scored, evaluation.maps):
                name = f"{rec.defect}_{Path(rec.path).stem}_heatmap.png"
                save_overlay(decode_image(rec.path), predictor.normalized_maps(raw_map), predictor.preprocess,
                             heatmaps / name)
        results.append(DemoResult(cat, fit_seconds, bundle, heatmaps, evaluation, manifest["parity"]))
    return results


def format_demo(results: Sequence[DemoResult], out: str | Path) -> str:
    """The demo's closing table: fit time and metrics per category, where the heatmaps went."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["", f"{'category':<10} {'fit s':>6} {'img AUROC':>10} {'pix AUROC':>10} {'AUPRO':>7}  heatmaps"]
    for r in results:
        m = r.evaluation.metrics
        where = str(r.heatmaps) if r.heatmaps else "none: image-level method"
        lines.append(f"{r.category:<10} {r.fit_seconds:>6.1f} {fmt(m.get('image_auroc')):>10} "
                     f"{fmt(m.get('pixel_auroc')):>10} {fmt(m.get('aupro')):>7}  {where}")
    lines.append(f"bundles in {Path(out) / 'bundles'}; score more images with: adx infer {results[0].bundle} IMAGES...")
    return "\n".join(lines)
