"""The ``adx watch`` webhook sink against real HTTP receivers on 127.0.0.1 (stdlib ``http.server``
in a thread, a free port): failing and slow receivers, one that comes up late, one that never
answers, and bad URLs. Every server and loop is bounded in count and time."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from conftest import list_test_images

from adx_cli.app import app
from adx_runtime.errors import ConfigError
from adx_runtime.predictor import Predictor
from adx_runtime.watch import JsonLinesSink, WatchOptions, watch
from adx_runtime.watch.sinks import DEAD_LETTER_NAME, WebhookSink, parse_webhook_url


class Receiver:
    """An HTTP receiver: answers 500 to the first ``fail_first`` requests, sleeps ``slow_s`` on every
    ``slow_every``-th, records the bodies it accepted (200) and the headers of the last request."""

    def __init__(self, port: int = 0, *, fail_first: int = 0, slow_every: int = 0, slow_s: float = 0.0):
        self.accepted: list[dict[str, Any]] = []
        self.requests = 0
        self.headers: dict[str, str] = {}
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.requests += 1
                n = rec.requests
                rec.headers = dict(self.headers)
                if slow_every and n % slow_every == 0:
                    time.sleep(slow_s)
                if n <= fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                rec.accepted.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        r.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(n: int) -> list[dict[str, Any]]:
    return [{"path": f"img{i:03d}.png", "image_score": float(i), "label": "normal"} for i in range(n)]


def _wait(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_failing_and_slow_receiver_gets_every_record_in_order(receivers: list[Receiver], tmp_path: Path) -> None:
    rx = Receiver(fail_first=3, slow_every=5, slow_s=0.2)
    receivers.append(rx)
    logs: list[str] = []
    sink = WebhookSink(rx.url, tmp_path, flush_timeout_s=10)
    sink.attach(stop=threading.Event(), log=logs.append)
    sink.open()
    recs = _records(25)
    t0 = time.monotonic()
    for i in range(0, 25, 5):
        sink.write(recs[i:i + 5])
    assert time.monotonic() - t0 < 0.5  # writing never waited on the receiver
    sink.close()
    assert rx.accepted == recs  # all, in order, none twice
    assert sink.lost == 0 and sink.delivered_count == 25 and not (tmp_path / DEAD_LETTER_NAME).exists()
    assert any("failed (HTTP 500)" in line for line in logs) and any("answers again" in line for line in logs)
    assert "none lost" in logs[-1]


def test_receiver_down_at_start_comes_up_later(receivers: list[Receiver], tmp_path: Path) -> None:
    port = _free_port()
    sink = WebhookSink(f"http://127.0.0.1:{port}/", tmp_path, flush_timeout_s=10)
    logs: list[str] = []
    sink.attach(stop=threading.Event(), log=logs.append)
    sink.open()
    recs = _records(10)
    sink.write(recs[:6])
    time.sleep(0.6)  # a few refused tries (0.1, 0.2, 0.4 s apart)
    assert "6 queued" in sink.status()
    rx = Receiver(port)
    receivers.append(rx)
    sink.write(recs[6:])
    _wait(lambda: len(rx.accepted) == 10, 8)
    sink.close()
    assert rx.accepted == recs and sink.lost == 0
    assert any("ConnectionRefusedError" in line for line in logs)


def test_stop_with_a_dead_receiver_is_bounded_and_reports_once(tmp_path: Path) -> None:
    """A receiver that accepts connections and never answers: close() returns within
    --webhook-timeout (plus a margin), writes what is left to the dead-letter file in order, and says so
    in one line."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]
        logs: list[str] = []
        sink = WebhookSink(f"http://127.0.0.1:{port}/x", tmp_path / "out", flush_timeout_s=0.5, request_timeout_s=30)
        sink.attach(stop=threading.Event(), log=logs.append)
        sink.open()
        recs = _records(7)
        sink.write(recs)
        t0 = time.monotonic()
        sink.close()
        took = time.monotonic() - t0
    assert took < 2.5, took
    assert sink.lost == 7 and sink.delivered_count == 0
    dead = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER_NAME).read_text().splitlines()]
    assert dead == recs
    report = [line for line in logs if "not delivered" in line]
    assert len(report) == 1 and "7 records not delivered" in report[0] and DEAD_LETTER_NAME in report[0]


