"""Thresholds and score normalisation, stored as data in the manifest (never inside a graph).

At fit time part of ``train/good`` is held out; its raw scores describe what normal looks like.
The default image threshold is ``mean + 3 std`` of the held-out image scores, the default pixel
threshold the same rule over the held-out maps' per-image maxima.

Normalisation maps a raw value ``x`` to ``[0, 1]`` linearly around the threshold ``t``:
``n(x) = clip(0.5 + (x - t) / (2 (t - m)), 0, 1)`` where ``m`` is the median normal value, so the
median normal image scores 0, the threshold 0.5, and ``t + (t - m)`` or more scores 1. A user
threshold (``adx infer --threshold``) keeps ``t - m`` and moves ``t``, so 0.5 stays the threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adx_runtime.errors import BundleError, ConfigError

DEFAULT_SIGMAS = 3.0

NORMALISATION_RULE = (
    "n = clip(0.5 + (raw - threshold) / (2 * scale), 0, 1), scale = threshold - median of held-out "
    "normal values: the median normal scores 0, the threshold 0.5"
)


def statistics(values: np.ndarray) -> dict[str, float]:
    """Summary of raw scores of normal images: count, mean, std, min, quantiles, max."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ConfigError("cannot calibrate on zero held-out normal images")
    q = np.quantile(v, [0.5, 0.9, 0.95, 0.99])
    return {
        "n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()), "median": float(q[0]), "p90": float(q[1]), "p95": float(q[2]),
        "p99": float(q[3]), "max": float(v.max()),
    }


def scale_for(threshold: float, stats: dict[str, float]) -> float:
    """Distance from the median normal value to the threshold, with fallbacks for degenerate data."""
    scale = threshold - stats["median"]
    if not np.isfinite(scale) or scale <= 1e-12:
        scale = max(stats.get("std", 0.0), abs(threshold) * 0.1, 1e-6)
    return float(scale)


def threshold_entry(values: np.ndarray, sigmas: float = DEFAULT_SIGMAS) -> dict[str, Any]:
    """A calibration entry: statistics, the ``mean + sigmas * std`` threshold and its scale."""
    stats = statistics(values)
    threshold = stats["mean"] + sigmas * stats["std"]
    if stats["n"] < 2:
        threshold = stats["max"] * 1.1  # one image has no spread; stay just above it
    return {
        "stats": stats,
        "threshold": float(threshold),
        "scale": scale_for(threshold, stats),
        "rule": f"mean + {sigmas:g} * std of {stats['n']} held-out normal values",
    }


def normalise_scores(raw: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """Raw scores or maps -> ``[0, 1]`` with the threshold at 0.5 (float32)."""
    out = (np.asarray(raw, dtype=np.float32) - np.float32(threshold)) / np.float32(2.0 * scale)
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def read(manifest: dict[str, Any]) -> dict[str, Any]:
    cal = manifest.get("calibration")
    if not isinstance(cal, dict) or "image" not in cal:
        raise BundleError("manifest has no calibration.image section; re-export the bundle")
    for key in ("threshold", "scale"):
        if key not in cal["image"]:
            raise BundleError(f"manifest calibration.image lacks {key!r}; re-export the bundle")
    return cal
