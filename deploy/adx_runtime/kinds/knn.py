"""The ``knn`` scoring kind (PatchCore): nearest-neighbour distance of every patch feature to a
memory bank, eq. 7 image score. Scorer: :mod:`adx_runtime.scorers.knn`; writer:
:func:`adexport.banks.write_faiss_bank` / :func:`adexport.banks.write_npz_bank`."""

from __future__ import annotations

from typing import Any

from adx_runtime.kinds.bank import BANK_SCHEMA, COUNT
from adx_runtime.kinds.base import ScoringSection, SearchedIndex


class KnnSection(ScoringSection):
    kind = "knn"
    title = "PatchCore; FAISS kNN of the graph's patch features on a memory bank, eq. 7 image score"
    searching = True
    SCHEMA = {
        "type": "object",
        "properties": {
            "feature_output": {"type": "string", "description": "graph output (B, h*w, D) of patch features"},
            "num_neighbors": {**COUNT, "description": "b of eq. 7: neighbours of m* in the reweighting"},
            "bank": BANK_SCHEMA,
        },
        "required": ["feature_output", "num_neighbors", "bank"],
    }

    @property
    def feature_output(self) -> str:
        return self.raw["feature_output"]

    @property
    def num_neighbors(self) -> int:
        return self.raw["num_neighbors"]

    @property
    def bank(self) -> dict[str, Any]:
        return self.raw["bank"]

    def detail(self) -> str:
        return self.bank.get("index_type") or ""

    def searched_indexes(self) -> list[SearchedIndex]:
        return [SearchedIndex("bank", self.bank, self.num_neighbors, "scoring.num_neighbors")]