def test_full_queue_makes_scoring_wait_and_a_stop_ends_the_wait(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens: every try is refused
    stop = threading.Event()
    logs: list[str] = []
    sink = WebhookSink(f"http://127.0.0.1:{port}/", tmp_path, flush_timeout_s=0.2, queue_size=3)
    sink.attach(stop=stop, log=logs.append)
    sink.open()
    threading.Timer(0.4, stop.set).start()
    t0 = time.monotonic()
    sink.write(_records(5))  # 3 fit; the rest wait for room until the stop
    waited = time.monotonic() - t0
    assert 0.3 < waited < 2, waited
    assert "behind" in sink.status() and any("is behind" in line for line in logs)
    sink.close()
    assert sink.lost == 5 and len((tmp_path / DEAD_LETTER_NAME).read_text().splitlines()) == 5


def test_credentials_are_sent_never_printed(receivers: list[Receiver], tmp_path: Path) -> None:
    rx = Receiver()
    receivers.append(rx)
    sink = WebhookSink(f"http://line7:s3cret@127.0.0.1:{rx.port}/hook?k=1", tmp_path, flush_timeout_s=5)
    assert "s3cret" not in sink.name and "line7" not in sink.name
    logs: list[str] = []
    sink.attach(stop=threading.Event(), log=logs.append)
    sink.open()
    sink.write(_records(1))
    sink.close()
    assert rx.accepted == _records(1) and rx.headers["Authorization"].startswith("Basic ")
    assert not any("s3cret" in line for line in logs)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:8080/x", "http://", "http://127.0.0.1:99999/",
                                 "http://u:s3cret@127.0.0.1:port/", "file:///etc/passwd", "http://a b/"])
def test_bad_urls_are_one_line_errors(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_webhook_url(url)
    msg = str(err.value)
    assert msg.startswith("--webhook") and "\n" not in msg and "s3cret" not in msg


def test_cli_refuses_a_bad_url_before_loading_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["watch", str(tmp_path / "no-bundle"), str(tmp_path / "in"),
                                   "--webhook", "ftp://u:s3cret@127.0.0.1/x"])
    assert res.exit_code == 1 and "only http:// and https://" in res.output and "s3cret" not in res.output


def test_watch_delivers_to_file_and_webhook_in_the_same_order(receivers: list[Receiver], bundle: Path,
                                                              dataset: Path, tmp_path: Path) -> None:
    """Through the loop: every scored image reaches both sinks, in the same order, once."""
    rx = Receiver(fail_first=2, slow_every=3, slow_s=0.1)
    receivers.append(rx)
    folder, out = tmp_path / "in", tmp_path / "out.jsonl"
    folder.mkdir()
    for i, src in enumerate(list_test_images(dataset)[:6]):
        shutil.copyfile(src, folder / f"{i:02d}.png")
    logs: list[str] = []
    opts = WatchOptions(max_batch=4, max_images=6, max_seconds=20, journal_dir=tmp_path / "j", settle_ms=100,
                        poll=True, interval_s=0.05)
    stats = watch(Predictor.load(bundle), folder,
                  [JsonLinesSink(out), WebhookSink(rx.url, tmp_path / "j", flush_timeout_s=10)], opts, log=logs.append)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.images == 6 and len(written) == 6 and rx.accepted == written
    assert any("webhook http://127.0.0.1" in line for line in logs if line.startswith("watching"))


def test_cli_exits_3_when_records_could_not_be_delivered(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(list_test_images(dataset)[0], folder / "a.png")
    res = CliRunner().invoke(app, ["watch", str(bundle), str(folder), "-o", str(tmp_path / "o.jsonl"),
                                   "--poll", "--settle-ms", "100", "--max-images", "1", "--max-seconds", "20",
                                   "--webhook", f"http://127.0.0.1:{_free_port()}/", "--webhook-timeout", "0.3",
                                   "--out", str(tmp_path / "j")])
    assert res.exit_code == 3, res.output
    assert len((tmp_path / "j" / DEAD_LETTER_NAME).read_text().splitlines()) == 1
    assert "1 record not delivered" in res.output


def test_sigterm_with_a_hung_receiver_exits_in_bounded_time(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    """A real ``adx watch`` process, a receiver that accepts and never answers, SIGTERM: it exits
    within --webhook-timeout plus a margin, with 3 and one line counting the undelivered records."""
    folder, out, err = tmp_path / "in", tmp_path / "o.jsonl", tmp_path / "err.txt"
    folder.mkdir()
    shutil.copyfile(list_test_images(dataset)[0], folder / "a.png")
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        proc = subprocess.Popen([sys.executable, "-m", "adx_cli", "watch", str(bundle), str(folder), "-o", str(out),
                                 "--poll", "--settle-ms", "100", "--max-seconds", "30", "--out", str(tmp_path / "j"),
                                 "--webhook", f"http://127.0.0.1:{hung.getsockname()[1]}/",
                                 "--webhook-timeout", "1"], stdout=subprocess.DEVNULL, stderr=open(err, "w"))
        try:
            _wait(lambda: out.exists() and out.read_text().endswith("\n"), 25)
            assert out.exists(), err.read_text()
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=10)
            took = time.monotonic() - t0
        finally:
            proc.kill()
    text = err.read_text()
    assert rc == 3 and took < 4, (rc, took, text)
    assert sum("not delivered within" in line for line in text.splitlines()) == 1, text
    assert "1 record not delivered" in text
    assert len((tmp_path / "j" / DEAD_LETTER_NAME).read_text().splitlines()) == 1
