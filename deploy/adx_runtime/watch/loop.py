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

A video file, stream or camera (:mod:`.video`) goes through the same micro-batching loop with its
own scoring step (:func:`_score_frames`): no journal (a frame has no identity that survives a
restart), records carry the frame index, the stream time and, for a live source, the frames
dropped so far.
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

import numpy as np

from adx_runtime.errors import ConfigError, ImageDecodeError
from adx_runtime.images import decode_image
from adx_runtime.infer import InferSummary, _row_writer, path_bytes
from adx_runtime.predictor import FileResult, Predictor
from adx_runtime.watch.journal import Journal, decode_name, encode_name
from adx_runtime.watch.saving import Saver
from adx_runtime.watch.sources import HotFolder, Item
from adx_runtime.watch.video import OPEN_TRIES, Frame, FrameSource, SourceError, cut, frame_source, roi_misfit

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
    every: int = 1  # video: score every Nth frame read
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in the source's pixels, cut before preprocessing
    realtime: bool = False  # a video file read at its own frame rate, as a live source (drops when behind)
    open_tries: int = OPEN_TRIES  # a live source that never opens is given up after this many tries
    save_dir: Path | None = None  # --save-anomalies
    save_normal_every: int = 0  # with save_dir: also every Nth normal picture (0: none)

    def check(self) -> None:
        if self.every < 1:
            raise ConfigError(f"--every must be >= 1, got {self.every}")
        if self.save_normal_every < 0:
            raise ConfigError(f"--save-normal-every must be >= 0, got {self.save_normal_every}")
        if self.save_normal_every and self.save_dir is None:
            raise ConfigError("--save-normal-every needs --save-anomalies DIR (where the pictures go)")
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
    dropped: int = 0  # live sources: frames pushed out unscored because scoring lagged
    live: bool = False  # a live source: the status line shows drops
    unit: str = "images"
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
        return (f"watch: {self.images} {self.unit}, {self.anomalies} anomalous, {self.errors} errors"
                + (f", {self.dropped} dropped" if self.live else "")
                + f"; latency p50 {self.percentile(50):.0f} ms, p99 {self.percentile(99):.0f} ms; "
                f"{rate:.1f} {self.unit}/s")


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


def _open_sinks(sinks: Sequence[Any], stop: threading.Event, log: Callable[[str], None]) -> None:
    """Open every sink, or none: when one fails to open (a taken metrics port, an unwritable file),
    those already open are closed again, so no sender thread outlives the error."""
    opened: list[Any] = []
    try:
        for sink in sinks:
            attach = getattr(sink, "attach", None)
            if attach is not None:  # a sink with its own thread (the webhook) needs the stop event and the log
                attach(stop=stop, log=log)
            sink.open()
            opened.append(sink)
    except BaseException:
        stop.set()
        for sink in reversed(opened):
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise


def _close(source: Any, saver: Saver | None, sinks: Sequence[Any]) -> None:
    """Stop taking input, then finish the pictures in hand, then flush every sink (in that order:
    a record names its saved picture)."""
    source.stop()
    if saver is not None:
        saver.close()
    for sink in sinks:
        sink.close()


def _saver(options: WatchOptions, log: Callable[[str], None]) -> Saver | None:
    return None if options.save_dir is None else Saver(options.save_dir, normal_every=options.save_normal_every,
                                                         log=log)


def _saving_note(saver: Saver | None, options: WatchOptions) -> str:
    if saver is None:
        return ""
    return (f"; anomalous pictures with heatmaps to {saver.folder}"
            + (f" (and one normal in {options.save_normal_every})" if options.save_normal_every else ""))


def watch(predictor: Predictor, folder: Path | str | FrameSource, sinks: Sequence[Any], options: WatchOptions, *,
          stop: threading.Event | None = None, log: Callable[[str], None] = lambda line: None) -> WatchStats:
    """Score every image that arrives in ``folder`` (or every frame of a video file, stream or
    camera: anything that is not a folder, or a :class:`FrameSource`) until ``stop`` is set, a limit
    is reached or a file's frames end; then finish the images already taken, flush, and return the
    counts."""
    options.check()
    stop = stop or threading.Event()
    if not isinstance(folder, (str, os.PathLike)):
        return _watch_frames(predictor, folder, sinks, options, stop, log)
    if not Path(folder).is_dir():
        source = frame_source(str(folder), every=options.every, roi=options.roi, capacity=options.max_batch,
                              realtime=options.realtime, open_tries=options.open_tries, log=log)
        return _watch_frames(predictor, source, sinks, options, stop, log)
    folder = Path(folder)
    journal = Journal(options.journal_dir)
    journal.open()
    saver = _saver(options, log)
    _open_sinks(sinks, stop, log)
    stats = WatchStats()
    source = HotFolder(folder, settle_s=options.settle_ms / 1000, poll=options.poll, interval_s=options.interval_s,
                       is_done=journal.done, log=log)
    try:
        if saver is not None:
            saver.open()
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
            + ("; scored files move to done/ and failed/" if options.move else "")
            + (f"; region {','.join(map(str, options.roi))} of each image" if options.roi else "")
            + _saving_note(saver, options))
        _run(source.ready, lambda batch: _score(predictor, folder, batch, sinks, journal, source, options, stats,
                                                saver, log),
             sinks, options, stats, stop, log)
    finally:
        _close(source, saver, sinks)
        journal.close()
    log(stats.line() + " (stopped)")
    return stats


