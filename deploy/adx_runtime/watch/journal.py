"""What the watcher has scored, so that a restart (after a crash or ``kill -9``) scores nothing twice.

``DIR/journal.jsonl``: one JSON line per scored file, ``{"name", "bytes", "mtime_ns", "label",
"error", "moved_to"}`` (``name_bytes``, base64, for a name that is not UTF-8). A file's identity is
its name with its size and modification time: the same name with other content is a new image.

Lines are appended and fsync'd once per batch. A ``kill -9`` can leave a last line half written:
it is cut off when the journal is opened (that file is then found in the output or scored again,
see :mod:`adx_runtime.watch.loop`). The journal is rewritten atomically (temporary file, fsync,
rename) at start and whenever it holds many more lines than live entries, so it does not grow for
days: only files still in the folder need an entry.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Iterable

from adx_runtime.errors import ConfigError
from adx_runtime.infer import display_path, path_bytes

__all__ = ["Journal", "decode_name", "encode_name", "read_jsonl"]

JOURNAL_NAME = "journal.jsonl"


def encode_name(name: str) -> dict[str, str]:
    """A file name for JSON, by the ``adx infer`` rule: valid Unicode, plus its exact bytes if needed."""
    exact = path_bytes(name)
    return {"name": display_path(name), **({"name_bytes": exact} if exact is not None else {})}


def decode_name(row: dict[str, Any], text: str = "name", exact: str = "name_bytes") -> str:
    raw = row.get(exact)
    return os.fsdecode(base64.b64decode(raw)) if raw else str(row[text])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file; a last line without its newline (cut by a crash)
    is removed from the file, so appending goes on from a clean line end."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    rows = []
    for line in data[:end].splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash in the middle of the file system's own write
    return rows


class Journal:
    """Scored files by name: ``{name: (bytes, mtime_ns, entry)}``; ``folder=None`` keeps it in
    memory only (``--no-journal``: a restart scores the folder again)."""

    def __init__(self, folder: Path | None):
        self.path = None if folder is None else Path(folder) / JOURNAL_NAME
        self.entries: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self._lines = 0  # lines in the file, for compaction
        self._file: Any = None

    def open(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the journal folder {str(self.path.parent)!r}: {exc.strerror or exc}") from None
        for row in read_jsonl(self.path):
            try:
                self.entries[decode_name(row)] = (int(row["bytes"]), int(row["mtime_ns"]), row)
            except (KeyError, TypeError, ValueError):
                continue
        self._lines = len(self.entries)
        self._file = open(self.path, "a", encoding="utf-8")

    def done(self, name: str, size: int, mtime_ns: int) -> bool:
        entry = self.entries.get(name)
        return entry is not None and entry[0] == size and entry[1] == mtime_ns

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append entries (each with name/name_bytes, bytes, mtime_ns) and fsync once."""
        rows = list(rows)
        for row in rows:
            self.entries[decode_name(row)] = (int(row["bytes"]), int(row["mtime_ns"]), row)
        if self._file is None or not rows:
            return
        self._file.write("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += len(rows)

    def drop(self, name: str) -> None:
        """Forget a file that left the folder (moved): its entry is no longer needed."""
        self.entries.pop(name, None)

    def compact(self, live: Iterable[str] | None = None, *, force: bool = False) -> None:
        """Keep only the entries of ``live`` names (default: all in memory), written atomically;
        without ``force`` only when the file holds many more lines than entries."""
        if live is not None:
            keep = set(live)
            self.entries = {k: v for k, v in self.entries.items() if k in keep}
        if self.path is None or (not force and self._lines <= 2 * len(self.entries) + 10_000):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(row, allow_nan=False) + "\n" for _, _, row in self.entries.values()))
            f.flush()
            os.fsync(f.fileno())
        if self._file is not None:
            self._file.close()
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        self._lines = len(self.entries)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
