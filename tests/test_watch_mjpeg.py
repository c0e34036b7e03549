"""``adx watch`` on an HTTP MJPEG stream (multipart/x-mixed-replace of JPEGs, what IP cameras
serve): a real server in the test on 127.0.0.1, read through PyAV/FFmpeg, stopped mid-stream and
started again on the same port; the watcher reconnects and goes on scoring.

Every wait is bounded: the server streams at most a fixed number of frames per connection, the
watcher runs with --max-seconds, and the test gives up after a deadline."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import list_test_images

pytest.importorskip("av")

from adx_runtime.predictor import Predictor  # noqa: E402
from adx_runtime.watch import JsonLinesSink, LiveSource, WatchOptions, frame_source, watch  # noqa: E402
from polling import wait_for as _wait  # noqa: E402

BOUNDARY = "adxframe"
FPS = 30
MAX_FRAMES_PER_CONNECTION = 3000  # 100 s at 30 FPS: bounds a handler the test forgot to stop


class MjpegServer:
    """A camera's MJPEG endpoint: the same JPEGs over and over at ``FPS``; :meth:`stop` ends every
    stream and closes the port, :meth:`start` opens it again (same port)."""

    def __init__(self, jpegs: list[bytes], port: int = 0):
        self.jpegs, self.port = jpegs, port
        self.connections = 0
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "MjpegServer":
        outer = self
        self._closing.clear()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                t0 = time.monotonic()
                for i in range(MAX_FRAMES_PER_CONNECTION):
                    if outer._closing.is_set():
                        return
                    jpeg = outer.jpegs[i % len(outer.jpegs)]
                    try:
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                         f"\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(max(0.0, t0 + (i + 1) / FPS - time.monotonic()))

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._closing.set()  # handlers end their streams: the client sees the stream end
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"


@pytest.fixture(scope="module")
def jpegs(dataset: Path) -> list[bytes]:
    out = []
    for p in list_test_images(dataset)[:6]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_stream_stopped_and_restarted_is_reconnected(bundle: Path, jpegs: list[bytes], tmp_path: Path) -> None:
    predictor = Predictor.load(bundle)
    server = MjpegServer(jpegs).start()
    out, lines = tmp_path / "out.jsonl", []
    source = frame_source(server.url, capacity=4, log=lines.append)
    assert isinstance(source, LiveSource)
    stop = threading.Event()
    result: list[Any] = []
    watcher = threading.Thread(target=lambda: result.append(
        watch(predictor, source, [JsonLinesSink(out)], WatchOptions(max_batch=4, max_seconds=40, status_s=3600),
              stop=stop, log=lines.append)))
    watcher.start()

    def scored() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    try:
        _wait(lambda: len(scored()) >= 10, 20, "the first records")
        server.stop()
        _wait(lambda: any("reconnecting in" in line for line in lines), 10, "the watcher to see the stream end")
        time.sleep(1.0)  # down for a while: the watcher's next tries are refused and backed off
        before = len(scored())
        server.start()  # the same port
        _wait(lambda: source.reconnects >= 1, 15, "the reconnect")
        _wait(lambda: len(scored()) >= before + 10, 20, "records after the reconnect")
    finally:
        stop.set()
        watcher.join(timeout=20)
        server.stop()
    assert not watcher.is_alive()
    (stats,) = result
    rows = scored()
    frames = [r["frame"] for r in rows]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # monotonic across the reconnect
    assert all(r["source"] == server.url and "error" not in r for r in rows)
    assert all(r["label"] in ("normal", "anomalous") for r in rows) and stats.errors == 0
    assert stats.images == len(rows) and source.reconnects >= 1 and server.connections >= 2
    assert any(line.startswith("note: ") and "open again (reconnect 1)" in line for line in lines)
    assert lines[-1].endswith("(stopped)"), lines
