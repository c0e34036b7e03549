"""The ``adx watch`` metrics endpoint: a real HTTP server on 127.0.0.1 (a free port), read with a
plain GET and parsed here line by line (not with prometheus_client's own parser), values checked."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import list_test_images

from adx_runtime.errors import ConfigError

pytest.importorskip("prometheus_client", reason="prometheus_client is missing: pip install 'adexport[metrics]'")

from adx_runtime.watch.metrics import MetricsSink  # noqa: E402

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET ``url``: {(metric name, its labels): value} from the text format's sample lines."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        assert m, line
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _records() -> list[dict[str, Any]]:
    cam = "/srv/camera1"
    return [
        {"path": "a.png", "label": "normal", "latency_ms": 12.0, "source": cam},
        {"path": "b.png", "label": "anomalous", "latency_ms": 40.0, "source": cam},
        {"path": "c.png", "label": "anomalous", "latency_ms": 300.0, "source": cam},
        {"path": "d.png", "error": "cannot decode: truncated", "latency_ms": 2.0, "source": cam},
        {"path": "e.png", "label": None, "latency_ms": float("nan"), "source": cam},  # no threshold, no latency
        {"path": "f.png", "label": "normal", "latency_ms": 7.5, "source": "rtsp://cam2/main"},
    ]


@pytest.fixture
def sink() -> Any:
    logs: list[str] = []
    s = MetricsSink(0, fps_window_s=0.5)
    s.attach(stop=threading.Event(), log=logs.append)
    s.logs = logs
    s.open()
    yield s
    s.close()


def test_counts_histogram_and_fps_over_http(sink: MetricsSink) -> None:
    assert sink.port > 0 and sink.url == f"http://127.0.0.1:{sink.port}/metrics"
    assert sink.logs == [f"metrics: Prometheus text format on {sink.url}"]
    assert sink.name == f"metrics {sink.url}"
    sink.observe("/srv/camera1", dropped_total=0)
    before = scrape(sink.url)
    assert value(before, "adx_watch_images_total", source="/srv/camera1") == 0  # exists before the first image
    sink.write(_records()[:3])
    sink.write(_records()[3:])
    sink.observe("/srv/camera1", dropped_total=3)
    sink.write([{"path": "g.png", "label": "normal", "source": "rtsp://cam2/main", "dropped": 4}])
    sink.write([{"path": "h.png", "label": "normal", "source": "rtsp://cam2/main", "dropped": 9}])
    sink.observe("/srv/camera1", dropped_total=5)
    sink.observe("/srv/camera1", dropped_total=2)  # an older total: the counter never goes down
    s = scrape(sink.url)
    cam = {"source": "/srv/camera1"}
    assert value(s, "adx_watch_images_total", **cam) == 5
    assert value(s, "adx_watch_anomalies_total", **cam) == 2
    assert value(s, "adx_watch_errors_total", **cam) == 1
    assert value(s, "adx_watch_dropped_frames_total", **cam) == 5
    assert value(s, "adx_watch_images_total", source="rtsp://cam2/main") == 3
    assert value(s, "adx_watch_dropped_frames_total", source="rtsp://cam2/main") == 9
    assert value(s, "adx_watch_anomalies_total", source="rtsp://cam2/main") == 0  # 0, not missing
    # latencies 12, 40, 300, 2 ms (the NaN one is left out)
    assert value(s, "adx_watch_latency_seconds_count", **cam) == 4
    assert value(s, "adx_watch_latency_seconds_sum", **cam) == pytest.approx(0.354)
    assert value(s, "adx_watch_latency_seconds_bucket", le="0.01", **cam) == 1
    assert value(s, "adx_watch_latency_seconds_bucket", le="0.05", **cam) == 3
    assert value(s, "adx_watch_latency_seconds_bucket", le="0.5", **cam) == 4
    assert value(s, "adx_watch_latency_seconds_bucket", le="+Inf", **cam) == 4
    assert abs(value(s, "adx_watch_last_record_timestamp_seconds", **cam) - time.time()) < 5
    # 5 records in the first half second: 10 per second (the window is 0.5 s, or less since opening)
    assert value(s, "adx_watch_fps", **cam) >= 5 / 0.5
    time.sleep(0.8)  # nothing more arrives: the rate falls to 0 rather than freezing at its last value
    assert value(scrape(sink.url), "adx_watch_fps", **cam) == 0


def test_two_sinks_in_one_process_keep_their_own_counts() -> None:
    a, b = MetricsSink(0), MetricsSink(0)
    a.open()
    b.open()
    try:
        a.write(_records()[:2])
        b.write(_records()[:1])
        assert a.port != b.port
        assert value(scrape(a.url), "adx_watch_images_total", source="/srv/camera1") == 2
        assert value(scrape(b.url), "adx_watch_images_total", source="/srv/camera1") == 1
    finally:
        a.close()
        b.close()


def test_a_taken_port_is_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            MetricsSink(port).open()
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("port", [-1, 65536])
def test_bad_port(port: int) -> None:
    with pytest.raises(ConfigError, match="--metrics-port must be"):
        MetricsSink(port)


def test_closed_sink_stops_serving(sink: MetricsSink) -> None:
    url = sink.url
    sink.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_watch_loop_feeds_the_metrics(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    """Through the loop: the counts equal the records written to the output file."""
    import json  # noqa: PLC0415

    from adx_runtime.predictor import Predictor  # noqa: PLC0415
    from adx_runtime.watch import JsonLinesSink, WatchOptions, watch  # noqa: PLC0415

    folder, out = tmp_path / "in", tmp_path / "out.jsonl"
    folder.mkdir()
    for i, src in enumerate(list_test_images(dataset)[:5]):
        shutil.copyfile(src, folder / f"{i:02d}.png")
    (folder / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    metrics = MetricsSink(0)
    seen: dict = {}

    class Probe:  # reads the endpoint after the last batch, before the loop closes the metrics sink
        name = "probe"

        def open(self) -> None: ...

        def write(self, records: list[dict[str, Any]]) -> None:
            seen.update(scrape(metrics.url))

        def close(self) -> None: ...

    opts = WatchOptions(max_batch=8, max_images=6, max_seconds=20, journal_dir=None, settle_ms=100, poll=True,
                        interval_s=0.05)
    watch(Predictor.load(bundle), folder, [JsonLinesSink(out), metrics, Probe()], opts, log=lambda line: None)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    src = {"source": str(folder)}
    assert len(written) == 6
    assert value(seen, "adx_watch_images_total", **src) == 6
    assert value(seen, "adx_watch_errors_total", **src) == sum("error" in r for r in written) == 1
    assert value(seen, "adx_watch_anomalies_total", **src) == sum(r.get("label") == "anomalous" for r in written)
    assert value(seen, "adx_watch_latency_seconds_count", **src) == 6
    assert value(seen, "adx_watch_latency_seconds_sum", **src) == pytest.approx(
        sum(r["latency_ms"] for r in written) / 1000, rel=1e-6)


def test_adx_watch_serves_metrics_while_running(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    """A real ``adx watch --metrics-port 0`` process: the start line names the port, a scrape counts
    what the output file holds, SIGTERM ends it with 0."""
    import json  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    folder, out, err = tmp_path / "in", tmp_path / "o.jsonl", tmp_path / "err.txt"
    folder.mkdir()
    for i, src in enumerate(list_test_images(dataset)[:3]):
        shutil.copyfile(src, folder / f"{i:02d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "adx_cli", "watch", str(bundle), str(folder), "-o", str(out),
                             "--poll", "--settle-ms", "100", "--max-seconds", "60", "--no-journal",
                             "--metrics-port", "0"], stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    try:
        deadline = time.monotonic() + 40
        url = None
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"metrics: Prometheus text format on (http://127\.0\.0\.1:\d+/metrics)", err.read_text())
            if m and out.exists() and len(out.read_text().splitlines()) == 3:
                url = m.group(1)
                break
            time.sleep(0.05)
        assert url is not None, err.read_text()
        s = scrape(url)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
    finally:
        proc.kill()
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 0, err.read_text()
    assert value(s, "adx_watch_images_total", source=str(folder)) == len(written) == 3
    assert value(s, "adx_watch_latency_seconds_count", source=str(folder)) == 3
    assert f"metrics {url}" in err.read_text()  # the start line lists the sink with its real port
