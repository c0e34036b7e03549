"""``adx bench-fit``: where fit and export time goes, on generated data of a given size.

Phases: imports (torch, timm), backbone set-up, feature extraction, coreset selection (or the
method's own fitting step), calibration, saving, ONNX export, scoring data, parity check. Every
method reports through the same phases dictionary (``FitReport.phases``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from adexport.export import export_bundle
from adexport.fitted import save_fitted
from adexport.fit_pipeline import train
from adx_runtime.bench import peak_rss_mb
from adx_runtime.progress import SILENT, Progress
from adx_synth import generate_demo_dataset


def bench_fit(
    *,
    method: str = "patchcore",
    options: dict[str, Any] | None = None,
    n_train: int = 60,
    data_size: int = 160,
    category: str = "weave",
    out: str | Path | None = None,
    export_options: dict[str, Any] | None = None,
    import_seconds: float = 0.0,
    progress: Progress = SILENT,
) -> dict[str, Any]:
    """Generate ``n_train`` normal images of ``data_size`` px, fit, save and export; time each phase.

    Args:
        out: keep the data, model and bundle here (for ``adx bench`` on the bundle); default: a
            temporary folder that is removed.
        export_options: method export options (``bank``, ``index_type``, ...: keys of
            :data:`adx_runtime.export_options.METHOD_EXPORT_OPTIONS`) passed to the export; a method
            refuses the ones it does not honour.
        import_seconds: time the caller spent importing the training stack, reported as a phase.
    """
    holder = None if out else tempfile.TemporaryDirectory(prefix="adx-bench-fit-")
    root = Path(out) if out else Path(holder.name)  # type: ignore[union-attr]
    try:
        t = time.perf_counter()
        generate_demo_dataset(root / "data", [category], n_train=n_train, n_test_good=4, n_test_per_defect=1,
                              image_size=data_size)
        data_seconds = time.perf_counter() - t

        t = time.perf_counter()
        fitted = train(root / "data", category, method, options=options, progress=progress)
        fit_wall = time.perf_counter() - t
        t = time.perf_counter()
        save_fitted(fitted, root / "model", overwrite=True)
        save_seconds = time.perf_counter() - t
        t = time.perf_counter()
        manifest = export_bundle(root / "model", root / "bundle", **(export_options or {}), overwrite=True,
                                 progress=progress)
        export_wall = time.perf_counter() - t
        backbone = fitted.backbone  # None for a method without one (RIAD's U-Net sees pixels)
        phases = {"imports": import_seconds, **fitted.report.phases, "save": save_seconds,
                  **manifest["export_seconds"]}
        return {
            "method": method,
            "setup": {"n_train": n_train, "data_size": data_size, "category": category,
                      "model_input": manifest["input"]["input_size"], "backbone": backbone.name if backbone else None,
                      "weights": backbone.weights if backbone else None, "config": manifest["method_config"]},
            "sizes": fitted.report.sizes,
            "phases_seconds": phases,
            "fit_seconds": fit_wall,
            "fit_seconds_with_imports": fit_wall + import_seconds,
            "export_seconds": export_wall,
            "data_generation_seconds": data_seconds,
            "bundle_mb": sum(f["bytes"] for f in manifest["files"]) / 1e6,
            "parity_max_rel": {k: v["max_rel"] for k, v in manifest["parity"]["errors"].items()},
            "peak_rss_mb": peak_rss_mb(),
            "kept_in": str(root) if out else None,
        }
    finally:
        if holder is not None:
            holder.cleanup()


def format_fit_report(r: dict[str, Any]) -> str:
    s = r["setup"]
    backbone = f"backbone {s['backbone']} ({s['weights']})" if s["backbone"] else "no backbone"
    lines = [f"{r['method']} fit benchmark: {s['n_train']} normal images of {s['data_size']} px ({s['category']}), "
             f"model input {s['model_input'][0]} px, {backbone}",
             f"  {r['sizes']}"]
    total = sum(r["phases_seconds"].values())
    for name, sec in r["phases_seconds"].items():
        lines.append(f"  {name:<20} {sec:>7.2f} s {sec / total:>5.0%}")
    lines.append(f"  fit (train() wall)   {r['fit_seconds']:>7.2f} s; with imports {r['fit_seconds_with_imports']:.2f} s")
    lines.append(f"  export (wall)        {r['export_seconds']:>7.2f} s; bundle {r['bundle_mb']:.1f} MB; "
                 f"peak RSS {r['peak_rss_mb']:.0f} MB")
    lines.append("  parity max rel error " + ", ".join(f"{k} {v:.1e}" for k, v in r["parity_max_rel"].items()))
    if r["kept_in"]:
        lines.append(f"  kept in {r['kept_in']} (run: adx bench {r['kept_in']}/bundle)")
    return "\n".join(lines)
