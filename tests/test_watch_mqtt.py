"""The ``adx watch`` MQTT sink against a real broker: mosquitto (Debian's package; ``.ci/run``
installs it) started per test on 127.0.0.1 with a free port, and a paho subscriber with a
persistent session, so a broker restart loses nothing on the subscriber's side either. Every
broker, wait and loop is bounded in time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import list_test_images

from adx_runtime.errors import ConfigError
from adx_runtime.watch.mqtt import DEAD_LETTER_NAME, parse_mqtt_url, source_topic_name

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is missing: pip install 'adexport[mqtt]'")

from adx_runtime.watch.mqtt import MqttSink  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                               if os.access(p, os.X_OK)), None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is missing (apt-get install mosquitto; "
                                                            ".ci/run installs it): the MQTT broker tests did not run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Broker:
    """mosquitto on 127.0.0.1:PORT with persistence in a temp folder (a SIGTERM saves the sessions,
    a start restores them), stoppable and restartable on the same port."""

    def __init__(self, folder: Path, *, anonymous: bool = True):
        self.folder = folder
        self.port = _free_port()
        self.conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {str(anonymous).lower()}", "persistence true", "max_queued_messages 0",
                 f"persistence_location {folder}/", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to user mosquitto, who cannot write the temp folder
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "mosquitto.log", "a"))

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        if not _wait(up, 10):
            self.stop()
            raise AssertionError("mosquitto did not start: " + (self.folder / "mosquitto.log").read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


class Subscriber:
    """A paho client with a persistent session (clean_session=False) subscribed with QoS 1 to
    ``PREFIX/#``: records every (topic, record) it gets, reconnecting quickly after a restart."""

    def __init__(self, port: int, pattern: str):
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = lambda c, u, msg: self.got.append((msg.topic, json.loads(msg.payload)))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(pattern, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "no SUBACK"

    def records(self) -> list[dict[str, Any]]:
        return [rec for _, rec in self.got]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is missing (apt-get install mosquitto; .ci/run installs it)")
    folder = tmp_path / "broker"
    folder.mkdir()
    b = Broker(folder)
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(broker.port, "line/#")
    yield sub
    sub.stop()


def _records(n: int, sources: tuple[str, ...] = ("/srv/camera1",)) -> list[dict[str, Any]]:
    return [{"path": f"img{i:03d}.png", "image_score": float(i), "label": "normal", "source": sources[i % len(sources)]}
            for i in range(n)]


def _dedup(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First occurrences, in arrival order (QoS 1 is at least once: a re-send after a reconnect may repeat one)."""
    seen: set[str] = set()
    out = []
    for rec in records:
        if rec["path"] not in seen:
            seen.add(rec["path"])
            out.append(rec)
    return out


def _sink(port: int, out: Path, **kw: Any) -> tuple[MqttSink, list[str]]:
    logs: list[str] = []
    stop = kw.pop("stop", None) or threading.Event()
    sink = MqttSink(f"mqtt://127.0.0.1:{port}/line/7", out, **kw)
    sink.attach(stop=stop, log=logs.append)
    return sink, logs


@needs_broker
def test_every_record_arrives_in_order_on_its_sources_topic(broker: Broker, subscriber: Subscriber,
                                                             tmp_path: Path) -> None:
    sink, logs = _sink(broker.port, tmp_path, flush_timeout_s=10)
    sink.open()
    recs = _records(30, ("/srv/camera1", "rtsp://cam.local/line2/main"))
    t0 = time.monotonic()
    for i in range(0, 30, 6):
        sink.write(recs[i:i + 6])
    assert time.monotonic() - t0 < 1.0  # writing never waited for the broker
    sink.close()
    assert _wait(lambda: len(subscriber.got) >= 30, 5)
    assert sink.lost == 0 and sink.delivered_count == 30 and not (tmp_path / DEAD_LETTER_NAME).exists()
    assert subscriber.records() == recs  # all, in order, none twice
    topics = {rec["source"]: topic for topic, rec in subscriber.got}
    assert topics == {"/srv/camera1": "line/7/camera1", "rtsp://cam.local/line2/main": "line/7/main"}
    assert "30 records delivered, none lost" in logs[-1]


@needs_broker
def test_broker_restarted_mid_run_loses_nothing(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    """Delivered before the stop, queued while the broker is down, sent after it is back: every record
    reaches the subscriber (or, had the flush run out, the dead-letter file), in order."""
    sink, logs = _sink(broker.port, tmp_path, flush_timeout_s=15)
    sink.open()
    recs = _records(30)
    sink.write(recs[:10])
    assert _wait(lambda: sink.delivered_count == 10, 5)
    broker.stop()
    assert _wait(lambda: "not connected" in sink.status(), 5)
    sink.write(recs[10:20])  # the broker is down: they wait, scoring does not
    assert "10 awaiting PUBACK (not connected)" in sink.status()
    broker.start()
    sink.write(recs[20:])
    sink.close()
    dead = [json.loads(line) for line in (tmp_path / DEAD_LETTER_NAME).read_text().splitlines()] \
        if (tmp_path / DEAD_LETTER_NAME).exists() else []
    assert _wait(lambda: len(_dedup(subscriber.records())) + len(dead) >= 30, 10)
    got = _dedup(subscriber.records())
    assert sink.lost == len(dead) == 0, (sink.lost, logs)  # 15 s is ample on 127.0.0.1
    assert got == recs
    assert any("disconnected" in line for line in logs if line.startswith("warning:"))
    assert any("connected again" in line for line in logs if line.startswith("note:"))


@needs_broker
def test_broker_restarted_twice_under_load_loses_nothing(broker: Broker, subscriber: Subscriber,
                                                         tmp_path: Path) -> None:
    """Stops that cut messages in flight, with the queue full meanwhile: after the reconnects every
    record reaches the subscriber, in order (a re-sent one may come twice: at least once)."""
    sink, logs = _sink(broker.port, tmp_path, flush_timeout_s=20, queue_size=200)
    sink.open()
    recs = _records(1500)

    def writer() -> None:
        for i in range(0, len(recs), 10):
            sink.write(recs[i:i + 10])
            time.sleep(0.006)  # about 1 s of writing: it spans both restarts

    t = threading.Thread(target=writer)
    t.start()
    for _ in range(2):
        time.sleep(0.2)
        broker.stop()
        time.sleep(0.2)
        broker.start()
    t.join(30)
    sink.close()
    assert not t.is_alive() and sink.lost == 0 and sink.delivered_count == 1500, logs
    assert _wait(lambda: len(_dedup(subscriber.records())) >= 1500, 10)
    assert _dedup(subscriber.records()) == recs
    assert sum("is behind" in line for line in logs) <= 4  # one note per episode, not one per record
    assert any("disconnected" in line for line in logs) and any("connected again" in line for line in logs)


@needs_broker
def test_a_refused_login_is_said_once_and_nothing_is_lost(tmp_path: Path) -> None:
    """A broker that refuses every client (no anonymous access, no password file): one ``error:`` line
    naming the reason, then the records are dead-lettered at stop."""
    (tmp_path / "b").mkdir()
    strict = Broker(tmp_path / "b", anonymous=False)
    try:
        logs: list[str] = []
        sink = MqttSink(f"mqtt://line7:wrong@127.0.0.1:{strict.port}/line", tmp_path, flush_timeout_s=1.0)
        sink.attach(stop=threading.Event(), log=logs.append)
        sink.open()
        sink.write(_records(2))
        sink.close()
    finally:
        strict.stop()
    refused = [line for line in logs if "refused the connection" in line]
    assert len(refused) == 1 and refused[0].startswith("error:") and "authori" in refused[0].lower(), logs
    assert sink.lost == 2 and len((tmp_path / DEAD_LETTER_NAME).read_text().splitlines()) == 2
    assert not any("wrong" in line for line in logs)


def test_broker_down_at_stop_dead_letters_in_order_within_the_timeout(tmp_path: Path) -> None:
    sink, logs = _sink(_free_port(), tmp_path / "out", flush_timeout_s=0.5)  # nothing listens there
    sink.open()
    recs = _records(7)
    sink.write(recs)
    t0 = time.monotonic()
    sink.close()
    took = time.monotonic() - t0
    assert took < 3.0, took
    assert sink.lost == 7 and sink.delivered_count == 0
    dead = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER_NAME).read_text().splitlines()]
    assert dead == recs
    report = [line for line in logs if "not acknowledged" in line]
    assert len(report) == 1 and "7 records not acknowledged" in report[0] and DEAD_LETTER_NAME in report[0]
    assert sum("cannot connect" in line for line in logs) == 1  # said once, not per try


def test_a_broker_that_never_answers_is_bounded_too(tmp_path: Path) -> None:
    """A socket that accepts the connection and never sends CONNACK: close() still returns within
    --mqtt-timeout plus the 2 s it gives paho's thread, and dead-letters everything."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        sink, logs = _sink(hung.getsockname()[1], tmp_path, flush_timeout_s=0.5)
        sink.open()
        sink.write(_records(3))
        time.sleep(0.2)
        t0 = time.monotonic()
        sink.close()
        took = time.monotonic() - t0
    assert took < 3.0, took
    assert sink.lost == 3 and len((tmp_path / DEAD_LETTER_NAME).read_text().splitlines()) == 3


def test_full_queue_makes_scoring_wait_and_a_stop_ends_the_wait(tmp_path: Path) -> None:
    stop = threading.Event()
    sink, logs = _sink(_free_port(), tmp_path, flush_timeout_s=0.2, queue_size=3, stop=stop)
    sink.open()
    threading.Timer(0.4, stop.set).start()
    t0 = time.monotonic()
    sink.write(_records(5))  # 3 fit; the rest wait for room until the stop
    waited = time.monotonic() - t0
    assert 0.3 < waited < 2, waited
    assert "behind" in sink.status() and any("is behind" in line for line in logs)
    sink.close()
    assert sink.lost == 5 and len((tmp_path / DEAD_LETTER_NAME).read_text().splitlines()) == 5


@needs_broker
def test_credentials_are_used_never_printed(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    logs: list[str] = []
    sink = MqttSink(f"mqtt://line7:s3cret@127.0.0.1:{broker.port}/line", tmp_path, flush_timeout_s=5)
    assert "s3cret" not in sink.name and "line7" not in sink.name and sink.name.endswith(f":{broker.port}/line")
    sink.attach(stop=threading.Event(), log=logs.append)
    sink.open()
    sink.write(_records(2))
    sink.close()
    assert sink.lost == 0 and _wait(lambda: len(subscriber.got) == 2, 5)
    assert subscriber.got[0][0] == "line/camera1"
    assert not any("s3cret" in line for line in logs)


@pytest.mark.parametrize("url", ["mqtts://127.0.0.1/x", "tcp://127.0.0.1:1883/x", "127.0.0.1:1883/x", "mqtt://",
                                 "mqtt://127.0.0.1:99999/x", "mqtt://u:s3cret@127.0.0.1:port/x",
                                 "mqtt://127.0.0.1/line/+/x", "mqtt://127.0.0.1/a#", "mqtt://127.0.0.1/x?q=1",
                                 "mqtt://a b/x"])
def test_bad_urls_are_one_line_errors(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mqtt_url(url)
    msg = str(err.value)
    assert msg.startswith("--mqtt") and "\n" not in msg and "s3cret" not in msg


def test_url_parts_and_topic_names() -> None:
    parts, prefix = parse_mqtt_url("mqtt://u:p%40ss@broker.local:1884/factory/line1/")
    assert (parts.hostname, parts.port, parts.password, prefix) == ("broker.local", 1884, "p%40ss", "factory/line1")
    assert parse_mqtt_url("mqtt://broker")[1] == ""
    assert [source_topic_name(s) for s in ("/srv/camera1", "/srv/camera1/", "rtsp://cam.local:554/line2/main",
                                           "http://10.0.0.5:8080/", "/dev/video0", "0", "/data/bay #3+x",
                                           "C:\\cams\\c4")] == \
        ["camera1", "camera1", "main", "10.0.0.5", "video0", "0", "bay_3_x", "c4"]


@needs_broker
def test_watch_loop_publishes_what_it_writes(broker: Broker, subscriber: Subscriber, bundle: Path, dataset: Path,
                                             tmp_path: Path) -> None:
    """Through the loop: every scored image reaches the output file and the topic, in the same order."""
    from adx_runtime.predictor import Predictor  # noqa: PLC0415
    from adx_runtime.watch import JsonLinesSink, WatchOptions, watch  # noqa: PLC0415

    folder, out = tmp_path / "cam3", tmp_path / "out.jsonl"
    folder.mkdir()
    for i, src in enumerate(list_test_images(dataset)[:5]):
        shutil.copyfile(src, folder / f"{i:02d}.png")
    opts = WatchOptions(max_batch=2, max_images=5, max_seconds=20, journal_dir=tmp_path / "j", settle_ms=100,
                        poll=True, interval_s=0.05)
    sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/line", tmp_path / "j", flush_timeout_s=10)
    stats = watch(Predictor.load(bundle), folder, [JsonLinesSink(out), sink], opts, log=lambda line: None)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert _wait(lambda: len(subscriber.got) >= 5, 5)
    assert stats.images == 5 and len(written) == 5 and subscriber.records() == written and sink.lost == 0
    assert {topic for topic, _ in subscriber.got} == {"line/cam3"}


@needs_broker
def test_adx_watch_publishes_every_record_on_the_folders_topic(broker: Broker, subscriber: Subscriber, bundle: Path,
                                                               dataset: Path, tmp_path: Path) -> None:
    """``adx watch --mqtt`` end to end: what the output file holds arrives on PREFIX/FOLDER-NAME, in order."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from adx_cli.app import app  # noqa: PLC0415

    folder, out = tmp_path / "cam9", tmp_path / "o.jsonl"
    folder.mkdir()
    for i, src in enumerate(list_test_images(dataset)[:4]):
        shutil.copyfile(src, folder / f"{i:02d}.png")
    res = CliRunner().invoke(app, ["watch", str(bundle), str(folder), "-o", str(out), "--poll", "--settle-ms", "100",
                                   "--max-images", "4", "--max-seconds", "20", "--out", str(tmp_path / "j"),
                                   "--mqtt", f"mqtt://u:s3cret@127.0.0.1:{broker.port}/line/9"])
    assert res.exit_code == 0, res.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert _wait(lambda: len(subscriber.got) >= 4, 5)
    assert len(written) == 4 and subscriber.records() == written
    assert {topic for topic, _ in subscriber.got} == {"line/9/cam9"}
    assert f"mqtt mqtt://127.0.0.1:{broker.port}/line/9" in res.output and "s3cret" not in res.output


def test_cli_refuses_a_bad_mqtt_url_before_loading_the_bundle(tmp_path: Path) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from adx_cli.app import app  # noqa: PLC0415

    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["watch", str(tmp_path / "no-bundle"), str(tmp_path / "in"),
                                   "--mqtt", "mqtts://u:s3cret@127.0.0.1/x"])
    assert res.exit_code == 1 and "only mqtt:// URLs" in res.output and "s3cret" not in res.output


def test_cli_exits_3_when_the_broker_never_acknowledged(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from adx_cli.app import app  # noqa: PLC0415

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(list_test_images(dataset)[0], folder / "a.png")
    res = CliRunner().invoke(app, ["watch", str(bundle), str(folder), "-o", str(tmp_path / "o.jsonl"), "--poll",
                                   "--settle-ms", "100", "--max-images", "1", "--max-seconds", "20",
                                   "--mqtt", f"mqtt://127.0.0.1:{_free_port()}/x", "--mqtt-timeout", "0.3",
                                   "--out", str(tmp_path / "j")])
    assert res.exit_code == 3, res.output
    assert len((tmp_path / "j" / DEAD_LETTER_NAME).read_text().splitlines()) == 1
    assert "1 record not acknowledged" in res.output
