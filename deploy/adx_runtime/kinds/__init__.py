"""Scoring kinds: the typed ``scoring`` section of the manifest, one module per kind.

A kind is what the runtime does between the graph and the post-processing (the scorers in
:mod:`adx_runtime.scorers`, one per kind); the manifest's ``scoring.kind`` picks it, never the
method name. Each kind's module declares its section as a :class:`ScoringSection`: a JSON Schema of
the fields its scorer reads (checked on load by :func:`adx_runtime.bundle.read_manifest`, and
shipped in ``adx_runtime/bundle/manifest.schema.json``), typed accessors, and what ``adx bench``
and ``adx export`` say about its data. Methods add descriptive fields of their own (RD4AD's
``stages``, RIAD's ``cell_sizes``); they are kept as written and read by no scorer.

This package imports nothing but :mod:`adx_runtime.errors`, so the bundle reader and the scorers
can both import it without a cycle.

A new kind: one module here with its section, one row in :data:`SECTIONS`, its scorer in
:mod:`adx_runtime.scorers` (one row in ``SCORERS``), its writer on the export side, then regenerate
the shipped schema (``python -m adx_runtime.bundle.schema``).
"""

from __future__ import annotations

from typing import Any

from adx_runtime.errors import BundleError
from adx_runtime.kinds.base import ScoringSection, SearchedIndex
from adx_runtime.kinds.gallery import GallerySection
from adx_runtime.kinds.gaussian import GaussianSection
from adx_runtime.kinds.knn import KnnSection
from adx_runtime.kinds.map import MapSection

#: scoring kind -> its typed section; the one table of kinds the manifest may name.
SECTIONS: dict[str, type[ScoringSection]] = {
    s.kind: s for s in (KnnSection, GallerySection, GaussianSection, MapSection)
}


def parse_scoring(scoring: Any, method: Any = None) -> ScoringSection:
    """The typed section of a manifest's ``scoring``; a kind this runtime does not know is a
    one-line BundleError that says to upgrade."""
    kind = scoring.get("kind") if isinstance(scoring, dict) else None
    if kind not in SECTIONS:
        raise BundleError(
            f"bundle scoring kind {kind!r} (method {method!r}) is not known to this runtime; "
            f"known: {', '.join(SECTIONS)}. Upgrade adexport or re-export the bundle."
        )
    return SECTIONS[kind].from_dict(scoring)


__all__ = ["SECTIONS", "GallerySection", "GaussianSection", "KnnSection", "MapSection", "ScoringSection",
           "SearchedIndex", "parse_scoring"]
