"""``adx select``: which method's bundle should go on this box, measured on this data and this machine.

:mod:`.split` (selection and report sets), :mod:`.rank` (Pareto front and pick, pure functions),
:mod:`.run` (the candidates' fit, export, evaluation and benchmark; resume), :mod:`.report` (table,
HTML page). Importing this package imports no torch; :func:`run_select` does, when called.
"""

from __future__ import annotations

from typing import Any

from adexport.select.rank import METRICS, Pick, Row, pareto_front, parse_duration, pick, ranked

__all__ = ["METRICS", "Pick", "Row", "pareto_front", "parse_duration", "pick", "ranked", "run_select"]


def run_select(*args: Any, **kwargs: Any) -> Any:
    """:func:`adexport.select.run.run_select` (imported on call: it loads torch)."""
    from adexport.select.run import run_select as _run  # noqa: PLC0415

    return _run(*args, **kwargs)
