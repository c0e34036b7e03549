"""Edge speed past float32 exact search, measured side by side in one run on this CPU.

For each method section, every variant is exported from one fitted model per category, evaluated on
that category's test split with the torch-free runtime (image AUROC, pixel AUROC, AUPRO), and timed
on the first category's test images. Timing is round-robin: each round times a few batches of every
variant in turn, and a variant's throughput is the median over rounds, so machine load (other
processes on the cores) falls on all variants alike.

Sections:

- ``patchcore``: {float32, int8 graph} x {Flat, SQ8, IVF-PQ, HNSW}, and float32 IVF-Flat, batch 16
  (the frontier);
- ``padim``: float32 store, float16 store, int8 graph, and the float32 bundle as earlier releases
  scored it (graph with run-time "same" padding, one full ``(P, d, d)`` matmul on one thread),
  batch 1;
- ``spade``: k_pixel = k (all 48 nearest images), 10 and 5, and the pixel coreset (0.1, 0.25 of
  the training map vectors), batch 16.

A variant is ``(fit options, export options)`` or ``(fit options, export options, runtime)``.
``runtime`` reproduces what earlier releases computed, in this run: ``full_matrix_distance``
replaces the Gaussian scorer's column blocks by the full lower-triangular matrices in one matmul
on the calling thread; ``faiss_flat_search`` searches an exact bank with FAISS instead of numpy;
``no_decode_ahead`` decodes each file on the calling thread instead of one batch ahead.
With the export option ``static_padding: False`` they give the earlier releases' bundles and
runtime side by side with today's.

    python benchmarks/edge_speed.py --data /tmp/demo --out /tmp/edge [--sections patchcore,padim,spade]

The demo dataset is generated into ``--data`` when it is not there (``adx demo-data``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adexport.export import export_bundle  # noqa: E402
from adexport.fitted import save_fitted  # noqa: E402
from adexport.fit_pipeline import train  # noqa: E402
from adx_runtime.evaluate import evaluate  # noqa: E402
from adx_runtime.predictor import Predictor  # noqa: E402
from adx_synth import generate_demo_dataset  # noqa: E402

CATEGORIES = ("weave", "grid", "wood", "tile")

#: name -> (method options at fit, export options); one fit per distinct method options.
SECTIONS: dict[str, dict[str, Any]] = {
    "patchcore": {"method": "patchcore", "batch": 16, "variants": {
        "float32 Flat": ({}, {}),
        "float32 Flat, earlier graph and FAISS search": ({}, {"static_padding": False},
                                                         {"faiss_flat_search": True, "no_decode_ahead": True}),
        "float32 SQ8": ({}, {"index_type": "SQ8"}),
        "float32 IVF64,PQ38 nprobe 8": ({}, {"index_type": "IVF64,PQ38", "search_params": {"nprobe": 8}}),
        "float32 HNSW32 efSearch 64": ({}, {"index_type": "HNSW32", "search_params": {"efSearch": 64}}),
        "float32 IVF64,Flat nprobe 8": ({}, {"index_type": "IVF64,Flat", "search_params": {"nprobe": 8}}),
        "float32 IVF64,Flat nprobe 16": ({}, {"index_type": "IVF64,Flat", "search_params": {"nprobe": 16}}),
        "int8 Flat": ({}, {"quantize": "int8"}),
        "int8 SQ8": ({}, {"quantize": "int8", "index_type": "SQ8"}),
        "int8 IVF64,PQ38 nprobe 8": ({}, {"quantize": "int8", "index_type": "IVF64,PQ38", "search_params": {"nprobe": 8}}),
        "int8 HNSW32 efSearch 64": ({}, {"quantize": "int8", "index_type": "HNSW32", "search_params": {"efSearch": 64}}),
    }},
    "padim": {"method": "padim", "batch": 1, "variants": {
        "float32 store": ({}, {}),
        "float32 store, no decode-ahead": ({}, {}, {"no_decode_ahead": True}),
        "float32 store, earlier graph and distance": ({}, {"static_padding": False},
                                                      {"full_matrix_distance": True, "no_decode_ahead": True}),
        "float16 store": ({"store_dtype": "float16"}, {}),
        "float16 store, int8 graph": ({"store_dtype": "float16"}, {"quantize": "int8"}),
    }},
    "spade": {"method": "spade", "batch": 16, "variants": {
        "k_pixel = k (48)": ({}, {}),
        "k_pixel 10": ({"k_pixel": 10}, {}),
        "k_pixel 5": ({"k_pixel": 5}, {}),
        "pixel_coreset 0.25": ({"pixel_coreset": 0.25}, {}),
        "pixel_coreset 0.1": ({"pixel_coreset": 0.1}, {}),
    }},
}


def full_matrix_distance(predictor: Predictor) -> None:
    """Score with the full ``(P, d, d)`` factors in one matmul on the calling thread, as earlier
    releases did."""
    import numpy as np  # noqa: PLC0415

    blocks = predictor.scorer.chol
    full = np.zeros((blocks.positions, blocks.dim, blocks.dim), np.float32)
    for a, block in zip(blocks.starts, blocks.blocks):
        full[:, a:, a : a + block.shape[2]] = block
    predictor.scorer.chol = full


def faiss_flat_search(predictor: Predictor) -> None:
    """Search the exact bank with FAISS, as earlier releases did on the CPU."""
    from adx_runtime.knn import FaissBank  # noqa: PLC0415

    section = predictor.manifest["scoring"]["bank"]
    predictor.scorer.bank = FaissBank.load(predictor.bundle_dir / section["file"])


def no_decode_ahead(predictor: Predictor) -> None:
    """Decode on the calling thread, as earlier releases did."""
    predictor.decode_ahead = 0


RUNTIME_TWEAKS = {"full_matrix_distance": full_matrix_distance, "faiss_flat_search": faiss_flat_search,
                  "no_decode_ahead": no_decode_ahead}


def throughput(bundles: dict[str, Path], images: list[Path], batch: int, rounds: int, batches: int,
               runtime: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """Median images/s per bundle over round-robin rounds (each round: ``batches`` batches per bundle)."""
    predictors = {name: Predictor.load(path) for name, path in bundles.items()}
    for name, tweaks in (runtime or {}).items():
        for tweak, on in tweaks.items():
            if on:
                RUNTIME_TWEAKS[tweak](predictors[name])
    feed = [images[i % len(images)] for i in range(batch * batches * (16 if batch == 1 else 1))]  # batch 1: 16x more batches per round
    for p in predictors.values():  # warm-up
        list(p.predict_files(feed[:batch], batch_size=batch))
    samples: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, p in predictors.items():
            t = time.perf_counter()
            list(p.predict_files(feed, batch_size=batch))
            samples[name].append(len(feed) / (time.perf_counter() - t))
    return {name: statistics.median(v) for name, v in samples.items()}


def run_section(name: str, data: Path, out: Path, categories: list[str], rounds: int, batches: int) -> dict[str, Any]:
    spec = SECTIONS[name]
    method, variants = spec["method"], spec["variants"]
    results: dict[str, Any] = {"method": method, "batch": spec["batch"], "variants": {v: {"metrics": {}} for v in variants}}
    fits: dict[str, dict[str, float]] = {}
    bundles_first: dict[str, Path] = {}
    for cat in categories:
        models: dict[str, Path] = {}
        for variant, (fit_options, export_options, *_) in variants.items():
            key = json.dumps(fit_options, sort_keys=True)
            if key not in models:
                t = time.perf_counter()
                fitted = train(data, cat, method, options=fit_options or None)
                fits.setdefault(key, {})[cat] = time.perf_counter() - t
                models[key] = save_fitted(fitted, out / name / cat / f"model{len(models)}", overwrite=True)
            bundle = out / name / cat / variant.replace(" ", "_").replace(",", "").replace("=", "").replace("(", "").replace(")", "")
            try:
                manifest = export_bundle(models[key], bundle, overwrite=True, **export_options)
            except Exception as exc:  # an export refused (parity, tolerance): reported as such
                results["variants"][variant]["metrics"][cat] = {"refused": str(exc).splitlines()[0][:200]}
                continue
            ev = evaluate(bundle, data, cat)
            entry = {k: ev.metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
            entry["bundle_mb"] = sum(f["bytes"] for f in manifest["files"]) / 1e6
            if "approximation" in manifest["scoring"].get("bank", {}):
                a = manifest["scoring"]["bank"]["approximation"]
                entry.update(recall_at_1=a["recall_at_1"], distance_rel_error=a["distance_rel_error"])
            if "quantization" in manifest:
                entry["int8_error"] = manifest["quantization"]["measured_error"]
            results["variants"][variant]["metrics"][cat] = entry
            if cat == categories[0]:
                bundles_first[variant] = bundle
            print(f"  {name} {cat} {variant}: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.items()
                                                          if isinstance(v, float)), flush=True)
    images = sorted((data / categories[0] / "test").glob("*/*.png"))
    runtime = {v: spec_v[2] for v, spec_v in variants.items() if len(spec_v) > 2}
    speed = throughput(bundles_first, images, spec["batch"], rounds, batches, runtime)
    for variant, ips in speed.items():
        results["variants"][variant]["images_per_s"] = ips
    results["fit_seconds"] = fits
    return results


def format_section(name: str, r: dict[str, Any], categories: list[str]) -> str:
    first = next(iter(r["variants"]))
    base = r["variants"][first].get("images_per_s")
    lines = [f"{name}, batch {r['batch']}: throughput on {categories[0]} test images; per category image AUROC / "
             f"pixel AUROC / AUPRO; the largest drop from '{first}' over the categories (negative: worse; "
             "positive: every category better)"]
    head = f"  {'variant':<44} {'img/s':>7} {'ratio':>6}  " + "  ".join(f"{c:<20}" for c in categories) + "  d img   d pix"
    lines.append(head)
    for variant, v in r["variants"].items():
        ips = v.get("images_per_s")
        cells, d_img, d_pix = [], float("inf"), float("inf")
        for c in categories:
            m = v["metrics"].get(c, {})
            if "refused" in m:
                cells.append(f"{'refused':<20}")
                continue
            ref = r["variants"][first]["metrics"].get(c, {})
            if m and ref and "refused" not in ref:
                d_img = min(d_img, m["image_auroc"] - ref["image_auroc"])
                d_pix = min(d_pix, m["pixel_auroc"] - ref["pixel_auroc"])
            cells.append(f"{m.get('image_auroc', 0):.3f}/{m.get('pixel_auroc', 0):.3f}/{m.get('aupro', 0):.3f}".ljust(20))
        speed = f"{ips:>7.1f} {ips / base:>5.2f}x" if ips and base else f"{'-':>7} {'-':>6}"
        drops = "  ".join(f"{d:+.4f}" if d != float("inf") else "   -   " for d in (d_img, d_pix))
        lines.append(f"  {variant:<44} {speed}  " + "  ".join(cells) + f"  {drops}")
    for key, per_cat in r["fit_seconds"].items():
        lines.append(f"  fit {key}: " + ", ".join(f"{c} {s:.1f} s" for c, s in per_cat.items()))
    return "\n".join(lines)


def format_markdown(r: dict[str, Any], categories: list[str]) -> str:
    """One section as the README's table: img/s, ratio, per-category AUROCs, the largest drops."""
    first = next(iter(r["variants"]))
    base = r["variants"][first].get("images_per_s")
    lines = ["| variant | img/s | vs first | " + " | ".join(categories) + " | image AUROC, largest drop | pixel AUROC, largest drop |",
             "| --- | --- | --- | " + " | ".join("---" for _ in categories) + " | --- | --- |"]
    for variant, v in r["variants"].items():
        ips = v.get("images_per_s")
        cells, d_img, d_pix = [], float("inf"), float("inf")
        for c in categories:
            m, ref = v["metrics"].get(c, {}), r["variants"][first]["metrics"].get(c, {})
            if "refused" in m:
                cells.append("refused")
                continue
            if m and ref and "refused" not in ref:
                d_img = min(d_img, m["image_auroc"] - ref["image_auroc"])
                d_pix = min(d_pix, m["pixel_auroc"] - ref["pixel_auroc"])
            cells.append(f"{m['image_auroc']:.3f} / {m['pixel_auroc']:.3f} / {m['aupro']:.3f}")
        speed = f"{ips:.1f} | {ips / base:.2f}x" if ips and base else "- | -"
        drops = " | ".join(f"{d:+.4f}" if d != float("inf") else "-" for d in (d_img, d_pix))
        lines.append(f"| {variant} | {speed} | " + " | ".join(cells) + f" | {drops} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sections", default="patchcore,padim,spade")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=2, help="batches per variant per round")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--from-json", type=Path, help="print the tables of an earlier run's --json (no run)")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown (the README's)")
    args = ap.parse_args()
    categories = [c for c in args.categories.split(",") if c]
    if args.from_json:
        for name, r in json.loads(args.from_json.read_text(encoding="utf-8")).items():
            print(f"\n{name}, batch {r['batch']}\n\n{format_markdown(r, categories)}" if args.markdown
                  else format_section(name, r, categories))
        return
    if args.data is None or args.out is None:
        ap.error("--data and --out are required (unless --from-json)")
    if not all((args.data / c).is_dir() for c in categories):
        generate_demo_dataset(args.data, categories)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    all_results = {}
    for name in [s for s in args.sections.split(",") if s]:
        all_results[name] = run_section(name, args.data, args.out, categories, args.rounds, args.batches)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name, r in all_results.items():
        print(format_section(name, r, categories))
        if args.markdown:
            print(f"\n{format_markdown(r, categories)}\n")
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
