"""Scorers: what the runtime adds after the graph, one per method, registered by name.

A scorer turns the graph's outputs into a patch-level anomaly map ``(B, h, w)`` and, where the
method defines one, image scores ``(B,)``. Without image scores the runtime takes the maximum of
the final (upsampled, smoothed) map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from adx_runtime.errors import BundleError


@dataclass
class ScoreOutput:
    patch_maps: np.ndarray  # (B, h, w) float32, raw
    image_scores: np.ndarray | None  # (B,) float32, raw; None = max of the final map


class Scorer(Protocol):
    backend: str  # what searches or evaluates the scoring data, e.g. "faiss-cpu"

    def __call__(self, outputs: dict[str, np.ndarray]) -> ScoreOutput: ...


ScorerFactory = Callable[[Path, dict[str, Any], str], Scorer]


def _patchcore(bundle_dir: Path, manifest: dict[str, Any], bank_device: str) -> Scorer:
    from adx_runtime.scorers.patchcore import PatchCoreScorer

    return PatchCoreScorer(bundle_dir, manifest, bank_device)


def _padim(bundle_dir: Path, manifest: dict[str, Any], bank_device: str) -> Scorer:
    from adx_runtime.scorers.padim import PadimScorer

    return PadimScorer(bundle_dir, manifest, bank_device)


def _spade(bundle_dir: Path, manifest: dict[str, Any], bank_device: str) -> Scorer:
    from adx_runtime.scorers.spade import SpadeScorer

    return SpadeScorer(bundle_dir, manifest, bank_device)


#: method name -> factory(bundle_dir, manifest, bank_device). The one table of runtime methods.
SCORERS: dict[str, ScorerFactory] = {
    "patchcore": _patchcore,
    "padim": _padim,
    "spade": _spade,
}


def create_scorer(bundle_dir: Path, manifest: dict[str, Any], bank_device: str) -> Scorer:
    method = manifest["method"]
    if method not in SCORERS:
        raise BundleError(
            f"bundle method {method!r} is not known to this runtime; known: {', '.join(SCORERS)}. "
            "Upgrade adexport or re-export the bundle."
        )
    return SCORERS[method](bundle_dir, manifest, bank_device)
