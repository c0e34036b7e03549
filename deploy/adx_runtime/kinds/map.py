"""The ``map`` scoring kind (RD4AD, RIAD, PRNet): the graph outputs the anomaly map itself.
Scorer: :mod:`adx_runtime.scorers.map`; no scoring data to write."""

from __future__ import annotations

from adx_runtime.kinds.base import ScoringSection


class MapSection(ScoringSection):
    kind = "map"
    title = "RD4AD, RIAD, PRNet; the graph outputs the map (and optionally its own image score)"
    SCHEMA = {
        "type": "object",
        "properties": {
            "map_output": {"type": "string", "description": "graph output (B, h, w) or (B, 1, h, w)"},
            "image_output": {"type": ["string", "null"], "description": "graph output (B,) or (B, 1) of image "
                                                                        "scores; absent or null: from the map"},
        },
        "required": ["map_output"],
    }

    @property
    def map_output(self) -> str:
        return self.raw["map_output"]

    @property
    def image_output(self) -> str | None:
        return self.raw.get("image_output")
