"""The metrics endpoint of ``adx watch``: Prometheus' text format over HTTP (``prometheus_client``,
the ``metrics`` extra, imported only when the sink is made).

It is a sink, so it sees every record: images, anomalies, errors, the latency histogram and the
current rate come from the records themselves. Figures only the loop knows (frames a live source
dropped) come in through :meth:`MetricsSink.observe`. Each sink has its own
``CollectorRegistry``, never the process-wide one, so tests and several watchers in one process
do not collide.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

from adx_runtime.errors import ConfigError, DependencyError

__all__ = ["LATENCY_BUCKETS_S", "MetricsSink"]

#: latency histogram buckets, seconds: from one fast image (a few ms) to a burst's queue (tens of s)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: width of the time bins the rate is counted in; the window is a whole number of them
_BIN_S = 0.25


def _prometheus() -> Any:
    try:
        import prometheus_client  # noqa: PLC0415 (optional extra)
    except ModuleNotFoundError:
        raise DependencyError("--metrics-port needs prometheus_client, not installed here: "
                              "pip install 'adexport[metrics]'") from None
    return prometheus_client


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Rate:
    """Records per second per source over the last ``window_s``, counted in 0.25 s bins (memory:
    a few bins per source, whatever the rate). Read at scrape time, so a stalled watcher reads 0."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._bins: dict[str, dict[int, int]] = defaultdict(dict)
        self.opened = time.monotonic()
        self._lock = threading.Lock()

    def add(self, source: str, n: int, now: float) -> None:
        b = int(now / _BIN_S)
        with self._lock:
            bins = self._bins[source]
            bins[b] = bins.get(b, 0) + n
            for old in [k for k in bins if k <= b - self.window_s / _BIN_S - 1]:
                del bins[old]

    def rates(self, now: float) -> dict[str, float]:
        # Over the window, or since the sink opened when that is shorter (a fresh watcher's rate is not
        # diluted by time it was not running).
        span = max(min(self.window_s, now - self.opened), _BIN_S)
        first = now - span
        with self._lock:
            return {source: sum(n for b, n in bins.items() if (b + 1) * _BIN_S > first) / span
                    for source, bins in self._bins.items()}


