"""Load test: concurrent clients against `adx serve` (Triton) on loopback, next to in-process `Predictor`.

    python benchmarks/serve_load.py BUNDLE [--concurrency 1,4,16] [--requests 160] [--seconds 60]

Needs ``adexport[cpu,serve]`` in this environment (``tests/servekit.py`` builds one as ``.venv-serve``).
Three set-ups, each at every concurrency (C client threads, one image per request, encoded bytes decoded
by the runtime, the label-only outputs requested unless ``--maps``):

- ``in-process``: C threads share one ``Predictor`` (``predict([bytes])``);
- ``served, no batching``: ``adx serve --max-batch 1``;
- ``served, dynamic batching``: ``adx serve --max-batch 16 --max-queue-delay-us DELAY`` (0 by default).

Every phase stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first; every
request has a timeout; the servers listen on 127.0.0.1 and are stopped with SIGTERM at the end.
Prints throughput (images/s), p50/p90/p99 latency (ms) and errors, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from adx_runtime.bundle import read_manifest
from adx_runtime.errors import AdxError
from adx_runtime.triton_repo import model_name

REQUEST_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pool(rounds: list[dict]) -> dict:
    """Rounds of one set-up -> one row: images over total seconds, percentiles over every latency."""
    lat = np.concatenate([r["latencies_ms"] for r in rounds]) if rounds else np.array([])
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    seconds = sum(r["seconds"] for r in rounds)
    errors = [r["first_error"] for r in rounds if r["first_error"]]
    return {"concurrency": rounds[0]["concurrency"], "requests": sum(r["requests"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds), "first_error": errors[0] if errors else None,
            "seconds": seconds, "throughput": len(lat) / seconds if seconds > 0 else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "rounds_throughput": [r["throughput"] for r in rounds]}


def run_load(make_call: Callable[[], Callable[[bytes], None]], images: list[bytes], concurrency: int,
             max_requests: int, max_seconds: float) -> dict:
    """``concurrency`` threads, each with its own ``make_call()``, share a budget of ``max_requests`` and a
    deadline; returns throughput, latency percentiles and the error count."""
    budget = threading.Semaphore(max_requests)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    calls = [make_call() for _ in range(concurrency)]

    def worker(i: int) -> None:
        call, k = calls[i], i
        while time.monotonic() < deadline and budget.acquire(blocking=False):
            data = images[k % len(images)]
            k += concurrency
            t0 = time.perf_counter()
            try:
                call(data)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted, reported once
                ok, message = False, f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    errors.append(message)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + REQUEST_TIMEOUT_S + 5)
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    return {"concurrency": concurrency, "requests": len(latencies) + len(errors), "errors": len(errors),
            "first_error": errors[0] if errors else None, "seconds": wall,
            "throughput": len(latencies) / wall if wall > 0 else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "latencies_ms": lat}


class ServeProcess:
    """`adx serve BUNDLE` in a child process on 127.0.0.1 (stopped by :meth:`stop`)."""

    def __init__(self, bundle: Path, extra: list[str], startup_s: float = 240.0):
        self.http, self.grpc = _free_port(), _free_port()
        cmd = [sys.executable, "-m", "adx_cli", "serve", str(bundle), "--host", "127.0.0.1", "--http-port",
               str(self.http), "--grpc-port", str(self.grpc), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if "listening on" in line:
                self.startup = line.strip()
                return
        self.stop()
        raise AdxError(f"adx serve {' '.join(extra)} did not start within {startup_s:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def served_call(port: int, name: str, maps: bool) -> Callable[[], Callable[[bytes], None]]:
    import tritonclient.http as th  # noqa: PLC0415

    outputs = ["image_score", "normalized_score", "label"] + (["anomaly_map"] if maps else [])

    def make() -> Callable[[bytes], None]:
        client = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=REQUEST_TIMEOUT_S,
                                          network_timeout=REQUEST_TIMEOUT_S)
        requested = [th.InferRequestedOutput(o, binary_data=True) for o in outputs]

        def call(data: bytes) -> None:
            t = th.InferInput("image_bytes", [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            client.infer(f"{name}_image", [t], outputs=requested).as_numpy("image_score")

        return call

    return make


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, nargs="*", help="images to send [default: the bundle's parity images]")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts [default: 1,4,16]")
    ap.add_argument("--requests", type=int, default=160, help="requests per phase at most [default: 160]")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per phase at most [default: 60]")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per set-up [default: 2]")
    ap.add_argument("--delay-us", type=int, default=0, help="dynamic batching queue delay, us [default: 0, as adx serve]")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, both sides [default: 0]")
    ap.add_argument("--maps", action="store_true", help="request the anomaly map too")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    manifest = read_manifest(args.bundle)
    name = model_name(manifest)
    paths = args.images or [Path(p) for p in manifest.get("training", {}).get("parity_images", []) if Path(p).is_file()]
    if not paths:
        ap.error("the bundle records no parity images that exist here; pass --images")
    images = [p.read_bytes() for p in paths]
    levels = [int(c) for c in args.concurrency.split(",")]

    predictor = Predictor.load(args.bundle, threads=args.threads)

    def local() -> Callable[[bytes], None]:
        return lambda data: predictor.predict([data])

    makers: dict[str, Callable[[], Callable[[bytes], None]]] = {"in-process": local}
    servers = []
    try:
        for label, extra in (("served, no batching", ["--max-batch", "1"]),
                             ("served, dynamic batching", ["--max-batch", "16", "--max-queue-delay-us",
                                                           str(args.delay_us)])):
            servers.append(ServeProcess(args.bundle, [*extra, "--threads", str(args.threads)]))
            makers[label] = served_call(servers[-1].http, name, args.maps)
            run_load(makers[label], images, 1, 5, 30)  # warm-up: the first requests initialise lazily
        # Set-ups interleaved, round by round, so a shared machine's load drifts over all of them alike.
        results = {label: [] for label in makers}
        for c in levels:
            rounds: dict[str, list[dict]] = {label: [] for label in makers}
            for _ in range(args.rounds):
                for label, make in makers.items():
                    rounds[label].append(run_load(make, images, c, args.requests, args.seconds))
            for label in makers:
                results[label].append(_pool(rounds[label]))
    finally:
        for server in servers:
            server.stop()
    load = os.getloadavg()
    print(format_table(results, name, len(images), os.cpu_count() or 0))
    print(f"load average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; {args.rounds} "
          f"interleaved rounds of at most {args.requests} requests or {args.seconds:g} s per set-up and concurrency")
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(args.bundle), "loadavg": load, "results": results},
                                        indent=2) + "\n", encoding="utf-8")
    return 0


def format_table(results: dict[str, list[dict]], name: str, n_images: int, cores: int) -> str:
    setups = list(results)
    lines = [f"{name}: {n_images} distinct images, one per request, {cores} CPU cores; throughput in images/s, "
             "latency in ms", "",
             "| clients | " + " | ".join(f"{s}: img/s, p50 / p90 / p99, errors" for s in setups)
             + " | dynamic / no batching | dynamic / in-process |",
             "| --- |" + " --- |" * (len(setups) + 2)]
    for i, c in enumerate(results[setups[0]]):
        cells = []
        for s in setups:
            r = results[s][i]
            cells.append(f"{r['throughput']:.1f}, {r['p50_ms']:.0f} / {r['p90_ms']:.0f} / {r['p99_ms']:.0f}, {r['errors']}")
        dyn, single, local = (results[s][i]["throughput"] for s in ("served, dynamic batching", "served, no batching",
                                                                     "in-process"))
        lines.append(f"| {c['concurrency']} | " + " | ".join(cells)
                     + f" | {dyn / single:.2f}x | {dyn / local:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except AdxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
