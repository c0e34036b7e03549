"""The watch loop: ready items -> micro-batches -> one :class:`Predictor` -> records -> sinks -> journal.

Order per batch, which is what makes a ``kill -9`` safe:

1. the records are written to every sink (a file sink fsyncs);
2. with ``--move``, each file is renamed into ``done/`` or ``failed/`` (the record already names
   the destination, ``moved_to``);
3. the journal entries are appended and fsync'd.

On start, before anything is scored: the journal is read (a torn last line cut off); the records
of a previous run's output file that the journal lacks (a crash after step 1) are added to the
journal, since they were delivered; a file still in the folder that the journal holds is skipped,
or with ``--move`` moved where its record said (a crash before step 2 ended). A crash can thus
never score a file twice into an output file, and never lose one: a file is either in the output
with its record, or still in the folder unjournaled and scored again. To stdout a record written
just before a crash cannot be read back, so that file is scored again (at least once).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from adx_runtime.errors import ConfigError
from adx_runtime.infer import InferSummary, _row_writer, path_bytes
from adx_runtime.predictor import Predictor
from adx_runtime.watch.journal import Journal, decode_name, encode_name
from adx_runtime.watch.sources import HotFolder, Item

__all__ = ["WatchOptions", "WatchStats", "watch"]

DONE, FAILED = "done", "failed"


@dataclass
class WatchOptions:
    max_batch: int = 8
    max_delay_ms: float = 50.0  # a lone image waits at most this long for company
    settle_ms: float = 1000.0
    poll: bool = False
    interval_s: float = 0.1
    move: bool = False
    journal_dir: Path | None = None  # None: no journal (a restart scores the folder again)
    max_images: int | None = None
    max_seconds: float | None = None
    status_s: float = 10.0

    def check(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_delay_ms < 0 or self.settle_ms < 0:
            raise ConfigError("--max-delay-ms and --settle-ms must be >= 0")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images must be >= 1, got {self.max_images}")


@dataclass
class WatchStats:
    images: int = 0
    anomalies: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)
    #: the latest latencies (ms), bounded so days of running keep flat memory
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

    def line(self) -> str:
        rate = self.images / max(time.monotonic() - self.started, 1e-9)
        return (f"watch: {self.images} images, {self.anomalies} anomalous, {self.errors} errors; "
                f"latency p50 {self.percentile(50):.0f} ms, p99 {self.percentile(99):.0f} ms; {rate:.1f} images/s")


def _free_dest(folder: Path, name: str, taken: set[str]) -> Path:
    """``folder/name``, or ``stem_2.ext``, ... when a file of that name is already there."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in taken or os.path.lexists(folder / candidate):
        n += 1
        candidate = f"{stem}_{n}{ext}"
    taken.add(candidate)
    return folder / candidate


def _reconcile(folder: Path, journal: Journal, sinks: Sequence[Any], log: Callable[[str], None]) -> None:
    """Journal what a previous run delivered but did not journal (a crash between the two)."""
    missing = []
    for sink in sinks:
        for rec in getattr(sink, "delivered", lambda: [])():
            if "bytes" not in rec or "mtime_ns" not in rec or "path" not in rec:
                continue
            name = Path(decode_name(rec, "path", "path_bytes")).name
            if not journal.done(name, int(rec["bytes"]), int(rec["mtime_ns"])):
                missing.append({**encode_name(name), "bytes": rec["bytes"], "mtime_ns": rec["mtime_ns"],
                                "label": rec.get("label"), "error": rec.get("error") is not None,
                                "moved_to": rec.get("moved_to")})
    if missing:
        log(f"note: {len(missing)} results written before a stop were not journaled; journaled them now")
        journal.add(missing)


def _finish_moves(folder: Path, journal: Journal, log: Callable[[str], None]) -> None:
    """With ``--move``: files scored by a previous run that are still in the folder go where their
    record said (a crash between writing the record and moving the file)."""
    for name, (size, mtime_ns, row) in list(journal.entries.items()):
        path = folder / name
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            journal.drop(name)
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            continue
        sub = folder / (FAILED if row.get("error") else DONE)
        dest = Path(row["moved_to"]) if row.get("moved_to") else None
        if dest is None or dest.parent != sub or os.path.lexists(dest):
            dest = _free_dest(sub, name, set())
        try:
            sub.mkdir(exist_ok=True)
            os.rename(path, dest)
        except OSError as exc:  # it stays, journaled: not scored again, tried again at the next start
            log(f"warning: could not move {path} to {dest}: {exc.strerror or exc}")
            continue
        journal.drop(name)
        log(f"note: moved {name} (scored before a stop) to {dest}")


