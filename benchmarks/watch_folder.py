"""The hot folder's throughput: images/s when ``--n`` files (default 1,000) arrive at once, with the
journal and without it (its overhead), side by side (a benchmark, not a unit test).

The files are copied into a staging folder first, then renamed into the watched folder in one
burst (as a camera's temp-then-rename writer would deliver them), so the copy is not timed. Time
runs from the first rename to the last record written; latency is per image, from "complete" to
"record handed to the sink". Records go to a file (fsync'd per batch, as with ``--output``). Each
mode gets a fresh folder and its own run; the predictor is loaded once and warmed up.

A last run drops ``--trickle`` files one every 100 ms, for the latency when the scorer keeps up.

    python benchmarks/watch_folder.py BUNDLE IMAGE_OR_FOLDER... [--n 1000] [--max-batch 8] [--runs 1] [--trickle 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def run_once(predictor: Any, sources: list[Path], n: int, max_batch: int, journal: bool,
             every_s: float = 0.0) -> dict[str, float]:
    """``n`` files renamed in at once (``every_s`` 0) or one every ``every_s`` seconds (a trickle)."""
    from adx_runtime.watch import JsonLinesSink, WatchOptions, watch  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="adx-watch-bench-") as tmp:
        root = Path(tmp)
        folder, stage = root / "in", root / "stage"
        folder.mkdir()
        stage.mkdir()
        names = []
        for i in range(n):
            src = sources[i % len(sources)]
            names.append(f"{i:06d}{src.suffix.lower()}")
            shutil.copyfile(src, stage / names[-1])
        opts = WatchOptions(max_batch=max_batch, max_delay_ms=50, max_images=n, max_seconds=3600,
                            journal_dir=root / "journal" if journal else None, status_s=3600)
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(watch(predictor, folder, [JsonLinesSink(root / "out.jsonl")],
                                                             opts)))
        t.start()
        time.sleep(0.5)  # the watcher's first scan and file events are up
        t0 = time.perf_counter()
        for name in names:
            os.rename(stage / name, folder / name)
            if every_s:
                time.sleep(every_s)
        t.join()
        seconds = time.perf_counter() - t0
        stats = out[0]
        assert stats.images == n, f"scored {stats.images} of {n}"
        return {"images_per_s": n / seconds, "p50_ms": stats.percentile(50), "p99_ms": stats.percentile(99),
                "errors": stats.errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--n", type=int, default=1000, help="files arriving at once")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1, help="runs per mode (the best is shown)")
    ap.add_argument("--trickle", type=int, default=100, help="then this many files, one every 100 ms: latency "
                    "when the scorer keeps up (0: skip)")
    args = ap.parse_args()

    from adx_runtime.inputs import expand_inputs  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    sources = expand_inputs(args.inputs)
    predictor = Predictor.load(args.bundle)
    list(predictor.predict_files(sources[: args.max_batch], batch_size=args.max_batch))  # warm-up
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.runs):
        for mode, journal in (("journal", True), ("no journal", False)):
            r = run_once(predictor, sources, args.n, args.max_batch, journal)
            if mode not in results or r["images_per_s"] > results[mode]["images_per_s"]:
                results[mode] = r
    print(f"{args.n} files, {predictor.method} bundle {args.bundle}, max batch {args.max_batch}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':12} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for mode, r in results.items():
        print(f"{mode:12} {r['images_per_s']:9.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}")
    overhead = results["no journal"]["images_per_s"] / results["journal"]["images_per_s"] - 1
    print(f"journal overhead: {overhead:+.1%} time per image")
    if args.trickle:
        r = run_once(predictor, sources, args.trickle, args.max_batch, True, every_s=0.1)
        print(f"trickle of {args.trickle} files at 10/s, journal on: latency p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
