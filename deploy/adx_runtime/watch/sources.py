"""Where images come from: a source yields :class:`Item` s that are complete and ready to score.

:class:`HotFolder` watches one folder (not its sub-folders, so ``done/`` and ``failed/`` inside it
are never watched). The rule for "complete":

- only regular files with an image suffix count; names starting with ``.`` or ``~`` are ignored,
  and so are temporary names (``*.tmp``, ``*.part``, ...: not image suffixes), so a writer that
  writes ``x.png.part`` (or ``.x.png``) and renames it to ``x.png`` is scored once, after the rename;
- with file events (watchdog, on Linux inotify): a file renamed into the folder, or closed after
  writing (``IN_CLOSE_WRITE``), is complete at once; a file seen being written and not yet closed
  waits for its close (or, should that event be lost, for ``stale_s`` without change);
- otherwise (polling, or a file found by a rescan with no event, e.g. present at start): its size
  and modification time must stay unchanged for ``settle_s``, measured on this machine's clock (a
  network share's clock may differ, so its mtimes are compared, never trusted as times).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from adx_runtime.images import IMAGE_LIKE_SUFFIXES

__all__ = ["HotFolder", "Item", "eligible_name"]

#: How often the folder is listed again in event mode: a safety net for lost events (an inotify
#: queue overflow) and for files whose events predate the watcher.
RESCAN_S = 5.0
#: How often ``--poll`` lists the folder for new files (files already seen are stat'ed every tick):
#: often enough for a short latency, rarely enough for a network share.
POLL_SCAN_S = 0.25


@dataclass
class Item:
    """One image ready to score: its identity (``key``: the file name, with size and mtime) and
    when it became available, on the monotonic clock (latency) and as wall time (records)."""

    path: Path
    key: str
    size: int
    mtime_ns: int
    ready_mono: float
    ready_wall: float

    @property
    def timestamp(self) -> str:
        return datetime.fromtimestamp(self.ready_wall, timezone.utc).isoformat(timespec="milliseconds")


def eligible_name(name: str) -> bool:
    """A file name the hot folder scores: an image suffix, not hidden or an editor/temp name."""
    return not name.startswith((".", "~")) and os.path.splitext(name)[1].lower() in IMAGE_LIKE_SUFFIXES


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    since: float  # monotonic time this (size, mtime) was first seen
    closed: bool = False  # a close-after-write or rename-into event arrived: complete now
    closed_at: float = 0.0  # monotonic time of that event (watchdog's thread stamps it)
    writing: bool = False  # seen being written (event) and not closed yet


class HotFolder:
    """Files that appear in ``folder``, each yielded once per identity when complete.

    ``is_done(name, size, mtime_ns)`` says a file was scored already (the journal), so it is not
    yielded again. Memory holds one entry per file waiting in the folder, nothing per file scored.
    """

    def __init__(self, folder: Path, *, settle_s: float = 1.0, poll: bool = False, interval_s: float = 0.1,
                 stale_s: float = 30.0, is_done: Callable[[str, int, int], bool] = lambda n, s, m: False,
                 log: Callable[[str], None] = lambda line: None):
        self.folder = Path(folder)
        # Event paths may come as given or resolved (a folder reached through a symbolic link).
        self._folders = {self.folder, Path(os.path.realpath(folder))}
        self.settle_s = settle_s
        self.interval_s = interval_s
        self.stale_s = max(stale_s, settle_s)
        self.is_done = is_done
        self.log = log
        self.poll = poll
        self._candidates: dict[str, _Candidate] = {}
        # name -> ("write" | "closed", monotonic time), filled by watchdog's thread
        self._events: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._observer: Any = None
        self._close_events = False  # whether this platform's events say when a writer closes a file
        self._last_scan = -1e9
        self._yielded: set[str] = set()  # names yielded and not yet confirmed done by the caller

    @property
    def mode(self) -> str:
        return "polling" if self._observer is None else "file events (watchdog)"

    def start(self) -> None:
        """Start file events; without watchdog, or with ``poll``, the folder is polled."""
        if self.poll:
            return
        try:
            from watchdog.events import FileSystemEventHandler  # noqa: PLC0415 - optional extra
            from watchdog.observers import Observer  # noqa: PLC0415
        except ImportError:
            self.log("note: watchdog is not installed, polling the folder instead "
                     "(pip install 'adexport[watch]' for file events)")
            self.poll = True
            return
        source = self

        class Handler(FileSystemEventHandler):  # type: ignore[misc]
            # Runs on watchdog's thread: only records names; the main loop stats them.
            def on_created(self, event: Any) -> None:
                source._event(event.src_path, "write", event.is_directory)

            def on_modified(self, event: Any) -> None:
                source._event(event.src_path, "write", event.is_directory)

            def on_closed(self, event: Any) -> None:
                source._event(event.src_path, "closed", event.is_directory)

            def on_moved(self, event: Any) -> None:
                source._event(event.dest_path, "closed", event.is_directory)

        try:
            # Full events: a file renamed in from outside the folder is a move (complete), not a
            # creation still being written (inotify only; other platforms take no such argument).
            observer = Observer(generate_full_events=True)
        except TypeError:
            observer = Observer()
        try:
            observer.schedule(Handler(), str(self.folder), recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit reached: polling still works
            self.log(f"note: file events unavailable ({exc.strerror or exc}), polling the folder instead")
            self.poll = True
            return
        self._observer = observer
        # inotify reports close-after-write; FSEvents and Windows do not, so there a file being
        # written is judged by the settle rule alone rather than waiting for a close that never comes.
        self._close_events = "inotify" in type(observer).__name__.lower()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def _event(self, path: Any, kind: str, is_dir: bool) -> None:
        p = Path(os.fsdecode(path))
        if is_dir or p.parent not in self._folders or not eligible_name(p.name):
            return
        now = time.monotonic()
        with self._lock:
            if self._events.get(p.name, ("",))[0] != "closed":  # a close outranks later modify noise
                self._events[p.name] = (kind, now)
        self._wake.set()

    def forget(self, name: str) -> None:
        """The caller is done with ``name`` (scored, or moved away): it may be yielded again when
        it comes back with another identity."""
        self._yielded.discard(name)

    def _scan(self, now: float) -> None:
        self._last_scan = now
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            self.log(f"warning: cannot list {self.folder}: {exc.strerror or exc}")
            return
        for entry in entries:
            if entry.name not in self._candidates and entry.name not in self._yielded and eligible_name(entry.name):
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not self.is_done(entry.name, st.st_size, st.st_mtime_ns):
                    self._candidates[entry.name] = _Candidate(st.st_size, st.st_mtime_ns, now)

    def ready(self, timeout: float, limit: int) -> list[Item]:
        """Up to ``limit`` complete files, waiting at most ``timeout`` seconds for one."""
        deadline = time.monotonic() + timeout
        while True:
            out = self._check(limit)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            self._wake.wait(min(remaining, self.interval_s))
            self._wake.clear()

    def _check(self, limit: int) -> list[Item]:
        now = time.monotonic()
        if now - self._last_scan >= (POLL_SCAN_S if self.poll else RESCAN_S):
            self._scan(now)
        with self._lock:
            events, self._events = self._events, {}
        for name, (kind, at) in events.items():
            if name in self._yielded:
                continue
            cand = self._candidates.get(name)
            if cand is None:
                cand = self._candidates[name] = _Candidate(-1, -1, now)
            if kind == "closed":
                cand.closed, cand.closed_at, cand.writing = True, at, False
            elif not cand.closed and self._close_events:
                cand.writing = True
        out: list[Item] = []
        for name in list(self._candidates):
            if len(out) >= limit:
                break
            cand = self._candidates[name]
            path = self.folder / name
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                del self._candidates[name]  # gone (renamed away, deleted)
                continue
            if not stat.S_ISREG(st.st_mode) or self.is_done(name, st.st_size, st.st_mtime_ns):
                del self._candidates[name]
                continue
            if (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns):
                cand.size, cand.mtime_ns, cand.since = st.st_size, st.st_mtime_ns, now
            wait = self.stale_s if cand.writing else self.settle_s
            if cand.closed or now - cand.since >= wait:
                del self._candidates[name]
                self._yielded.add(name)
                # Available since the close event, or since it could first be known unchanged: a
                # file that waited here for a busy scorer counts that wait in its latency.
                ready = min(now, cand.closed_at if cand.closed else cand.since + wait)
                out.append(Item(path=path, key=name, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                ready_mono=ready, ready_wall=time.time() - (now - ready)))
        return out
