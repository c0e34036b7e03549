"""Does the runtime leak? Resident memory over many predictions with one bundle (not a unit test).

Loads a bundle once, then scores images one call at a time, ``--n`` times (default 10,000),
cycling through the given images (a mix of files that decode and files that are refused is
fine: both paths run). RSS is sampled every ``--every`` predictions; the report gives RSS after
warm-up, at the end, the growth between them, and the growth per 1,000 predictions.

    python benchmarks/soak.py BUNDLE IMAGE_OR_FOLDER... [--n 10000] [--every 500] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc; else ru_maxrss, a peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # noqa: PLC0415

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--n", type=int, default=10_000, help="predictions in all")
    ap.add_argument("--every", type=int, default=500, help="sample RSS every this many predictions")
    ap.add_argument("--warmup", type=int, default=200, help="predictions before the baseline RSS is taken")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write every sample here")
    args = ap.parse_args()

    from adx_cli.app import expand_inputs  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    paths = expand_inputs(args.inputs)
    predictor = Predictor.load(args.bundle)
    samples: list[tuple[int, float]] = [(0, rss_mib())]
    done = failed = 0
    base = None
    t0 = time.perf_counter()
    while done < args.n:
        batch = [paths[(done + i) % len(paths)] for i in range(min(args.batch_size, args.n - done))]
        for res in predictor.predict_files(batch, batch_size=args.batch_size):
            failed += not res.ok
        done += len(batch)
        if base is None and done >= args.warmup:
            base = (done, rss_mib())
        if done % args.every < len(batch) or done == args.n:
            samples.append((done, rss_mib()))
    seconds = time.perf_counter() - t0
    end = samples[-1]
    base = base or samples[0]
    growth = end[1] - base[1]
    per_k = growth / max(1, end[0] - base[0]) * 1000
    print(f"{done} predictions ({failed} refused files) in {seconds:.1f} s, {done / seconds:.1f} per s")
    print(f"RSS after {base[0]} (warm-up): {base[1]:.1f} MiB; after {end[0]}: {end[1]:.1f} MiB; "
          f"growth {growth:+.1f} MiB ({per_k:+.3f} MiB per 1,000 predictions)")
    print("samples (predictions: MiB): " + ", ".join(f"{n}: {m:.1f}" for n, m in samples))
    if args.json:
        args.json.write_text(json.dumps({"predictions": done, "failed": failed, "seconds": seconds,
                                         "baseline": base, "end": end, "growth_mib": growth,
                                         "growth_mib_per_1000": per_k, "samples": samples}, indent=2) + "\n")


if __name__ == "__main__":
    main()
