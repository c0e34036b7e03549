"""Where result records go. A sink takes the records of one batch, in order; it never learns where
an image came from. The JSON-lines sink and the webhook sink exist so far; MQTT and metrics sinks
take the same records."""

from __future__ import annotations

import base64
import http.client
import os
import sys
import threading
import time
import urllib.parse
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable, Protocol

from adx_runtime.errors import ConfigError
from adx_runtime.infer import json_line
from adx_runtime.watch.journal import read_jsonl

__all__ = ["JsonLinesSink", "Sink", "WebhookSink", "parse_webhook_url"]


class Sink(Protocol):
    name: str  # for the start line

    def open(self) -> None: ...

    def write(self, records: list[dict[str, Any]]) -> None:
        """Deliver one batch; when it returns, the records are as durable as this sink makes them."""

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON line per record (the ``adx infer`` line rules), to stdout or appended to a file.

    To a file, each batch is flushed and fsync'd before :meth:`write` returns, so the loop may then
    journal it; :meth:`delivered` reads back what a previous run wrote (cutting a half-written last
    line), which is how a restart learns of records written just before a crash."""

    def __init__(self, target: str | Path = "-", stream: IO[str] | None = None):
        self.path = None if str(target) == "-" else Path(target)
        self.name = "stdout" if self.path is None else str(self.path)
        self._stream = stream
        self._own = False
        self._sync = False

    def delivered(self) -> list[dict[str, Any]]:
        return [] if self.path is None else read_jsonl(self.path)

    def open(self) -> None:
        if self.path is None:
            self._stream = self._stream or sys.stdout
            return
        try:
            self._stream = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise ConfigError(f"cannot open --output {str(self.path)!r}: {exc.strerror or exc}") from None
        self._own = True
        # fsync is for files (the record survives a crash before the journal says it was scored); a
        # pipe, a FIFO or /dev/null cannot be synced (EINVAL), and there is nothing on disk to keep
        self._sync = os.path.isfile(self.path)

    def write(self, records: list[dict[str, Any]]) -> None:
        assert self._stream is not None, "open() first"
        self._stream.write("".join(json_line(r) + "\n" for r in records))
        self._stream.flush()
        if self._own and self._sync:
            os.fsync(self._stream.fileno())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            if self._own:
                self._stream.close()
        self._stream = None


# ------------------------------------------------------------------------------------- webhook
#: seconds between tries of one record: 0.1, 0.2, 0.4, ... doubling, at most 5 s (never given up
#: while running; only a stop ends the tries)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0
DEAD_LETTER_NAME = "webhook-undelivered.jsonl"


def save_dead_letters(path: Path | None, bodies: list[bytes]) -> str:
    """Append undelivered records (one JSON body a line) to ``path``, synced to disk; what became of
    them, for the sink's closing line. Shared by the webhook and MQTT sinks."""
    if path is None:
        return "not saved (no --out folder)"
    try:
        with open(path, "ab") as f:
            f.write(b"".join(body + b"\n" for body in bodies))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return f"not saved ({exc.strerror or exc}); they are in the --output records"
    return f"written to {path}"