class MetricsSink:
    """Serves ``/metrics`` on ``host:port`` (127.0.0.1 by default; port 0 picks a free one, and the
    start line and :attr:`url` say which). Every series has a ``source`` label (the record's source):

    * ``adx_watch_images_total``: records, one per image or frame taken, errors included;
    * ``adx_watch_anomalies_total``: records labelled anomalous;
    * ``adx_watch_errors_total``: records with an error (undecodable, half-written, ...);
    * ``adx_watch_dropped_frames_total``: frames a live source dropped to keep up (the records'
      ``dropped`` field, or :meth:`observe`);
    * ``adx_watch_latency_seconds``: histogram of the records' ``latency_ms`` (available -> record written);
    * ``adx_watch_fps``: records per second over the last ``fps_window_s`` seconds (5), at scrape time;
    * ``adx_watch_last_record_timestamp_seconds``: Unix time of the latest record (alert on a stall).

    Writing is a few counter increments under prometheus_client's locks: it never waits on a scraper.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", *, fps_window_s: float = 5.0):
        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port must be 0 (a free port) to 65535, got {port}")
        if fps_window_s < _BIN_S:
            raise ConfigError(f"the FPS window must be >= {_BIN_S} s, got {fps_window_s}")
        self._prom = _prometheus()  # a missing extra is one line now, before the bundle loads
        self.host, self.port = host, port
        self.name = f"metrics {self.url}"
        self._rate = _Rate(fps_window_s)
        self._sources: set[str] = set()  # bounded by the number of sources
        self._dropped_seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._log: Callable[[str], None] = lambda line: None
        prom = self._prom
        self.registry = prom.CollectorRegistry()
        label = ["source"]
        self._images = prom.Counter("adx_watch_images", "Images or frames taken: one record each, errors included.",
                                    label, registry=self.registry)
        self._anomalies = prom.Counter("adx_watch_anomalies", "Records labelled anomalous.", label,
                                       registry=self.registry)
        self._errors = prom.Counter("adx_watch_errors", "Records with an error (the image could not be scored).",
                                    label, registry=self.registry)
        self._dropped = prom.Counter("adx_watch_dropped_frames", "Frames a live source dropped to keep up.", label,
                                     registry=self.registry)
        self._latency = prom.Histogram("adx_watch_latency_seconds",
                                       "End-to-end latency: image or frame available -> record written.", label,
                                       buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self._last = prom.Gauge("adx_watch_last_record_timestamp_seconds", "Unix time of the latest record.", label,
                                registry=self.registry)
        self.registry.register(_FpsCollector(self._rate, prom))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def attach(self, *, stop: threading.Event, log: Callable[[str], None]) -> None:
        self._log = log

    def open(self) -> None:
        try:
            self._server, self._thread = self._prom.start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {self.port}: cannot listen on {self.host}:{self.port} "
                              f"({exc.strerror or exc}); pick another port, or 0 for a free one") from None
        self.port = int(self._server.server_address[1])
        self._rate.opened = time.monotonic()
        self.name = f"metrics {self.url}"
        self._log(f"metrics: Prometheus text format on {self.url}")
        if not _is_loopback(self.host):
            self._log(f"note: the metrics endpoint listens on {self.host}, reachable from other machines; "
                      "it has no authentication (put it behind a firewall or a proxy)")

    def write(self, records: list[dict[str, Any]]) -> None:
        now, wall = time.monotonic(), time.time()
        per_source: dict[str, int] = defaultdict(int)
        for rec in records:
            source = str(rec.get("source") or "")
            if source not in self._sources:
                self._add_source(source)
            per_source[source] += 1
            self._images.labels(source).inc()
            if rec.get("error") is not None:
                self._errors.labels(source).inc()
            elif rec.get("label") == "anomalous":
                self._anomalies.labels(source).inc()
            dropped = rec.get("dropped")  # a live source's frames dropped so far (cumulative)
            if isinstance(dropped, int) and not isinstance(dropped, bool):
                self._follow_dropped(source, dropped)
            latency = rec.get("latency_ms")
            if isinstance(latency, (int, float)) and math.isfinite(latency) and latency >= 0:
                self._latency.labels(source).observe(latency / 1000)
        for source, n in per_source.items():
            self._rate.add(source, n, now)
            self._last.labels(source).set(wall)

    def _add_source(self, source: str) -> None:
        # Every series of a source exists (at 0) from its first sight, so a count that is still 0
        # reads 0, not "no data", and Prometheus' increase() counts the first event too.
        self._sources.add(source)
        for metric in (self._images, self._anomalies, self._errors, self._dropped, self._latency):
            metric.labels(source)

    def _follow_dropped(self, source: str, total: int) -> None:
        with self._lock:
            step = total - self._dropped_seen.get(source, 0)
            if step > 0:  # a counter never goes down; a smaller total (a restarted source) adds nothing
                self._dropped_seen[source] = total
        if step > 0:
            self._dropped.labels(source).inc(step)

    def observe(self, source: str, *, dropped_total: int = 0) -> None:
        """What a record may not carry: the frames ``source`` has dropped so far (cumulative, as the
        records' ``dropped`` field; the counter follows the larger of the two, so both may be used).

        Call it when a source opens (``dropped_total=0``) so its series exist before the first image,
        and at stop, so drops after the last record count."""
        if dropped_total < 0:
            raise ValueError(f"dropped_total must be >= 0, got {dropped_total}")
        source = str(source)
        if source not in self._sources:
            self._add_source(source)
        self._follow_dropped(source, dropped_total)

    def status(self) -> str:
        return ""

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _FpsCollector:
    """``adx_watch_fps`` computed when scraped (a gauge set per batch would freeze at its last value
    when the images stop)."""

    def __init__(self, rate: _Rate, prom: Any):
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 (optional extra)

        self._rate = rate
        self._family = GaugeMetricFamily

    def _metric(self) -> Any:
        return self._family("adx_watch_fps", "Records per second over the last few seconds.", labels=["source"])

    def describe(self) -> list[Any]:
        return [self._metric()]

    def collect(self) -> Iterator[Any]:
        metric = self._metric()
        for source, rate in sorted(self._rate.rates(time.monotonic()).items()):
            metric.add_metric([source], round(rate, 3))
        yield metric
