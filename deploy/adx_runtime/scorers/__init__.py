"""Scorers: what the runtime adds after the graph, one per scoring kind, registered by kind.

The manifest's ``scoring.kind`` picks the scorer; the method name plays no part, so a new method
needs no runtime code unless it brings a new kind:

| kind | methods | what it does with the graph's outputs |
| --- | --- | --- |
| ``knn`` | PatchCore | FAISS kNN of patch features on a memory bank, eq. 7 image score |
| ``gallery`` | SPADE | kNN over training images, then pixel kNN within the k nearest |
| ``gaussian`` | PaDiM (CutPaste) | Mahalanobis distance to per-position (or one) Gaussian |
| ``map`` | RD4AD, RIAD (PRNet) | nothing: the graph outputs the anomaly map itself |

A scorer returns a raw map ``(B, h, w)`` (or ``None`` for image-level-only methods) and, where the
kind defines them, image scores ``(B,)``. The manifest's ``postprocess`` section does the rest.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adx_runtime.errors import BundleError, ConfigError


@dataclass
class ScoreOutput:
    patch_maps: np.ndarray | None  # (B, h, w) float32, raw; None = this method has no map
    image_scores: np.ndarray | None  # (B,) float32, raw; None = from the final map by the postprocess rule


class Scorer(Protocol):
    backend: str  # what searches or evaluates the scoring data, e.g. "faiss-cpu"

    def __call__(self, outputs: dict[str, np.ndarray]) -> ScoreOutput: ...


#: scoring kind -> "module:class"; the one table of runtime scorers (imported on first use).
SCORERS: dict[str, str] = {
    "knn": "adx_runtime.scorers.knn:KnnScorer",
    "gallery": "adx_runtime.scorers.gallery:GalleryScorer",
    "gaussian": "adx_runtime.scorers.gaussian:GaussianScorer",
    "map": "adx_runtime.scorers.map:MapScorer",
}


#: Kinds that search a FAISS index and so take search parameters (``nprobe``, ``efSearch``).
SEARCHING_KINDS = ("knn", "gallery")


def create_scorer(bundle_dir: Path, manifest: dict[str, Any], bank_device: str,
                  search_params: dict[str, float] | None = None) -> Scorer:
    """The scorer for ``manifest["scoring"]["kind"]``, loaded with the bundle's scoring data;
    ``search_params`` override the manifest's FAISS search parameters."""
    kind = manifest["scoring"].get("kind")
    if kind not in SCORERS:
        raise BundleError(
            f"bundle scoring kind {kind!r} (method {manifest.get('method')!r}) is not known to this runtime; "
            f"known: {', '.join(SCORERS)}. Upgrade adexport or re-export the bundle."
        )
    module, cls = SCORERS[kind].split(":")
    extra: dict[str, Any] = {}
    if search_params:
        if kind not in SEARCHING_KINDS:
            raise ConfigError(f"--search-param {', '.join(search_params)} applies to bundles that search a FAISS index "
                              f"(kinds {', '.join(SEARCHING_KINDS)}); this {manifest.get('method')} bundle scores with "
                              f"kind {kind!r}: drop it")
        extra["search_params"] = search_params
    return getattr(importlib.import_module(module), cls)(bundle_dir, manifest, bank_device, **extra)
