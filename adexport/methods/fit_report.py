"""The fit report every method fills the same way: seconds per phase, sizes, skipped files, loss.

A fit measures its phases with a :class:`PhaseClock` and hands the clock and what it counted to
:func:`record_fit`, so the keys every method shares (``fit_images``, ``skipped_images``, the loss
history) are written in one place and in one order; ``adx train``, the fit benchmark and the
bundle's ``training`` section read them from :class:`FitReport`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, TypeVar


@dataclass
class FitReport:
    """Seconds per fit phase and sizes, printed by ``adx train`` and the fit benchmark."""

    phases: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) not decodable
    loss_history: list[float] = field(default_factory=list)  # mean training loss per epoch (trained methods)
    notes: list[str] = field(default_factory=list)  # what the user should know about this fit, one line each

    @property
    def total(self) -> float:
        return float(sum(self.phases.values()))


class HasFitReport(Protocol):
    """What :func:`record_fit` needs of a fitted method: its report. (Structural, so this module
    does not import ``base``, which holds a :class:`FitReport` on every fitted method.)"""

    report: FitReport


Fitted = TypeVar("Fitted", bound=HasFitReport)


class PhaseClock:
    """Seconds of consecutive fit phases: each :meth:`lap` closes the phase that began at the
    previous lap (or at construction) under the given name."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now


def record_fit(fitted: Fitted, clock: PhaseClock, *, fit_images: int, skipped: Sequence[tuple[str, str]],
               sizes: Mapping[str, int] | None = None, loss_history: Sequence[float] | None = None,
               notes: Sequence[str] = ()) -> Fitted:
    """Write the fit into ``fitted.report`` and return ``fitted``.

    Args:
        fit_images: training images that were decoded and used.
        skipped: ``(file, reason)`` of the training images that could not be decoded.
        sizes: the method's own sizes (bank rows, parameters, ...), after the shared ones.
        loss_history: mean training loss per epoch (trained networks only).
    """
    report = fitted.report
    report.phases.update(clock.phases)
    report.sizes.update({"fit_images": int(fit_images), "skipped_images": len(skipped), **(sizes or {})})
    report.skipped = list(skipped)
    if loss_history is not None:
        report.loss_history = list(loss_history)
    report.notes.extend(notes)
    return fitted
