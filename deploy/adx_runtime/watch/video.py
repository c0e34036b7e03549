"""Frame sources: video files, live streams and cameras, decoded by PyAV (FFmpeg) on a reader thread.

A frame source yields :class:`Frame` s: a decoded ``(H, W, 3)`` uint8 RGB array with a frame index
(monotonic for the source: frames read, counted from 0, never reset by a reconnect, so a gap in the
scored indices shows the frames skipped or dropped), the stream's own time (``pts_s``, from the
container; None where it has none) and the moment it was decoded (latency starts there).

Two kinds, one rule each:

- :class:`VideoFile` (a file): every frame, in order (every Nth with ``every``). The reader decodes
  ahead into a queue of ``capacity`` frames and waits when it is full: nothing is dropped, and a
  slow scorer only slows the reading.
- :class:`LiveSource` (a URL, a camera, or a file with ``realtime``): the reader never waits for the
  scorer. It keeps the newest ``capacity`` frames (the loop's ``--max-batch``; 1 at batch 1:
  latest frame wins); a frame pushed out unscored is *dropped* and counted. A stream that ends or
  fails is opened again after 0.5 s, 1 s, 2 s, ... at most 10 s (each logged); a source that has
  never opened is given up after ``open_tries`` tries, as one :class:`SourceError`.

PyAV is imported only when a video source is opened (the ``video`` extra); the hot folder and
everything else work without it. :func:`frame_source` picks the kind from the SOURCE argument.
"""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from adx_runtime.errors import AdxError, ConfigError, DependencyError

__all__ = ["Frame", "FrameSource", "LiveSource", "SourceError", "VideoFile", "frame_source", "parse_roi",
           "pyav_frames", "redact"]

#: Reconnect delays of a live source: the first, doubling to at most the last.
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 10.0
#: Tries before a live source that has never opened is given up (0.5+1+2+4 s of waiting between them).
OPEN_TRIES = 5
#: Seconds FFmpeg may wait to open a network stream, or for its next packet, before the reader
#: treats it as failed (and reconnects): a stalled camera must not hang the reader for good.
NETWORK_TIMEOUT_S = 5.0

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")

#: What an opener gives: decoded frames as ``(rgb array, stream time in seconds or None)``.
Opener = Callable[[], Iterator[tuple[np.ndarray, float | None]]]


class SourceError(AdxError):
    """A video source could not be opened or read (the CLI prints it as one line and exits non-zero)."""


@dataclass
class Frame:
    index: int  # frames read from the source before this one (monotonic, gaps = skipped or dropped)
    image: np.ndarray  # (H, W, 3) uint8 RGB, cut to --roi
    pts_s: float | None  # the stream's own time of the frame, seconds (None: the container has none)
    ready_mono: float  # when it was decoded, monotonic clock (latency)
    ready_wall: float  # the same moment as wall time (records)

    @property
    def timestamp(self) -> str:
        return datetime.fromtimestamp(self.ready_wall, timezone.utc).isoformat(timespec="milliseconds")


class FrameSource(Protocol):
    name: str  # for records and log lines (a URL without its password)
    live: bool
    dropped: int
    finished: bool  # True once a file's last frame has been taken (live sources never finish)

    def start(self) -> None: ...

    def ready(self, timeout: float, limit: int) -> list[Frame]: ...

    def stop(self) -> None: ...

    def describe(self) -> str: ...

    def status(self) -> str: ...


