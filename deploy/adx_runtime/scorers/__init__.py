"""Scorers: what the runtime adds after the graph, one per scoring kind, registered by kind.

The manifest's ``scoring.kind`` picks the scorer; the method name plays no part, so a new method
needs no runtime code unless it brings a new kind:

| kind | methods | what it does with the graph's outputs |
| --- | --- | --- |
| ``knn`` | PatchCore | FAISS kNN of patch features on a memory bank, eq. 7 image score |
| ``gallery`` | SPADE | kNN over training images, then pixel kNN within the k nearest |
| ``gaussian`` | PaDiM (CutPaste) | Mahalanobis distance to per-position (or one) Gaussian |
| ``map`` | RD4AD, RIAD (PRNet) | nothing: the graph outputs the anomaly map itself |

Each kind's manifest section (the fields its scorer reads) is typed in :mod:`adx_runtime.kinds`.
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
from adx_runtime.kinds import SECTIONS, ScoringSection, parse_scoring


@dataclass
class ScoreOutput:
    patch_maps: np.ndarray | None  # (B, h, w) float32, raw; None = this method has no map
    image_scores: np.ndarray | None  # (B,) float32, raw; None = from the final map by the postprocess rule


class Scorer(Protocol):
    backend: str  # what searches or evaluates the scoring data, e.g. "faiss-cpu"

    def __call__(self, outputs: dict[str, np.ndarray], tiles: np.ndarray | None = None) -> ScoreOutput:
        """``tiles``: the tile position ``(B,)`` of each row (a tiled contract); only scoring data
        kept per tile position reads it."""
        ...


#: scoring kind -> "module:class"; the one table of runtime scorers (imported on first use). Each
#: kind's manifest section is declared in :mod:`adx_runtime.kinds` (same keys).
SCORERS: dict[str, str] = {
    "knn": "adx_runtime.scorers.knn:KnnScorer",
    "gallery": "adx_runtime.scorers.gallery:GalleryScorer",
    "gaussian": "adx_runtime.scorers.gaussian:GaussianScorer",
    "map": "adx_runtime.scorers.map:MapScorer",
}


#: Kinds that search a FAISS index and so take search parameters (``nprobe``, ``efSearch``): the
#: sections that say so.
SEARCHING_KINDS = tuple(kind for kind, section in SECTIONS.items() if section.searching)


def create_scorer(bundle_dir: Path, manifest: dict[str, Any], bank_device: str,
                  search_params: dict[str, float] | None = None) -> Scorer:
    """The scorer for ``manifest["scoring"]["kind"]``, loaded with the bundle's scoring data;
    ``search_params`` override the manifest's FAISS search parameters."""
    section = parse_scoring(manifest["scoring"], manifest.get("method"))
    kind = section.kind
    if kind not in SCORERS:
        raise BundleError(f"bundle scoring kind {kind!r} (method {manifest.get('method')!r}) has no scorer in this "
                          "runtime. Upgrade adexport or re-export the bundle.")
    module, cls = SCORERS[kind].split(":")
    extra: dict[str, Any] = {}
    if search_params:
        if not section.searching:
            raise ConfigError(f"--search-param {', '.join(search_params)} applies to bundles that search a FAISS index "
                              f"(kinds {', '.join(SEARCHING_KINDS)}); this {manifest.get('method')} bundle scores with "
                              f"kind {kind!r}: drop it")
        extra["search_params"] = search_params
    scorer = getattr(importlib.import_module(module), cls)(bundle_dir, manifest, bank_device, **extra)
    # the bank has accepted the parameters' names and ranges by now
    check_ef_search_covers_k(section, manifest.get("method"), search_params)
    return scorer


def check_ef_search_covers_k(section: ScoringSection, method: Any,
                             search_params: dict[str, float] | None) -> None:
    """Refuse an ``efSearch`` below the number of neighbours the scorer asks an index for: HNSW
    then returns fewer than ``k`` (measured: 15 of 20 at efSearch 1), and the image score is
    silently made from fewer neighbours. Only a value that was given is checked (the bundle's or
    ``--search-param``), not FAISS's default."""
    override = search_params or {}
    for index in section.searched_indexes():
        k, field = index.k, index.k_field
        value = override.get("efSearch", (index.bank.get("search_params") or {}).get("efSearch"))
        if value is None or value >= k:
            continue
        if "efSearch" in override:
            raise ConfigError(f"search parameter efSearch={value} is below the {k} neighbours this {method} "
                              f"bundle asks for ({field}); HNSW would return fewer and change the scores: valid "
                              f"efSearch >= {k}, e.g. --search-param efSearch={max(k, 16)}")
        raise BundleError(f"search parameter efSearch={value} (from the bundle's search_params) is below the {k} "
                          f"neighbours this {method} bundle asks for ({field}); HNSW would return fewer and change "
                          f"the scores: valid efSearch >= {k}; re-export with --search-param efSearch={max(k, 16)}, "
                          "or override it with --search-param")