def watch(predictor: Predictor, folder: Path, sinks: Sequence[Any], options: WatchOptions, *,
          stop: threading.Event | None = None, log: Callable[[str], None] = lambda line: None) -> WatchStats:
    """Score every image that arrives in ``folder`` until ``stop`` is set or a limit is reached;
    then finish the images already taken, flush, and return the counts."""
    options.check()
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder")
    stop = stop or threading.Event()
    journal = Journal(options.journal_dir)
    journal.open()
    for sink in sinks:
        attach = getattr(sink, "attach", None)
        if attach is not None:  # a sink with its own thread (the webhook) needs the stop event and the log
            attach(stop=stop, log=log)
        sink.open()
    stats = WatchStats()
    source = HotFolder(folder, settle_s=options.settle_ms / 1000, poll=options.poll, interval_s=options.interval_s,
                       is_done=journal.done, log=log)
    try:
        _reconcile(folder, journal, sinks, log)
        if options.move:
            _finish_moves(folder, journal, log)
            for sub in (DONE, FAILED):
                (folder / sub).mkdir(exist_ok=True)
        try:
            live = {e.name for e in os.scandir(folder)}
        except OSError as exc:
            raise ConfigError(f"cannot list {str(folder)!r}: {exc.strerror or exc}") from None
        journal.compact(live, force=True)
        source.start()
        log(f"watching {folder} ({source.mode}; complete when closed or renamed in, else unchanged for "
            f"{options.settle_ms:g} ms) with {predictor.bundle_dir} ({predictor.method}; batches of up to "
            f"{options.max_batch}, max delay {options.max_delay_ms:g} ms); results to "
            f"{', '.join(s.name for s in sinks)}; journal {journal.path or 'off'}"
            + ("; scored files move to done/ and failed/" if options.move else ""))
        _run(predictor, folder, source, sinks, journal, options, stats, stop, log)
    finally:
        source.stop()
        for sink in sinks:
            sink.close()
        journal.close()
    log(stats.line() + " (stopped)")
    return stats


def _run(predictor: Predictor, folder: Path, source: HotFolder, sinks: Sequence[Any], journal: Journal,
         options: WatchOptions, stats: WatchStats, stop: threading.Event, log: Callable[[str], None]) -> None:
    delay = options.max_delay_ms / 1000
    started = time.monotonic()
    next_status = started + options.status_s
    pending: list[Item] = []  # taken from the source, not yet scored: at most max_batch
    while True:
        now = time.monotonic()
        left = None if options.max_images is None else options.max_images - stats.images - len(pending)
        out_of_time = options.max_seconds is not None and now - started >= options.max_seconds
        if stop.is_set() or out_of_time or (left is not None and left <= 0):
            break  # stop taking input; what was taken is scored below
        if now >= next_status:
            notes = [n for n in (getattr(s, "status", lambda: "")() for s in sinks) if n]
            log(stats.line() + "".join(f"; {n}" for n in notes))
            next_status = now + options.status_s
        room = options.max_batch - len(pending)
        if left is not None:
            room = min(room, left)
        wait = options.interval_s if not pending else max(0.0, pending[0].ready_mono + delay - now)
        if room > 0:
            pending += source.ready(wait, room)
        elif wait > 0:
            time.sleep(min(wait, options.interval_s))
        full = len(pending) >= options.max_batch or (options.max_images is not None
                                                    and len(pending) >= options.max_images - stats.images)
        if pending and (full or time.monotonic() >= pending[0].ready_mono + delay):
            _score(predictor, folder, pending, sinks, journal, source, options, stats, log)
            pending = []
    if pending:
        _score(predictor, folder, pending, sinks, journal, source, options, stats, log)


def _score(predictor: Predictor, folder: Path, batch: list[Item], sinks: Sequence[Any], journal: Journal,
           source: HotFolder, options: WatchOptions, stats: WatchStats, log: Callable[[str], None]) -> None:
    results = list(predictor.predict_files([str(it.path) for it in batch], batch_size=len(batch), decode_ahead=0))
    # The adx infer line for each result, from infer's own writer, so the fields never drift apart.
    summary = InferSummary()
    rows: list[dict[str, Any]] = []
    write = _row_writer(None, "jsonl", emit=rows.append)  # the sinks make each row valid JSON text
    records: list[dict[str, Any]] = []
    taken: set[str] = set()
    dests: list[Path | None] = []
    for item, res in zip(batch, results):
        write(res, summary)
        row = rows[-1]
        row.update(source=str(folder), timestamp=item.timestamp, bytes=item.size, mtime_ns=item.mtime_ns)
        dest = _free_dest(folder / (DONE if res.ok else FAILED), item.key, taken) if options.move else None
        if dest is not None:
            row["moved_to"] = str(dest)
            exact = path_bytes(str(dest))
            if exact is not None:
                row["moved_to_bytes"] = exact
        dests.append(dest)
        records.append(row)
    now = time.monotonic()
    for item, row in zip(batch, records):
        row["latency_ms"] = round((now - item.ready_mono) * 1000, 2)
        stats.latencies.append(row["latency_ms"])
    for sink in sinks:
        sink.write(records)
    for item, dest in zip(batch, dests):
        if dest is not None:
            try:
                os.rename(item.path, dest)
            except OSError as exc:
                log(f"warning: could not move {item.path} to {dest}: {exc.strerror or exc}")
    journal.add({**encode_name(item.key), "bytes": item.size, "mtime_ns": item.mtime_ns, "label": row.get("label"),
                 "error": "error" in row, "moved_to": row.get("moved_to")} for item, row in zip(batch, records))
    for item, dest in zip(batch, dests):
        source.forget(item.key)
        if dest is not None:
            journal.drop(item.key)
    journal.compact()
    stats.images += len(batch)
    stats.anomalies += summary.flagged
    stats.errors += summary.failed