def parse_roi(text: str | None) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` (pixels, x and y >= 0, w and h >= 1) -> a tuple; None stays None."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--roi must be x,y,w,h in whole pixels (e.g. 100,50,640,480), got {text!r}") from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ConfigError(f"--roi needs x, y >= 0 and width, height >= 1, got {text!r}")
    return x, y, w, h


def roi_misfit(roi: tuple[int, int, int, int], width: int, height: int) -> str | None:
    """Why ``roi`` does not fit a ``width`` x ``height`` picture, or None when it does."""
    x, y, w, h = roi
    if x + w > width or y + h > height:
        return (f"--roi {x},{y},{w},{h} reaches to ({x + w}, {y + h}), outside the {width}x{height} picture; "
                f"give a region inside it")
    return None


def cut(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """The ROI of an ``(H, W, 3)`` array as its own contiguous array (so the full frame can be freed)."""
    if roi is None:
        return image
    x, y, w, h = roi
    return np.ascontiguousarray(image[y:y + h, x:x + w])


def redact(source: str) -> str:
    """A URL without the password of its ``user:password@`` part, for records and logs."""
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme and parsed.password is not None:
        netloc = f"{parsed.username}:***@{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return source


def _reason(exc: BaseException) -> str:
    """One line for an FFmpeg/OS error: PyAV's message without the URL it repeats."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _import_av() -> Any:
    try:
        import av  # noqa: PLC0415 - optional extra, only for video sources
    except ImportError:
        raise DependencyError("video files, streams and cameras need PyAV: pip install 'adexport[video]'") from None
    return av


def pyav_frames(target: str, *, fmt: str | None = None, options: dict[str, str] | None = None,
                timeout: float | None = None, realtime: bool = False) -> Iterator[tuple[np.ndarray, float | None]]:
    """Open ``target`` with PyAV now (errors raise here) and return an iterator of its decoded video
    frames as RGB arrays with their stream time. ``realtime`` paces a file at its own frame rate (a
    recorded clip played as if live)."""
    av = _import_av()
    kwargs: dict[str, Any] = {}
    if fmt:
        kwargs["format"] = fmt
    if options:
        kwargs["options"] = options
    if timeout is not None:
        kwargs["timeout"] = (timeout, timeout)
    container = av.open(target, **kwargs)
    if not container.streams.video:
        container.close()
        raise SourceError(f"{redact(target)} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads for decoding (1080p H.264 needs them)

    def frames() -> Iterator[tuple[np.ndarray, float | None]]:
        start = time.monotonic()
        first: float | None = None
        try:
            for frame in container.decode(stream):
                t = frame.time
                if realtime and t is not None:
                    first = t if first is None else first
                    wait = start + (t - first) - time.monotonic()
                    if wait > 0:
                        time.sleep(min(wait, 1.0))
                yield frame.to_ndarray(format="rgb24"), (None if t is None else float(t))
        finally:
            container.close()

    return frames()


def _camera(spec: str) -> str | None:
    """``/dev/videoN`` or a bare integer N -> the V4L2 device path; else None."""
    if re.fullmatch(r"\d+", spec):
        return f"/dev/video{int(spec)}"
    if spec.startswith("/dev/video"):
        return spec
    return None


def frame_source(spec: str, *, every: int = 1, roi: tuple[int, int, int, int] | None = None, capacity: int = 8,
                 realtime: bool = False, open_tries: int = OPEN_TRIES,
                 log: Callable[[str], None] = lambda line: None) -> "VideoFile | LiveSource":
    """The source for a SOURCE argument that is not a folder: a camera (``/dev/video0`` or ``0``,
    V4L2 on Linux), a URL (``rtsp://``, ``http(s)://`` MJPEG or any stream FFmpeg reads), or a
    video file. Nothing is opened yet."""
    camera = _camera(spec)
    scheme = urllib.parse.urlsplit(spec).scheme.lower()
    if camera is not None:
        _import_av()
        opener: Opener = lambda: pyav_frames(camera, fmt="v4l2")  # noqa: E731
        return LiveSource(opener, camera, every=every, roi=roi, capacity=capacity, open_tries=open_tries, log=log)
    if scheme in URL_SCHEMES:
        _import_av()
        # RTSP over TCP: over UDP a lossy network drops packets and tears frames; TCP is what a
        # factory camera on a switched LAN serves reliably.
        options = {"rtsp_transport": "tcp"} if scheme.startswith("rtsp") else None
        opener = lambda: pyav_frames(spec, options=options, timeout=NETWORK_TIMEOUT_S)  # noqa: E731
        return LiveSource(opener, redact(spec), every=every, roi=roi, capacity=capacity, open_tries=open_tries,
                          log=log)
    if "://" in spec:
        raise ConfigError(f"SOURCE {redact(spec)!r}: the scheme {scheme!r} is not one adx watch reads "
                          f"({', '.join(URL_SCHEMES)})")
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"SOURCE {spec!r} is neither a folder, a video file, a URL ({', '.join(URL_SCHEMES)}) "
                          "nor a camera (/dev/video0 or 0)")
    if not path.is_file():
        raise ConfigError(f"SOURCE {spec!r} is not a folder or a regular file")
    _import_av()
    if realtime:
        opener = lambda: pyav_frames(str(path), realtime=True)  # noqa: E731
        return LiveSource(opener, str(path), every=every, roi=roi, capacity=capacity, open_tries=1, log=log,
                          reconnect=False)
    return VideoFile(lambda: pyav_frames(str(path)), str(path), every=every, roi=roi, capacity=capacity, log=log)


class _Reader:
    """What both kinds share: the reader thread, the frame counter, ROI checks and the error that
    ends the source (raised from :meth:`ready` on the loop's thread)."""

    live = False

    def __init__(self, opener: Opener, name: str, *, every: int = 1, roi: tuple[int, int, int, int] | None = None,
                 capacity: int = 8, log: Callable[[str], None] = lambda line: None):
        if every < 1:
            raise ConfigError(f"--every must be >= 1, got {every}")
        if capacity < 1:
            raise ConfigError(f"the frame buffer must hold at least 1 frame, got {capacity}")
        self.opener, self.name, self.every, self.roi, self.capacity, self.log = opener, name, every, roi, capacity, log
        self.dropped = 0
        self.read = 0  # frames read from the source (the next frame's index)
        self.finished = False
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._size: tuple[int, int] | None = None

    def _frame(self, image: np.ndarray, pts: float | None) -> Frame | None:
        """The next frame read, or None when ``every`` skips it; raises SourceError on a bad ROI."""
        index = self.read
        self.read += 1
        if index % self.every:
            return None
        if self.roi is not None and self._size != (image.shape[1], image.shape[0]):
            self._size = (image.shape[1], image.shape[0])
            misfit = roi_misfit(self.roi, *self._size)
            if misfit:
                raise SourceError(f"{self.name}: {misfit}")
        now = time.monotonic()
        return Frame(index=index, image=cut(image, self.roi), pts_s=pts, ready_mono=now,
                     ready_wall=time.time())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adx-watch-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Bounded: the reader checks the stop flag between frames, and network reads time out.
            self._thread.join(timeout=NETWORK_TIMEOUT_S + 2)

    def _run(self) -> None:
        raise NotImplementedError


class VideoFile(_Reader):
    """Every frame of a video file, in order; the reader decodes up to ``capacity`` frames ahead."""

    def __init__(self, opener: Opener, name: str, **kwargs: Any):
        super().__init__(opener, name, **kwargs)
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=self.capacity)
        self._ended = False  # the reader's end marker was taken (finished, or self.error to raise)
        self._frames: Iterator[tuple[np.ndarray, float | None]] | None = None

    def status(self) -> str:
        return ""

    def describe(self) -> str:
        return f"video file {self.name} (every frame{'' if self.every == 1 else f' of {self.every}'}, in order)"

    def start(self) -> None:
        try:  # opened on the caller's thread, so a file FFmpeg cannot read is the first error
            self._frames = self.opener()
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV raises many FFmpeg error types; all mean "cannot open"
            raise SourceError(f"cannot open video file {self.name!r}: {_reason(exc)}") from None
        super().start()

    def _put(self, item: Frame | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        assert self._frames is not None
        try:
            for image, pts in self._frames:
                frame = self._frame(image, pts)
                if frame is not None and not self._put(frame):
                    break
                if self._stop.is_set():
                    break
        except SourceError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a damaged file: what was decoded was scored; say where it stopped
            self.error = f"{self.name}: decoding stopped after frame {self.read - 1}: {_reason(exc)}"
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
            self._put(None)  # the end

    def ready(self, timeout: float, limit: int) -> list[Frame]:
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(out) < limit and not self._ended:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if not out else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._ended = True
                break
            out.append(item)
        if self._ended:
            if self.error is None:
                self.finished = True
            elif not out:  # the frames before the damage were handed out first; now the error
                raise SourceError(self.error)
        return out


class LiveSource(_Reader):
    """A stream or camera: the reader keeps the newest ``capacity`` frames and drops the rest.

    ``max_buffered`` is the most frames ever held at once (never above ``capacity``);
    ``reconnects`` counts the streams opened again after one ended or failed."""

    live = True

    def __init__(self, opener: Opener, name: str, *, open_tries: int = OPEN_TRIES, reconnect: bool = True,
                 backoff: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S), **kwargs: Any):
        super().__init__(opener, name, **kwargs)
        self.open_tries = max(1, open_tries)
        self.reconnect = reconnect
        self.backoff = backoff
        self.reconnects = 0
        self.max_buffered = 0
        self.connected = False
        self._buffer: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._done = False  # the reader has ended (stopped, a file's end, or an error in self.error)

    def describe(self) -> str:
        return (f"live source {self.name} (newest {self.capacity} frame{'s' if self.capacity > 1 else ''} kept, "
                f"older ones dropped and counted; reconnects after {self.backoff[0]:g} s doubling to "
                f"{self.backoff[1]:g} s)")

    def push(self, frame: Frame) -> None:
        """Keep ``frame``; when the buffer is full its oldest frame is dropped (latest frame wins)."""
        with self._cond:
            if len(self._buffer) >= self.capacity:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(frame)
            self.max_buffered = max(self.max_buffered, len(self._buffer))
            self._cond.notify()

    def _end(self, error: str | None) -> None:
        with self._cond:
            self.error = error
            self._done = True
            self._cond.notify()

    def _run(self) -> None:
        delay, first = self.backoff[0], self.backoff[0]
        failures, opened_once, started = 0, False, time.monotonic()
        while not self._stop.is_set():
            try:
                frames = self.opener()
            except Exception as exc:  # noqa: BLE001 - any FFmpeg/OS error is "could not open"
                failures += 1
                if not opened_once and failures >= self.open_tries:
                    tries = f"{failures} tr{'y' if failures == 1 else 'ies'}"
                    took = time.monotonic() - started
                    self._end(f"cannot open {self.name}: {_reason(exc)} ({tries} in {took:.1f} s)")
                    return
                self.log(f"warning: cannot open {self.name}: {_reason(exc)}; trying again in {delay:g} s")
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            if opened_once:
                self.reconnects += 1
                self.log(f"note: {self.name} open again (reconnect {self.reconnects})")
            opened_once, self.connected, failures = True, True, 0
            why = "the stream ended"
            try:
                for image, pts in frames:
                    frame = self._frame(image, pts)
                    if frame is not None:
                        self.push(frame)
                        delay = first  # frames flow again: the next failure starts the backoff afresh
                    if self._stop.is_set():
                        break
            except SourceError as exc:  # a --roi that does not fit: reconnecting cannot help
                self._end(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - a network error, a decoder error: reconnect
                why = _reason(exc)
            finally:
                self.connected = False
                close = getattr(frames, "close", None)
                if close is not None:
                    close()
            if self._stop.is_set():
                break
            if not self.reconnect:
                self._end(None)  # a file played in real time: its end is the end
                return
            self.log(f"warning: {self.name}: {why}; reconnecting in {delay:g} s")
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
        self._end(None)

    def ready(self, timeout: float, limit: int) -> list[Frame]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._buffer and not self._done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            out = [self._buffer.popleft() for _ in range(min(limit, len(self._buffer)))]
            if not out and self._done:
                self.finished = True
                if self.error:
                    raise SourceError(self.error)
            return out

    def status(self) -> str:
        """For the status line, beside the drops it already shows: reconnects, and a stream that is down."""
        parts = [f"{self.reconnects} reconnect{'s' if self.reconnects != 1 else ''}"] if self.reconnects else []
        if not self.connected and not self._done:
            parts.append("not connected")
        return ", ".join(parts)
