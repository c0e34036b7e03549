"""``adx bench``: latency and throughput of a bundle with the torch-free runtime.

For each batch size: warm-up batches, then timed batches of real image files, each split into
decode+preprocess, graph (ONNX Runtime), scoring (bank search or density) and post-processing
(upsample + blur). Latency percentiles are per batch and per image; throughput is images per
second of wall time. Also: peak resident memory of the process, the bundle's size on disk and the
providers actually used. ``--compare`` runs each bundle in its own fresh process of this runtime
(so each one's memory is its own) and prints both side by side with ratios.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue as queue_module
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adx_runtime.errors import AdxError, ConfigError
from adx_runtime.images import IMAGE_SUFFIXES
from adx_runtime.kinds import parse_scoring
from adx_runtime.predictor import STAGES, Predictor
from adx_runtime.progress import SILENT, Progress

STAGE_LABELS = {"preprocess": "decode+preprocess", "graph": "graph", "scoring": "scoring", "postprocess": "post"}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``getrusage``: its ``ru_maxrss`` survives
    ``exec``, so a benchmark process spawned by a 2.8 GB training process reported 2.8 GB whatever
    its bundle took. Elsewhere ``getrusage`` (KiB on Linux, bytes on macOS: this path is Linux's)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bundle_size_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def default_images(predictor: Predictor, n: int = 16) -> tuple[list[Path], str]:
    """Images to time with: the bundle's recorded parity images if they exist, else generated ones."""
    recorded = [Path(p) for p in predictor.manifest.get("training", {}).get("parity_images", [])]
    recorded = [p for p in recorded if p.is_file()]
    if recorded:
        return recorded, "the bundle's parity images (recorded at training)"
    from adx_synth import generate_demo_dataset  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="adx-bench-"))
    generate_demo_dataset(tmp, ["weave"], n_train=n, n_test_good=1, n_test_per_defect=1, image_size=160)
    return sorted((tmp / "weave" / "train" / "good").glob("*.png")), "generated demo images (160 px)"


def scoring_data(manifest: dict[str, Any], search_params: dict[str, float] | None = None) -> str:
    """What the scorer reads, in words: e.g. ``memory_bank.faiss (Flat)`` or ``gaussian.npz (float16)``,
    with the graph's precision when it is not float32."""
    section = parse_scoring(manifest["scoring"], manifest.get("method"))  # the kind says what its data is
    detail = section.describe(search_params)
    if manifest["graph"].get("precision", "float32") != "float32":
        detail = f"{manifest['graph']['precision']} graph" + (f", {detail}" if detail else "")
    files = [f["path"] for f in manifest["files"] if f["kind"] != "onnx-graph" and f["kind"] != "tensorrt-engine"]
    if len(files) > 3:
        files = files[:2] + [f"... ({len(files)} files)"]
    if not files:
        return f"no scoring data (kind {section.kind}: the graph outputs the map)"
    return ", ".join(files) + (f" ({detail})" if detail else "")


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64) * 1000.0
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)),
            "mean": float(v.mean())}


def run_bench(
    bundle: str | Path,
    *,
    images: Sequence[str | Path] | None = None,
    batch_sizes: Sequence[int] = (1, 4, 16),
    runs: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    bank_device: str = "auto",
    threads: int = 0,
    search_params: dict[str, float] | None = None,
    progress: Progress = SILENT,
) -> dict[str, Any]:
    """Time the bundle; returns every figure (also what ``--json`` writes)."""
    if runs < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError("need runs >= 1, warmup >= 0 and batch sizes >= 1")
    root = Path(bundle)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    predictor = Predictor.load(root, device=device, bank_device=bank_device, threads=threads,
                               search_params=search_params)
    load_seconds = time.perf_counter() - t0
    if images:
        files, source = [Path(p) for p in images], f"{len(images)} given images"
    else:
        files, source = default_images(predictor)
    files = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ConfigError("no image files to benchmark with")
    cycle = itertools.cycle(files)
    timer = predictor.timer
    results = []
    for b in batch_sizes:
        with progress.task(f"batch {b}: {warmup} warm-up + {runs} timed batches", warmup + runs) as advance:
            for _ in range(warmup):
                list(predictor.predict_files([next(cycle) for _ in range(b)], batch_size=b))
                advance(1)
            timer.records.clear()
            timer.enabled = True
            latencies = []
            tiles_before, pixels = predictor.tiles_scored, 0
            for _ in range(runs):
                batch = [next(cycle) for _ in range(b)]
                t = time.perf_counter()
                out = list(predictor.predict_files(batch, batch_size=b))
                latencies.append(time.perf_counter() - t)
                if any(not r.ok for r in out):
                    bad = next(r for r in out if not r.ok)
                    raise ConfigError(f"benchmark image {bad.path} could not be scored: {bad.error}")
                pixels += sum(r.size[0] * r.size[1] for r in out if r.size)
                advance(1)
            timer.enabled = False
            tiles = predictor.tiles_scored - tiles_before
        stage_totals = {s: float(np.sum(timer.records.get(s, [0.0]))) for s in STAGES}
        total = float(np.sum(latencies))
        results.append({
            "batch_size": b,
            "latency_ms_per_batch": _percentiles(latencies),
            "latency_ms_per_image": _percentiles(np.asarray(latencies) / b),
            "throughput_images_per_s": b * runs / total,
            "megapixels_per_s": pixels / 1e6 / total,  # of the images as sent
            "tiles_per_s": tiles / total if predictor.tiled else None,
            "tiles_per_image": tiles / (b * runs) if predictor.tiled else None,
            "stage_ms_per_image": {s: 1000.0 * v / (b * runs) for s, v in stage_totals.items()},
            "stage_share": {s: v / total for s, v in stage_totals.items()},
            "other_ms_per_image": 1000.0 * (total - sum(stage_totals.values())) / (b * runs),
        })
    return {
        "bundle": str(root),
        "method": predictor.method,
        "scoring_data": scoring_data(predictor.manifest, search_params),
        "device": device,
        "providers": predictor.providers,
        "scoring_backend": predictor.scorer.backend,
        "bundle_mb": bundle_size_bytes(root) / 1e6,
        "load_seconds": load_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before,
        "images": source,
        "runs": runs,
        "warmup": warmup,
        "torch_imported": any(m == "torch" or m.startswith("torch.") for m in sys.modules),
        "results": results,
    }


