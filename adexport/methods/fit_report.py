"""The fit report every method fills the same way: seconds per phase, sizes, skipped files, loss.

A fit measures its phases with a :class:`PhaseClock` and hands the clock and what it counted to
:func:`record_fit`, so the keys every method shares (``fit_images``, ``skipped_images``, the loss
history) are written in one place and in one order; ``adx train``, the fit benchmark and the
bundle's ``training`` section read them from :class:`~adexport.methods.common.FitReport`.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence, TypeVar

from adexport.methods.base import FittedMethod

Fitted = TypeVar("Fitted", bound=FittedMethod)


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
