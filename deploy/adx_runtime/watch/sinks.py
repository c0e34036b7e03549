"""Where result records go. A sink takes the records of one batch, in order; it never learns where
an image came from. Only the JSON-lines sink exists so far; webhook, MQTT and metrics sinks take
the same records."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any, Protocol

from adx_runtime.errors import ConfigError
from adx_runtime.infer import json_line
from adx_runtime.watch.journal import read_jsonl

__all__ = ["JsonLinesSink", "Sink"]


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

    def write(self, records: list[dict[str, Any]]) -> None:
        assert self._stream is not None, "open() first"
        self._stream.write("".join(json_line(r) + "\n" for r in records))
        self._stream.flush()
        if self._own:
            os.fsync(self._stream.fileno())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            if self._own:
                self._stream.close()
        self._stream = None