def _redacted(parts: urllib.parse.SplitResult) -> str:
    """The URL without user and password, for the start line and messages."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def parse_webhook_url(url: str) -> urllib.parse.SplitResult:
    """An http(s) URL with a host, or a one-line :class:`ConfigError` that never shows a password."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigError("--webhook: not a valid URL (expected http://HOST[:PORT]/PATH or https://...)") from None
    if parts.scheme not in ("http", "https"):
        got = f"{parts.scheme}:" if parts.scheme else "no scheme"
        raise ConfigError(f"--webhook: only http:// and https:// URLs are supported, got {got}")
    if not parts.hostname:
        raise ConfigError(f"--webhook: the URL {_redacted(parts)!r} names no host")
    if any(c.isspace() for c in url.strip()) or port == 0:
        raise ConfigError(f"--webhook: not a valid URL: {_redacted(parts)!r}")
    return parts


class WebhookSink:
    """POSTs each record as one JSON body (``Content-Type: application/json``) to an http(s) URL, in
    order, from its own thread, so scoring never waits on the receiver while the queue has room.

    * A record counts as delivered on a 2xx answer. Any other answer, a refused connection or a
      timeout is retried, the same record again (so the order holds), after 0.1 s, 0.2 s, 0.4 s, ...
      at most 5 s apart, for as long as the watcher runs: at-least-once (a receiver that got a record
      but whose answer was lost gets it again).
    * The queue holds at most ``queue_size`` records. When it is full, :meth:`write` waits (nothing is
      dropped: scoring slows to the receiver's pace) and the status line says the webhook is behind;
      a stop ends that wait.
    * :meth:`close` gives the sender ``flush_timeout_s`` to deliver what is queued, then appends what
      is left to ``DIR/webhook-undelivered.jsonl`` (the dead-letter file), logs one line with the count,
      and sets :attr:`lost` (the CLI then exits non-zero).
    * The journal records scoring, not delivery: after a crash or ``kill -9`` the records still queued
      are not re-sent; they are in the ``--output`` file (the webhook is a live feed, the file is the
      record of what was scored).
    * Credentials in the URL (``https://user:pass@host/``) are sent as HTTP basic auth and never
      printed. No proxy and no redirects: the URL is the receiver.
    """

    def __init__(self, url: str, dead_letter_dir: Path | None, *, flush_timeout_s: float = 10.0,
                 queue_size: int = 1000, request_timeout_s: float = 5.0):
        self._parts = parse_webhook_url(url)
        if flush_timeout_s < 0:
            raise ConfigError(f"--webhook-timeout must be >= 0, got {flush_timeout_s}")
        if queue_size < 1:
            raise ConfigError(f"the webhook queue size must be >= 1, got {queue_size}")
        self.name = f"webhook {_redacted(self._parts)}"
        self.dead_letter = None if dead_letter_dir is None else Path(dead_letter_dir) / DEAD_LETTER_NAME
        self.flush_timeout_s = flush_timeout_s
        self.queue_size = queue_size
        self.request_timeout_s = request_timeout_s
        self.delivered_count = 0
        self.lost = 0  # records not delivered at close (written to the dead-letter file)
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None  # monotonic; set by close()
        self._abandon = False  # close() gave up: the sender must not take another record
        self._behind = False
        self._failing = False
        self._stop: threading.Event | None = None
        self._log: Callable[[str], None] = lambda line: None
        self._thread: threading.Thread | None = None
        path = self._parts.path or "/"
        self._target = path + (f"?{self._parts.query}" if self._parts.query else "")
        self._headers = {"Content-Type": "application/json", "User-Agent": "adx-watch"}
        if self._parts.username is not None:
            cred = f"{urllib.parse.unquote(self._parts.username)}:{urllib.parse.unquote(self._parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode("ascii")

    def attach(self, *, stop: threading.Event, log: Callable[[str], None]) -> None:
        """The loop's stop event (ends a wait for room in the queue) and its log."""
        self._stop, self._log = stop, log

    def open(self) -> None:
        if self.dead_letter is not None:
            try:
                self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create {str(self.dead_letter.parent)!r}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._send_loop, name="adx-webhook", daemon=True)
        self._thread.start()

    def status(self) -> str:
        """A note for the status line: empty while the receiver keeps up."""
        with self._cond:
            queued, behind = len(self._queue), self._behind
        if not queued:
            return ""
        return f"webhook {queued} queued" + (" (behind: queue full, scoring waits)" if behind else "")

    def write(self, records: list[dict[str, Any]]) -> None:
        bodies = [json_line(r).encode("utf-8") for r in records]
        with self._cond:
            for body in bodies:
                # Wait for room rather than drop; a stop ends the wait (the batch then overfills the
                # queue by at most its own size, and close() flushes or dead-letters it).
                while len(self._queue) >= self.queue_size and not (self._stop and self._stop.is_set()):
                    if not self._behind:
                        self._behind = True
                        self._log(f"note: {self.name} is behind: {len(self._queue)} records queued; scoring waits for it")
                    self._cond.wait(0.1)
                self._queue.append(body)
            self._cond.notify_all()

    def _post(self, body: bytes, timeout: float) -> str | None:
        """None when delivered, else why not (no URL, no credentials in it)."""
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._parts.hostname, self._parts.port, timeout=timeout)
        try:
            conn.request("POST", self._target, body=body, headers=self._headers)
            resp = conn.getresponse()
            resp.read()
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__ + (f": {exc.strerror}" if getattr(exc, "strerror", None) else "")
        finally:
            conn.close()

    def _send_loop(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._abandon:
                    return
                body = self._queue[0]  # popped only once delivered, so a retry keeps the order
                deadline = self._deadline
            timeout = self.request_timeout_s
            if deadline is not None:
                timeout = min(timeout, max(0.05, deadline - time.monotonic()))
            why = self._post(body, timeout)
            with self._cond:
                if why is None:
                    if self._queue and self._queue[0] is body:
                        self._queue.popleft()
                        self.delivered_count += 1
                    if len(self._queue) < self.queue_size:
                        self._behind = False
                    self._cond.notify_all()
                    if self._failing:
                        self._failing = False
                        self._log(f"note: {self.name} answers again")
                    delay = BACKOFF_FIRST_S
                    continue
                if not self._failing:
                    self._failing = True
                    self._log(f"warning: {self.name} failed ({why}); retrying every {BACKOFF_FIRST_S:g} s, "
                              f"doubling up to {BACKOFF_MAX_S:g} s")
                if self._deadline is not None and time.monotonic() + delay >= self._deadline:
                    return
                self._cond.wait(delay)  # close() wakes this early
                if self._abandon:
                    return
            delay = min(delay * 2, BACKOFF_MAX_S)

    def close(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + self.flush_timeout_s
            self._cond.notify_all()
        self._thread.join(self.flush_timeout_s + 0.5)
        with self._cond:
            self._abandon = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread = None
        self.lost = len(left)
        if not left:
            self._log(f"{self.name}: {self.delivered_count} records delivered, none lost")
            return
        where = save_dead_letters(self.dead_letter, left)
        self._log(f"error: {self.name}: {self.lost} record{'' if self.lost == 1 else 's'} not delivered within --webhook-timeout "
                  f"{self.flush_timeout_s:g} s, {where}; {self.delivered_count} delivered")
