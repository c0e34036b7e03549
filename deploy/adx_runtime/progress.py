"""Progress reporting for long work, decoupled from the terminal.

Library functions take a :class:`Progress` and call ``with progress.task("Extracting", total) as
advance: ... advance(1)``; ``advance(n, description="epoch 3/20 loss 0.12")`` also changes the
bar's text (a training loop shows epoch and loss that way). The CLI passes :class:`RichProgress`
(bars on stderr); tests and library users get :data:`SILENT`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

Advance = Callable[..., None]  # advance(n=1, *, description=None)


class Progress:
    """Does nothing; the base for reporters."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        yield lambda n=1, description=None: None

    def note(self, message: str) -> None:
        """A one-line status message (no bar)."""


SILENT = Progress()


class RichProgress(Progress):
    """Progress bars on stderr with rich; plain lines when stderr is not a terminal."""

    def __init__(self) -> None:
        from rich.console import Console  # noqa: PLC0415 - rich only when bars are shown

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        from rich.progress import (  # noqa: PLC0415
            BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
        )

        if not self.console.is_terminal:
            self.console.print(f"{description} ...", highlight=False, markup=False)

            def line(n: int = 1, description: str | None = None) -> None:
                if description:  # a log gets one line per change of text (for training: per epoch)
                    self.console.print(f"  {description}", highlight=False, markup=False)

            yield line
            return
        with Bars(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=self.console,
                  transient=False) as bars:
            tid = bars.add_task(description, total=total)

            def advance(n: int = 1, description: str | None = None) -> None:
                if description is None:
                    bars.advance(tid, n)
                else:
                    bars.update(tid, advance=n, description=description)

            yield advance

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

