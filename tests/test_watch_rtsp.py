"""``adx watch`` on RTSP against a real RTSP server: GStreamer's RTSP server (Debian's
``gir1.2-gst-rtsp-server-1.0``, ``python3-gi``, ``gstreamer1.0-plugins-good``), run by the system
Python on 127.0.0.1, serving a live 64x64 test pattern as RTP/JPEG at 30 FPS; read by PyAV over
TCP, the way ``adx watch`` reads a factory camera. The server is killed mid-stream and started
again on the same port: the watcher reconnects. Skipped where that server is not installed.

Every wait is bounded: the watcher runs with --max-seconds and the test gives up after deadlines."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("av")

from adx_runtime.predictor import Predictor  # noqa: E402
from adx_runtime.watch import JsonLinesSink, LiveSource, WatchOptions, frame_source, watch  # noqa: E402
from polling import wait_for as _wait  # noqa: E402

SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
# RTP/JPEG needs 4:2:0 JPEGs; is-live: frames come at 30 FPS, as from a camera.
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=64,height=64,"
                   "framerate=30/1 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.timeout_add_seconds(120, lambda: sys.exit(0))  # bounded even if the test forgets it
GLib.MainLoop().run()
"""


def _system_python_with_rtsp_server() -> str | None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        return None
    probe = subprocess.run([python, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, timeout=30)
    return python if probe.returncode == 0 else None


PYTHON = _system_python_with_rtsp_server()
pytestmark = pytest.mark.skipif(PYTHON is None, reason="GStreamer's RTSP server is not installed (apt-get install "
                                "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(script: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(PYTHON), str(script), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_rtsp_stream_is_scored_and_reconnected(bundle: Path, tmp_path: Path) -> None:
    script = tmp_path / "rtsp_server.py"
    script.write_text(SERVER)
    port = _free_port()
    url = f"rtsp://127.0.0.1:{port}/cam"
    server = _start(script, port)
    predictor = Predictor.load(bundle)
    out, lines = tmp_path / "out.jsonl", []
    source = frame_source(url, capacity=4, log=lines.append)
    assert isinstance(source, LiveSource)
    stop = threading.Event()
    result: list[Any] = []
    watcher = threading.Thread(target=lambda: result.append(
        watch(predictor, source, [JsonLinesSink(out)], WatchOptions(max_batch=4, max_seconds=60, status_s=3600),
              stop=stop, log=lines.append)))
    watcher.start()

    def scored() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    try:
        _wait(lambda: len(scored()) >= 10, 20, "the first records")
        _stop(server)  # the camera goes away mid-stream
        _wait(lambda: any("reconnecting in" in line for line in lines), 15, "the watcher to see the stream end")
        before = len(scored())
        server = _start(script, port)
        _wait(lambda: source.reconnects >= 1, 20, "the reconnect")
        _wait(lambda: len(scored()) >= before + 10, 20, "records after the reconnect")
    finally:
        stop.set()
        watcher.join(timeout=20)
        _stop(server)
    assert not watcher.is_alive()
    (stats,) = result
    rows = scored()
    frames = [r["frame"] for r in rows]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert all(r["source"] == url and r["label"] in ("normal", "anomalous") for r in rows)
    assert stats.errors == 0 and stats.images == len(rows)
    assert any("open again (reconnect 1)" in line for line in lines)