def _watch_frames(predictor: Predictor, source: FrameSource, sinks: Sequence[Any], options: WatchOptions,
                  stop: threading.Event, log: Callable[[str], None]) -> WatchStats:
    stats = WatchStats(live=source.live, unit="frames")
    saver = _saver(options, log)
    try:
        if saver is not None:
            saver.open()
        _open_sinks(sinks, stop, log)
        source.start()
        log(f"watching {source.describe()} with {predictor.bundle_dir} ({predictor.method}; batches of up to "
            f"{options.max_batch}, max delay {options.max_delay_ms:g} ms); results to "
            f"{', '.join(s.name for s in sinks)}"
            + (f"; region {','.join(map(str, options.roi))} of each frame" if options.roi else "")
            + _saving_note(saver, options))

        def notes() -> list[str]:
            stats.dropped = source.dropped
            return [source.status()]

        _run(source.ready, lambda batch: _score_frames(predictor, source, batch, sinks, stats, saver),
             sinks, options, stats, stop, log, finished=lambda: source.finished, notes=notes)
    finally:
        _close(source, saver, sinks)
    stats.dropped = source.dropped
    log(stats.line() + (" (end of file)" if source.finished else " (stopped)"))
    return stats


def _run(ready: Callable[[float, int], list[Any]], score: Callable[[list[Any]], None], sinks: Sequence[Any],
         options: WatchOptions, stats: WatchStats, stop: threading.Event, log: Callable[[str], None], *,
         finished: Callable[[], bool] = lambda: False, notes: Callable[[], list[str]] = lambda: []) -> None:
    """Micro-batching: take what is ready, score when ``max_batch`` are in hand or the oldest has
    waited ``max_delay_ms``. ``ready(timeout, limit)`` gives items with ``ready_mono``; ``finished``
    says a source has nothing more (a video file's end)."""
    delay = options.max_delay_ms / 1000
    started = time.monotonic()
    next_status = started + options.status_s
    pending: list[Any] = []  # taken from the source, not yet scored: at most max_batch
    while True:
        now = time.monotonic()
        left = None if options.max_images is None else options.max_images - stats.images - len(pending)
        out_of_time = options.max_seconds is not None and now - started >= options.max_seconds
        if stop.is_set() or out_of_time or (left is not None and left <= 0) or (finished() and not pending):
            break  # stop taking input; what was taken is scored below
        if now >= next_status:
            extra = [n for n in notes() + [getattr(s, "status", lambda: "")() for s in sinks] if n]
            log(stats.line() + "".join(f"; {n}" for n in extra))
            next_status = now + options.status_s
        room = options.max_batch - len(pending)
        if left is not None:
            room = min(room, left)
        wait = options.interval_s if not pending else max(0.0, pending[0].ready_mono + delay - now)
        if room > 0:
            try:
                pending += ready(wait, room)
            except SourceError:
                if pending:  # what was read before the source failed is still scored and written
                    score(pending)
                raise
        elif wait > 0:
            time.sleep(min(wait, options.interval_s))
        full = len(pending) >= options.max_batch or (options.max_images is not None
                                                    and len(pending) >= options.max_images - stats.images)
        if pending and (full or finished() or time.monotonic() >= pending[0].ready_mono + delay):
            score(pending)
            pending = []
    if pending:
        score(pending)


def _predict_arrays(predictor: Predictor, names: list[str], arrays: list[np.ndarray],
                    keep_maps: bool) -> list[FileResult]:
    """Score decoded ``(H, W, 3)`` uint8 pictures as one batch: one :class:`FileResult` each, like
    :meth:`Predictor.predict_files` gives for files (a non-finite score is an error, not a label)."""
    if not arrays:
        return []
    pred = predictor.predict(arrays)
    out = []
    for j, (name, arr) in enumerate(zip(names, arrays)):
        score = float(pred.image_scores[j])
        size = (int(arr.shape[1]), int(arr.shape[0]))
        if not math.isfinite(score):
            out.append(FileResult(path=name, size=size, error=f"the model gave a non-finite score ({score}) for "
                                  "this image; it was not labelled"))
            continue
        out.append(FileResult(path=name, image_score=score, normalized_score=float(pred.normalized_scores[j]),
                              label=bool(pred.labels[j]), size=size,
                              anomaly_map=pred.anomaly_maps[j] if keep_maps and pred.anomaly_maps is not None
                              else None))
    return out


