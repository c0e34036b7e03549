"""``adx watch`` on video: sustained frames/s and end-to-end latency for a 1080p 30 FPS clip, drops
per minute for a live source at 30 FPS, and an RSS soak (a benchmark, not a unit test).

The clip is generated here with PyAV: demo images (the bundles' own test images, or ``--images``)
scaled to 1080x1080 in the middle of a grey 1920x1080 frame, H.264 (libx264, yuv420p), as a camera
would send it; ``--roi 420,0,1080,1080`` cuts the part out again before the bundle's preprocessing.

1. File: every frame, as fast as it goes, at ``--max-batch 1`` and with micro-batching (``--batch``);
   frames/s from the first frame to the last record; latency is decoded -> record handed to the
   sink (for a file it includes the wait in the decode-ahead queue, at most one batch).
2. Live: the clip played at its own 30 FPS over and over for ``--live-seconds``, read by the live
   source (newest frames kept, older dropped): frames scored per second, frames dropped per minute,
   latency.
3. Soak: ``--soak`` small frames (160x160) of a file through the loop; the process's RSS at the
   start, the middle and the end.

    python benchmarks/watch_video.py --bundle patchcore=PATH --bundle padim=PATH [--seconds 4]
        [--batch 8] [--live-seconds 20] [--soak 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

ROI = (420, 0, 1080, 1080)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def demo_images(bundle: Path, given: list[str]) -> list[Path]:
    if given:
        from adx_runtime.inputs import expand_inputs  # noqa: PLC0415

        return [Path(p) for p in expand_inputs(given)]
    manifest = json.loads((bundle / "manifest.json").read_text())
    root = Path(manifest["training"]["root"]) / manifest["training"]["category"] / "test"
    images = sorted(root.glob("*/*.png"))
    if not images:
        raise SystemExit(f"no demo test images under {root}; pass --images")
    return images


def write_clip(path: Path, images: list[Path], frames: int, size: tuple[int, int], part: int, codec: str,
               fps: int = 30) -> None:
    import av  # noqa: PLC0415

    w, h = size
    pictures = []
    for p in images[:16]:
        canvas = np.full((h, w, 3), 96, np.uint8)
        img = np.asarray(Image.open(p).convert("RGB").resize((part, part), Image.BILINEAR))
        x, y = (w - part) // 2, (h - part) // 2
        canvas[y:y + part, x:x + part] = img
        pictures.append(canvas)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "bgr0"
        if codec == "libx264":
            stream.options = {"preset": "veryfast"}  # writing the clip is not what is measured
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pictures[(i // 15) % len(pictures)],
                                                                   format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class CountingSink:
    """Counts records (and samples RSS at given counts); writes nothing, so the sink costs nothing."""

    name = "counter"

    def __init__(self, rss_at: tuple[int, ...] = ()):
        self.count = 0
        self.first = self.last = 0.0
        self.rss_at, self.rss = rss_at, {}

    def open(self) -> None:
        pass

    def write(self, records: list[dict[str, Any]]) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.last = now
        for _ in records:
            self.count += 1
            if self.count in self.rss_at:
                self.rss[self.count] = rss_mb()

    def close(self) -> None:
        pass


def file_run(predictor: Any, clip: Path, batch: int) -> dict[str, float]:
    from adx_runtime.watch import WatchOptions, watch  # noqa: PLC0415

    sink = CountingSink()
    t0 = time.perf_counter()
    stats = watch(predictor, str(clip), [sink], WatchOptions(max_batch=batch, max_delay_ms=50, roi=ROI,
                                                                status_s=3600))
    seconds = time.perf_counter() - t0
    return {"fps": stats.images / seconds, "p50": stats.percentile(50), "p99": stats.percentile(99),
            "frames": stats.images}


def looped(clip: Path, seconds: float) -> Iterator[tuple[np.ndarray, float | None]]:
    """The clip at its own frame rate, over and over, for ``seconds``: a 30 FPS camera."""
    from adx_runtime.watch.video import pyav_frames  # noqa: PLC0415

    t0, offset = time.monotonic(), 0.0
    while time.monotonic() - t0 < seconds:
        last = 0.0
        for image, pts in pyav_frames(str(clip), realtime=True):
            last = pts or 0.0
            yield image, offset + last
            if time.monotonic() - t0 >= seconds:
                return
        offset += last + 1 / 30


def live_run(predictor: Any, clip: Path, batch: int, seconds: float) -> dict[str, float]:
    from adx_runtime.watch import LiveSource, WatchOptions, watch  # noqa: PLC0415

    source = LiveSource(lambda: looped(clip, seconds + 5), "camera", capacity=batch, roi=ROI, reconnect=False)
    sink = CountingSink()
    t0 = time.perf_counter()
    stats = watch(predictor, source, [sink], WatchOptions(max_batch=batch, max_delay_ms=10, max_seconds=seconds,
                                                          status_s=3600))
    # The reader runs until watch() returns (the last batch is scored after the time limit): the
    # rates are over that whole span.
    span = time.perf_counter() - t0
    return {"fps": stats.images / span, "read": source.read / span, "drops_per_min": source.dropped / span * 60,
            "p50": stats.percentile(50), "p99": stats.percentile(99), "buffered": source.max_buffered}


def soak(predictor: Any, images: list[Path], n: int, tmp: Path) -> dict[int, float]:
    from adx_runtime.watch import WatchOptions, watch  # noqa: PLC0415

    clip = tmp / "soak.mkv"
    write_clip(clip, images, n, (160, 160), 160, "ffv1")
    marks = (1, n // 2, n)
    sink = CountingSink(rss_at=marks)
    watch(predictor, str(clip), [sink], WatchOptions(max_batch=8, status_s=3600))
    return {k: sink.rss.get(k, float("nan")) for k in marks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, help="NAME=PATH, repeatable")
    ap.add_argument("--images", nargs="*", default=[], help="pictures for the clip [default: the first "
                    "bundle's demo test images]")
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length at 30 FPS")
    ap.add_argument("--batch", type=int, default=8, help="micro-batch size (besides 1)")
    ap.add_argument("--live-seconds", type=float, default=20.0, help="live run per bundle (0: skip)")
    ap.add_argument("--soak", type=int, default=3000, help="frames of the RSS soak (0: skip)")
    args = ap.parse_args()

    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    bundles = dict(b.split("=", 1) for b in args.bundle)
    predictors = {name: Predictor.load(path) for name, path in bundles.items()}
    images = demo_images(Path(next(iter(bundles.values()))), args.images)
    frames = int(args.seconds * 30)
    with tempfile.TemporaryDirectory(prefix="adx-watch-video-") as tmp:
        clip = Path(tmp) / "clip1080.mp4"
        t0 = time.perf_counter()
        write_clip(clip, images, frames, (1920, 1080), 1080, "libx264")
        print(f"clip: 1920x1080, 30 FPS, {frames} frames, H.264 ({clip.stat().st_size / 1e6:.1f} MB, "
              f"written in {time.perf_counter() - t0:.1f} s); --roi {','.join(map(str, ROI))}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for p in predictors.values():  # warm-up: sessions, FAISS, first allocations
            p.predict([np.zeros((1080, 1080, 3), np.uint8)] * 2)
        print("\nfile, every frame as fast as it goes:")
        print(f"{'bundle':10} {'batch':>5} {'frames/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for name, p in predictors.items():
            for batch in (1, args.batch):
                r = file_run(p, clip, batch)
                assert r["frames"] == frames, r
                print(f"{name:10} {batch:5d} {r['fps']:9.1f} {r['p50']:8.1f} {r['p99']:8.1f}", flush=True)
        if args.live_seconds:
            print(f"\nlive source at 30 FPS for {args.live_seconds:g} s (the clip looped at its own rate):")
            print(f"{'bundle':10} {'batch':>5} {'read/s':>7} {'scored/s':>9} {'drops/min':>10} {'p50 ms':>8} "
                  f"{'p99 ms':>8} {'max buffered':>13}")
            for name, p in predictors.items():
                for batch in (1, args.batch):
                    r = live_run(p, clip, batch, args.live_seconds)
                    print(f"{name:10} {batch:5d} {r['read']:7.1f} {r['fps']:9.1f} {r['drops_per_min']:10.0f} "
                          f"{r['p50']:8.1f} {r['p99']:8.1f} {r['buffered']:13d}", flush=True)
        if args.soak:
            name, p = next(iter(predictors.items()))
            t0 = time.perf_counter()
            rss = soak(p, images, args.soak, Path(tmp))
            print(f"\nsoak: {args.soak} frames of 160x160 through {name}, max batch 8, "
                  f"{time.perf_counter() - t0:.0f} s: RSS " + ", ".join(f"{v:.0f} MB after frame {k}"
                                                                          for k, v in rss.items()))


if __name__ == "__main__":
    main()
