"""``--save-anomalies DIR``: anomalous images and frames saved with their heatmap overlays (and,
with ``--save-normal-every N``, every Nth normal one, for audits).

The loop decides and names each picture (the record carries its path), then hands the work (the
overlay: the map brought back onto the picture, blended, JPEG-encoded) to one worker thread through
a queue of :data:`QUEUE` pictures. When the queue is full the loop waits for room: memory stays
bounded and nothing is skipped; a burst of anomalies slows scoring (for a live source: more drops)
rather than growing a backlog. At stop every queued picture is written before the watcher returns.
A picture that cannot be written is a ``warning:`` line and counted (``failed``); its record keeps
the path it was given.
"""

from __future__ import annotations

import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError
from adx_runtime.overlay import overlay
from adx_runtime.preprocess import PreprocessConfig

__all__ = ["QUEUE", "Saver"]

#: pictures waiting for the worker at most (a 1080p frame with its map: about 8 MB each)
QUEUE = 4


def _scaled(anomaly_map: np.ndarray) -> np.ndarray:
    """A raw map scaled by its own range (a bundle without pixel calibration): shows where, not how much."""
    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    return (anomaly_map - lo) / (hi - lo) if hi > lo else anomaly_map * 0.0


class Saver:
    def __init__(self, folder: Path, *, normal_every: int = 0, log: Callable[[str], None] = lambda line: None):
        if normal_every < 0:
            raise ConfigError(f"--save-normal-every must be >= 0 (0: none), got {normal_every}")
        self.folder = Path(folder)
        self.normal_every = normal_every
        self.log = log
        self.saved = 0
        self.failed = 0
        self._normals = 0
        self._names: set[str] = set()
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=QUEUE)
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create --save-anomalies {str(self.folder)!r}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._work, name="adx-watch-saver", daemon=True)
        self._thread.start()

    def wants(self, anomalous: bool) -> bool:
        """Whether this result's picture is saved: every anomalous one, every Nth normal one."""
        if anomalous:
            return True
        if self.normal_every <= 0:
            return False
        self._normals += 1
        return self._normals % self.normal_every == 0

    def name(self, stem: str, anomalous: bool, wall: float) -> Path:
        """A new file name: UTC time, the label, the image's stem or frame number (never one of a
        previous run's, so a restart does not overwrite)."""
        when = datetime.fromtimestamp(wall, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3]
        base = f"{when}_{'anomalous' if anomalous else 'normal'}_{stem}"
        candidate, n = f"{base}.jpg", 1
        while candidate in self._names or (self.folder / candidate).exists():
            n += 1
            candidate = f"{base}_{n}.jpg"
        self._names.add(candidate)
        if len(self._names) > 10_000:  # only same-millisecond clashes matter: a bounded memory of names
            self._names.clear()
        return self.folder / candidate

    def submit(self, path: Path, image: Callable[[], Image.Image] | np.ndarray, norm_map: np.ndarray | None,
               raw: bool, cfg: PreprocessConfig) -> None:
        """Queue one picture (waits while the queue is full). ``image``: the picture as scored (an
        array) or a function that decodes it; ``raw``: ``norm_map`` is raw, scale it by its range."""
        self._queue.put((path, image, norm_map, raw, cfg))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            path, image, norm_map, raw, cfg = job
            try:
                img = Image.fromarray(image, mode="RGB") if isinstance(image, np.ndarray) else image()
                if norm_map is not None:
                    img = overlay(img, _scaled(norm_map) if raw else norm_map, cfg)
                img.convert("RGB").save(path, quality=90)
                self.saved += 1
            except Exception as exc:  # noqa: BLE001 - a full disk or an undecodable file: say so and go on
                self.failed += 1
                self.log(f"warning: could not save {path}: {getattr(exc, 'strerror', None) or exc}")

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
