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
    scorer = getattr(importlib.import_module(module), cls)(bundle_dir, manifest, bank_device, **extra)
    if kind in SEARCHING_KINDS:  # the bank has accepted the parameters' names and ranges by now
        check_ef_search_covers_k(manifest, search_params)
    return scorer


def check_ef_search_covers_k(manifest: dict[str, Any], search_params: dict[str, float] | None) -> None:
    """Refuse an ``efSearch`` below the number of neighbours the scorer asks the index for: HNSW
    then returns fewer than ``k`` (measured: 15 of 20 at efSearch 1), and the image score is
    silently made from fewer neighbours. Only a value that was given is checked (the bundle's or
    ``--search-param``), not FAISS's default."""
    s = manifest["scoring"]
    if s.get("kind") == "knn":
        bank, k, field = s.get("bank") or {}, s.get("num_neighbors", 1), "scoring.num_neighbors"
    else:  # gallery: the image search asks for k nearest training images
        bank, k, field = (s.get("gallery") or {}).get("images_bank") or {}, s.get("k", 1), "scoring.k"
    override = search_params or {}
    value = override.get("efSearch", (bank.get("search_params") or {}).get("efSearch"))
    if value is None or value >= k:
        return
    if "efSearch" in override:
        raise ConfigError(f"search parameter efSearch={value} is below the {k} neighbours this {manifest.get('method')} "
                          f"bundle asks for ({field}); HNSW would return fewer and change the scores: valid efSearch "
                          f">= {k}, e.g. --search-param efSearch={max(k, 16)}")
    raise BundleError(f"search parameter efSearch={value} (from the bundle's search_params) is below the {k} neighbours "
                      f"this {manifest.get('method')} bundle asks for ({field}); HNSW would return fewer and change the "
                      f"scores: valid efSearch >= {k}; re-export with --search-param efSearch={max(k, 16)}, or override "
                      "it with --search-param")
