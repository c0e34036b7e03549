"""Ranking candidates: the accuracy/latency Pareto front and the pick (pure functions, no torch).

A candidate is better when it is more accurate (the chosen metric, higher is better) and faster
(latency, lower is better). The front holds every candidate no other one beats on both counts.
The pick: with a latency budget, the most accurate candidate within it; without one, the most
accurate candidate of the front (which is the most accurate overall, the front shown beside it).
Ties go to the faster candidate, then to the name, so the pick never depends on list order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from adx_runtime.errors import ConfigError

#: ``--metric`` -> the key of the evaluation's metrics.
METRICS = {"image_auroc": "image_auroc", "aupro": "aupro", "f1": "image_f1_max"}
METRIC_LABELS = {"image_auroc": "image AUROC", "aupro": "AUPRO", "f1": "image F1-max"}


@dataclass(frozen=True)
class Row:
    """One candidate as the ranking sees it; ``None``: not measured (failed, or metric undefined)."""

    name: str
    accuracy: float | None
    latency_ms: float | None

    @property
    def rankable(self) -> bool:
        return (self.accuracy is not None and self.latency_ms is not None
                and math.isfinite(self.accuracy) and math.isfinite(self.latency_ms))


@dataclass(frozen=True)
class Pick:
    name: str | None  # None: no candidate qualifies
    reason: str


def _order(row: Row) -> tuple[float, float, str]:
    assert row.accuracy is not None and row.latency_ms is not None
    return (-row.accuracy, row.latency_ms, row.name)


def ranked(rows: list[Row]) -> list[Row]:
    """Rankable rows best first (accuracy down, then latency up, then name), the others after, by name."""
    good = sorted((r for r in rows if r.rankable), key=_order)
    return good + sorted((r for r in rows if not r.rankable), key=lambda r: r.name)


def dominates(a: Row, b: Row) -> bool:
    """``a`` is at least as accurate and as fast as ``b``, and strictly better on one."""
    assert a.accuracy is not None and a.latency_ms is not None and b.accuracy is not None and b.latency_ms is not None
    return (a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms
            and (a.accuracy > b.accuracy or a.latency_ms < b.latency_ms))


def pareto_front(rows: list[Row]) -> list[str]:
    """Names of the rankable rows no other row dominates, most accurate first."""
    good = [r for r in rows if r.rankable]
    return [r.name for r in sorted(good, key=_order) if not any(dominates(o, r) for o in good if o is not r)]


def pick(rows: list[Row], max_latency_ms: float | None = None) -> Pick:
    """The rule of the module docstring; ``Pick.name`` is None (with the reason) when nothing qualifies."""
    good = sorted((r for r in rows if r.rankable), key=_order)
    if not good:
        return Pick(None, "no candidate has both an accuracy and a latency (all failed or the metric is undefined)")
    if max_latency_ms is None:
        best = good[0]
        return Pick(best.name, "the most accurate candidate (first on the Pareto front); no latency budget given")
    within = [r for r in good if r.latency_ms is not None and r.latency_ms <= max_latency_ms]
    if not within:
        fastest = min(good, key=lambda r: (r.latency_ms, r.name))
        return Pick(None, f"no candidate is within --max-latency-ms {max_latency_ms:g} (the fastest, {fastest.name}, "
                          f"takes {fastest.latency_ms:.1f} ms)")
    best = within[0]
    skipped = [r.name for r in good if r.accuracy is not None and best.accuracy is not None
               and r.accuracy > best.accuracy]
    more = f"; more accurate but slower: {', '.join(skipped)}" if skipped else ""
    return Pick(best.name, f"the most accurate candidate within {max_latency_ms:g} ms{more}")


def rows_of(candidates: list[dict[str, Any]], metric: str) -> list[Row]:
    """Candidate records (``DIR/candidates/NAME.json``) as rows: a failed one has neither figure."""
    key = METRICS[metric]
    rows = []
    for c in candidates:
        ok = c.get("status") == "ok"
        acc = c["selection"].get(key) if ok else None
        lat = c["bench"]["p50_ms"] if ok else None
        rows.append(Row(c["method"], acc, lat))
    return rows


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_duration(text: str) -> float:
    """``30m``, ``1h30m``, ``90s``, ``1.5h`` -> seconds; a bare number is refused (which unit?)."""
    s = text.strip().lower()
    parts = _DURATION.findall(s)
    if not parts or _DURATION.sub("", s).strip():
        raise ConfigError(f"--budget {text!r} is not a duration; write it with units, e.g. 30m, 1h30m, 90s")
    seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--budget must be more than 0, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