def _save(saver: Saver, predictor: Predictor, res: FileResult, stem: str, wall: float,
          image: Callable[[], np.ndarray], log: Callable[[str], None]) -> str | None:
    """Queue the overlay of one scored picture when the saver wants it; the path for its record."""
    if not res.ok or not saver.wants(bool(res.label)):
        return None
    path = saver.name(stem, bool(res.label), wall)
    norm, raw = None, False
    if res.anomaly_map is not None:
        if predictor.pixel_threshold is not None:
            norm = predictor.normalized_maps(res.anomaly_map)
        else:
            norm, raw = res.anomaly_map, True
    try:
        picture = image()
    except ImageDecodeError as exc:  # changed on disk since it was scored: the record goes without a picture
        log(f"warning: could not save {path}: {exc.reason}")
        return None
    saver.submit(path, picture, norm, raw, predictor.preprocess)
    return str(path)


def _rgb_array(path: Path, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    img = decode_image(path)
    return cut(np.asarray(img.convert("RGB")), roi)


def _folder_results(predictor: Predictor, batch: list[Item], options: WatchOptions,
                    keep_maps: bool) -> list[FileResult]:
    """Files of one batch scored; with ``--roi`` each is decoded here and cut first (an image the
    region does not fit gets an error record, the rest are scored)."""
    if options.roi is None:
        return list(predictor.predict_files([str(it.path) for it in batch], batch_size=len(batch), decode_ahead=0,
                                            keep_maps=keep_maps))
    results: list[FileResult | None] = [None] * len(batch)
    names, arrays, where, notes = [], [], [], []
    for i, item in enumerate(batch):
        try:
            img = decode_image(item.path)
        except ImageDecodeError as exc:
            results[i] = FileResult(path=str(item.path), error=exc.reason)
            continue
        misfit = roi_misfit(options.roi, *img.size)
        if misfit:
            results[i] = FileResult(path=str(item.path), size=img.size, error=misfit)
            continue
        names.append(str(item.path))
        arrays.append(cut(np.asarray(img.convert("RGB")), options.roi))
        where.append(i)
        notes.append(img.info.get("adx_note"))
    for i, note, res in zip(where, notes, _predict_arrays(predictor, names, arrays, keep_maps)):
        res.note = note
        results[i] = res
    return [r for r in results if r is not None]


def _send(batch: Sequence[Any], rows: list[dict[str, Any]], stats: WatchStats, sinks: Sequence[Any]) -> None:
    """Stamp each record with its latency (from when its file or frame was ready) and hand the
    batch's records to every sink; the folder and the stream loops share it."""
    now = time.monotonic()
    for item, row in zip(batch, rows):
        row["latency_ms"] = round((now - item.ready_mono) * 1000, 2)
        stats.latencies.append(row["latency_ms"])
    for sink in sinks:
        sink.write(rows)


def _score(predictor: Predictor, folder: Path, batch: list[Item], sinks: Sequence[Any], journal: Journal,
           source: HotFolder, options: WatchOptions, stats: WatchStats, saver: Saver | None,
           log: Callable[[str], None]) -> None:
    results = _folder_results(predictor, batch, options, keep_maps=saver is not None)
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
        if saver is not None:  # decoded again here, on the loop's thread, before --move takes the file away
            saved = _save(saver, predictor, res, Path(item.key).stem, item.ready_wall,
                          lambda: _rgb_array(item.path, options.roi), log)
            if saved:
                row["saved"] = saved
        dest = _free_dest(folder / (DONE if res.ok else FAILED), item.key, taken) if options.move else None
        if dest is not None:
            row["moved_to"] = str(dest)
            exact = path_bytes(str(dest))
            if exact is not None:
                row["moved_to_bytes"] = exact
        dests.append(dest)
        records.append(row)
    _send(batch, records, stats, sinks)
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


def _score_frames(predictor: Predictor, source: FrameSource, batch: list[Frame], sinks: Sequence[Any],
                  stats: WatchStats, saver: Saver | None) -> None:
    results = _predict_arrays(predictor, [source.name] * len(batch), [f.image for f in batch],
                              keep_maps=saver is not None)
    summary = InferSummary()
    rows: list[dict[str, Any]] = []
    write = _row_writer(None, "jsonl", emit=rows.append)
    stem = Path(source.name).stem if not source.live else "frame"
    for frame, res in zip(batch, results):
        write(res, summary)
        row = rows[-1]
        row.update(source=source.name, frame=frame.index, pts_s=frame.pts_s, timestamp=frame.timestamp)
        if source.live:
            row["dropped"] = source.dropped  # frames dropped so far on this source
        if saver is not None:
            saved = _save(saver, predictor, res, f"{stem}_{frame.index:08d}", frame.ready_wall,
                          lambda: frame.image, lambda line: None)
            if saved:
                row["saved"] = saved
    _send(batch, rows, stats, sinks)
    stats.images += len(batch)
    stats.anomalies += summary.flagged
    stats.errors += summary.failed
    stats.dropped = source.dropped
