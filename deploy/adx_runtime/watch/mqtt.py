"""The MQTT sink of ``adx watch``: each record published as one JSON message, QoS 1, on a topic per
source, for PLC gateways and dashboards. paho-mqtt 2.x (the ``mqtt`` extra), imported only when
the sink is made.

The guarantees are the webhook sink's: scoring never waits on the broker while the queue has room;
a lost connection is re-made with backoff; at stop the sink gets a bounded time to have everything
acknowledged; what the broker never acknowledged (no PUBACK) is counted (:attr:`MqttSink.lost`)
and written to ``mqtt-undelivered.jsonl``. Never silently lost.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable

from adx_runtime.errors import ConfigError, DependencyError
from adx_runtime.infer import json_line
from adx_runtime.watch.sinks import _redacted, save_dead_letters  # the webhook's rules

__all__ = ["DEAD_LETTER_NAME", "MqttSink", "parse_mqtt_url", "source_topic_name"]

DEAD_LETTER_NAME = "mqtt-undelivered.jsonl"
DEFAULT_PORT = 1883
#: seconds between connection tries: 0.1, 0.2, 0.4, ... doubling, at most 5 s (the webhook's rule)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0
#: a broker that stops answering (half-open TCP) is noticed within about 1.5 times this
KEEPALIVE_S = 30
#: messages paho keeps on the wire unacknowledged at once; more wait (in order) in paho's own list
MAX_INFLIGHT = 20

_UNSAFE = re.compile(r"[+#/\s\x00-\x1f\x7f]+")  # wildcards, the level separator, controls: not in a topic level


def parse_mqtt_url(url: str) -> tuple[urllib.parse.SplitResult, str]:
    """``mqtt://[USER[:PASSWORD]@]HOST[:PORT][/TOPIC/PREFIX]`` -> (its parts, the topic prefix without
    slashes at either end), or a one-line :class:`ConfigError` that never shows a password."""
    text = url.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigError("--mqtt: not a valid URL (expected mqtt://HOST[:PORT]/TOPIC-PREFIX)") from None
    if parts.scheme != "mqtt":
        got = f"{parts.scheme}:" if parts.scheme else "no scheme"
        # mqtts (TLS) is not offered: it is not tested here, and a half-checked TLS setup is worse than none
        raise ConfigError(f"--mqtt: only mqtt:// URLs are supported (plain TCP), got {got}")
    if not parts.hostname:
        raise ConfigError(f"--mqtt: the URL {_redacted(parts)!r} names no host")
    if any(c.isspace() for c in text) or port == 0 or parts.query or parts.fragment or "#" in text:
        raise ConfigError(f"--mqtt: not a valid URL: {_redacted(parts)!r} (no spaces, port 0, ?query or #fragment)")
    prefix = urllib.parse.unquote(parts.path).strip("/")
    if any(c in prefix for c in "+#\x00"):
        raise ConfigError(f"--mqtt: the topic prefix {prefix!r} holds a wildcard (+ or #) or NUL; "
                          "a message cannot be published there")
    return parts, prefix


def source_topic_name(source: str) -> str:
    """The topic level of one source: the last part of its folder path, URL path or device
    (``/srv/camera1`` -> ``camera1``, ``rtsp://cam/line2/main`` -> ``main``, ``/dev/video0`` ->
    ``video0``, ``0`` -> ``0``; a URL without a path -> its host), with ``+ # /``, spaces and
    control characters made ``_``."""
    text = source.strip().rstrip("/\\")
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        name = parts.path.rstrip("/").rsplit("/", 1)[-1] or (parts.hostname or "")
    else:
        name = os.path.basename(text.replace("\\", "/"))
    return _UNSAFE.sub("_", name).strip("_") or "source"


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 (optional extra)
    except ModuleNotFoundError:
        raise DependencyError("--mqtt needs paho-mqtt 2.x, not installed here: pip install 'adexport[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise DependencyError("--mqtt needs paho-mqtt 2.x; an older one is installed: pip install 'paho-mqtt>=2'")
    return mqtt


class MqttSink:
    """Publishes each record (the output line's JSON) with QoS 1 on ``PREFIX/SOURCE`` (the source's
    name by :func:`source_topic_name`, or ``topic_of(record)``), in order, through paho's network
    thread.

    * A record counts as delivered when the broker's PUBACK for it arrives. Until then it is
      *pending*; paho re-sends pending messages after a reconnect (with the DUP flag), so delivery is
      at least once and in order per topic.
    * At most ``queue_size`` records are pending. When that many are, :meth:`write` waits for room
      (nothing is dropped: scoring slows to the broker's pace) and the status line says MQTT is
      behind; a stop ends that wait.
    * Broker absent at start, or gone mid-run: connection tries 0.1 s, 0.2 s, ... doubling to 5 s
      apart, for as long as the watcher runs; one ``warning:`` line when the connection is lost, one
      ``note:`` line when it is back.
    * :meth:`close` gives the broker ``flush_timeout_s`` to acknowledge what is pending, then
      disconnects, appends what is left, in order, to ``DIR/mqtt-undelivered.jsonl`` (the dead-letter
      file), logs one line with the count, and sets :attr:`lost` (the CLI then exits 3). A message the
      broker received but whose PUBACK never came is in that file too (at least once).
    * ``user:password@`` in the URL is sent in CONNECT and never printed.
    """

    def __init__(self, url: str, dead_letter_dir: Path | None, *, flush_timeout_s: float = 10.0,
                 queue_size: int = 1000, topic_of: Callable[[dict[str, Any]], str] | None = None,
                 client_id: str | None = None):
        self._parts, self.prefix = parse_mqtt_url(url)
        if flush_timeout_s < 0:
            raise ConfigError(f"--mqtt-timeout must be >= 0, got {flush_timeout_s}")
        if queue_size < 1:
            raise ConfigError(f"the MQTT queue size must be >= 1, got {queue_size}")
        self._mqtt = _paho()  # a missing extra is one line now, before the bundle loads
        self.name = f"mqtt {_redacted(self._parts)}"
        self.dead_letter = None if dead_letter_dir is None else Path(dead_letter_dir) / DEAD_LETTER_NAME
        self.flush_timeout_s = flush_timeout_s
        self.queue_size = queue_size
        # unique: a broker drops the older of two connections with one client id
        self.client_id = client_id or f"adx-watch-{uuid.uuid4().hex[:12]}"
        self.delivered_count = 0
        self.lost = 0  # records not acknowledged at close (written to the dead-letter file)
        self._topic_of = topic_of
        self._topics: dict[str, str] = {}  # source -> topic, bounded by the number of sources
        self._cond = threading.Condition()
        self._pending: dict[int, tuple[int, bytes]] = {}  # paho mid -> (sequence, payload), publish order
        self._unsent: list[tuple[int, bytes]] = []  # paho refused to take them (never expected): dead-lettered
        self._early: set[int] = set()  # PUBACKs that came before publish() returned their mid
        self._seq = 0
        self._connected = False
        self._was_connected = False
        self._warned = False
        self._behind = False
        self._closing = False  # close() is disconnecting: a disconnect is expected, not warned about
        self._abandon = False  # close() has taken what is pending: late PUBACKs change nothing
        self._client: Any = None
        self._stop: threading.Event | None = None
        self._log: Callable[[str], None] = lambda line: None

    # -- the loop's side
    def attach(self, *, stop: threading.Event, log: Callable[[str], None]) -> None:
        """The loop's stop event (ends a wait for room) and its log."""
        self._stop, self._log = stop, log

    def topic(self, record: dict[str, Any]) -> str:
        if self._topic_of is not None:
            name = self._topic_of(record)
        else:
            source = str(record.get("source") or "")
            name = self._topics.get(source)
            if name is None:
                name = self._topics[source] = source_topic_name(source) if source else "source"
        return f"{self.prefix}/{name}" if self.prefix else name

    def open(self) -> None:
        if self.dead_letter is not None:
            try:
                self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create {str(self.dead_letter.parent)!r}: {exc.strerror or exc}") from None
        mqtt = self._mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        if self._parts.username is not None:
            client.username_pw_set(urllib.parse.unquote(self._parts.username),
                                   None if self._parts.password is None else urllib.parse.unquote(self._parts.password))
        client.reconnect_delay_set(BACKOFF_FIRST_S, BACKOFF_MAX_S)  # type: ignore[arg-type] (paho takes floats)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)  # the bound is ours (queue_size), so paho never refuses a message
        client.connect_timeout = 5.0
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        # connect_async + loop_start: the first connection is tried on paho's thread and retried with
        # backoff, so a broker that is down at start delays nothing.
        client.connect_async(self._parts.hostname, self._parts.port or DEFAULT_PORT, keepalive=KEEPALIVE_S)
        client.loop_start()
        self._client = client

    def status(self) -> str:
        """A note for the status line: empty while the broker keeps up."""
        with self._cond:
            pending, behind, up = len(self._pending), self._behind, self._connected
        if not pending and up:
            return ""
        text = f"mqtt {pending} awaiting PUBACK" + ("" if up else " (not connected)")
        return text + (" (behind: queue full, scoring waits)" if behind else "")

    def write(self, records: list[dict[str, Any]]) -> None:
        assert self._client is not None, "open() first"
        for record in records:
            payload = json_line(record).encode("utf-8")
            topic = self.topic(record)
            with self._cond:
                # Wait for room rather than drop; a stop ends the wait (the batch then overfills the
                # bound by at most its own size, and close() flushes or dead-letters it).
                while len(self._pending) >= self.queue_size and not (self._stop and self._stop.is_set()):
                    if not self._behind:
                        self._behind = True
                        self._log(f"note: {self.name} is behind: {len(self._pending)} records await a PUBACK; "
                                  "scoring waits for it")
                    self._cond.wait(0.1)
                self._seq += 1
                seq = self._seq
            # Never call into paho holding our lock: paho calls on_publish holding its own.
            try:
                info = self._client.publish(topic, payload, qos=1)
            except ValueError as exc:  # a topic from topic_of that MQTT refuses: kept, not dropped
                with self._cond:
                    self._unsent.append((seq, payload))
                self._log(f"error: {self.name}: cannot publish on {topic!r} ({exc}); "
                          "the record goes to the dead-letter file")
                continue
            with self._cond:
                if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
                    self._unsent.append((seq, payload))
                elif info.mid in self._early:
                    self._early.discard(info.mid)
                    self.delivered_count += 1
                else:
                    self._pending[info.mid] = (seq, payload)

    # -- paho's network thread
    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            if self._abandon:
                return
            if self._pending.pop(mid, None) is not None:
                self.delivered_count += 1
            else:
                self._early.add(mid)
            if len(self._pending) <= self.queue_size // 2:  # hysteresis: one "behind" note per episode, not per record
                self._behind = False
            self._cond.notify_all()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            with self._cond:
                warned, self._warned = self._warned, True
            if not warned:
                self._log(f"error: {self.name} refused the connection ({reason_code}); retrying every "
                          f"{BACKOFF_FIRST_S:g} s, doubling up to {BACKOFF_MAX_S:g} s")
            return
        with self._cond:
            again, warned = self._was_connected, self._warned
            self._connected = self._was_connected = True
            self._warned = False
            pending = len(self._pending)
        if warned:  # quiet on a first connection that worked at once
            self._log(f"note: {self.name} connected{' again' if again else ''}; {pending} pending records (re)sent")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        with self._cond:
            warned, self._warned = self._warned, True
        if not warned:
            self._log(f"warning: {self.name}: cannot connect; retrying every {BACKOFF_FIRST_S:g} s, doubling up to "
                      f"{BACKOFF_MAX_S:g} s; records wait (up to {self.queue_size})")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            was, self._connected = self._connected, False
            closing = self._closing
            warned = self._warned
            self._warned = True
        if was and not closing and not warned:
            self._log(f"warning: {self.name} disconnected ({reason_code}); reconnecting every {BACKOFF_FIRST_S:g} s, "
                      f"doubling up to {BACKOFF_MAX_S:g} s")

    # -- stop
    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        deadline = time.monotonic() + self.flush_timeout_s
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._closing = True
        client.disconnect()
        # loop_stop() joins paho's thread without a limit, and that thread may sit in a connect try
        # (up to connect_timeout): stop it from a helper so close() stays bounded; it is a daemon.
        stopper = threading.Thread(target=client.loop_stop, name="adx-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(2.0)
        with self._cond:  # after the disconnect, so a PUBACK that came meanwhile still counts
            self._abandon = True
            left = sorted([*self._pending.values(), *self._unsent])
            self._pending.clear()
            self._unsent.clear()
        self.lost = len(left)
        if not left:
            n = self.delivered_count
            self._log(f"{self.name}: {n} record{'' if n == 1 else 's'} delivered, none lost")
            return
        where = save_dead_letters(self.dead_letter, [payload for _, payload in left])
        self._log(f"error: {self.name}: {self.lost} record{'' if self.lost == 1 else 's'} not acknowledged within "
                  f"--mqtt-timeout {self.flush_timeout_s:g} s, {where}; {self.delivered_count} delivered")