def _bench_worker(bundle: str, kwargs: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(("ok", run_bench(bundle, **kwargs)))
    except AdxError as exc:
        queue.put(("error", str(exc)))
    except BaseException as exc:  # anything else still has to come back as a message
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def bench_in_subprocess(bundle: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_bench` in a fresh process of this runtime (``spawn``: nothing inherited, so the
    memory figures are the bundle's own); same keyword arguments, without ``progress``."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_bench_worker, args=(str(bundle), kwargs, queue), daemon=True)
    proc.start()
    try:
        while True:
            try:
                status, payload = queue.get(timeout=1.0)
                break
            except queue_module.Empty:
                if not proc.is_alive():  # died without a word (killed, out of memory, a crash)
                    status, payload = "error", f"the benchmark process exited with code {proc.exitcode}"
                    break
    finally:
        proc.join()
    if status != "ok":
        raise ConfigError(f"benchmark of {bundle} failed: {payload}")
    return payload


def compare_bundles(a: str | Path, b: str | Path, **kwargs: Any) -> tuple[dict[str, Any], str]:
    """Benchmark two bundles, each in its own process; returns ``{"a", "b"}`` and the text with
    both reports and the side-by-side ratios."""
    ra, rb = bench_in_subprocess(a, **kwargs), bench_in_subprocess(b, **kwargs)
    return {"a": ra, "b": rb}, "\n".join([format_report(ra), format_report(rb), format_comparison(ra, rb)])


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['bundle']}: {r['method']}, {r['scoring_data']}, providers {', '.join(r['providers'])}, "
        f"scoring on {r['scoring_backend']}",
        f"  bundle {r['bundle_mb']:.1f} MB on disk, loaded in {r['load_seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
        f"torch imported: {'yes' if r['torch_imported'] else 'no'}; images: {r['images']}; {r['warmup']} warm-up + "
        f"{r['runs']} timed batches",
        f"  {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'ms/img':>7} {'img/s':>7}   "
        + " ".join(f"{STAGE_LABELS[s]:>17}" for s in STAGES),
    ]
    for x in r["results"]:
        lat = x["latency_ms_per_batch"]
        split = " ".join(f"{x['stage_ms_per_image'][s]:>8.2f} ms {x['stage_share'][s]:>4.0%}" for s in STAGES)
        lines.append(f"  {x['batch_size']:>5} {lat['p50']:>8.1f} {lat['p90']:>8.1f} {lat['p99']:>8.1f} "
                     f"{x['latency_ms_per_image']['p50']:>7.2f} {x['throughput_images_per_s']:>7.1f}   {split}")
    for x in r["results"]:
        if x.get("tiles_per_s") is not None:  # a tiled bundle: what the images cost in tiles and pixels
            lines.append(f"  batch {x['batch_size']}: {x['tiles_per_image']:.1f} tiles per image, {x['tiles_per_s']:.1f} "
                         f"tiles/s, {x['megapixels_per_s']:.2f} megapixels/s")
    return "\n".join(lines)


def format_comparison(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Two benchmark results side by side, with B / A ratios."""
    def ratio(x: float, y: float) -> str:
        return f"{y / x:.2f}x" if x else "-"

    lines = [f"A: {a['bundle']} ({a['scoring_data']}, {a['scoring_backend']})",
             f"B: {b['bundle']} ({b['scoring_data']}, {b['scoring_backend']})",
             f"  {'':<34} {'A':>10} {'B':>10} {'B/A':>7}"]
    for label, key in (("bundle MB", "bundle_mb"), ("peak RSS MB", "peak_rss_mb"), ("load s", "load_seconds")):
        lines.append(f"  {label:<34} {a[key]:>10.2f} {b[key]:>10.2f} {ratio(a[key], b[key]):>7}")
    for xa, xb in zip(a["results"], b["results"]):
        bs = xa["batch_size"]
        rows = [(f"batch {bs} img/s", xa["throughput_images_per_s"], xb["throughput_images_per_s"]),
                (f"batch {bs} p50 ms/batch", xa["latency_ms_per_batch"]["p50"], xb["latency_ms_per_batch"]["p50"])]
        rows += [(f"batch {bs} {STAGE_LABELS[s]} ms/img", xa["stage_ms_per_image"][s], xb["stage_ms_per_image"][s])
                 for s in STAGES]
        for label, va, vb in rows:
            lines.append(f"  {label:<34} {va:>10.2f} {vb:>10.2f} {ratio(va, vb):>7}")
    return "\n".join(lines)
