"""The ``gallery`` scoring kind (SPADE): kNN over training image features, then each position's
distance to the feature maps of the nearest images (or to one coreset of all training map
vectors). Scorer: :mod:`adx_runtime.scorers.gallery`; writer: ``FittedSpade.write_scoring_data``
with :func:`adexport.banks.write_faiss_bank`."""

from __future__ import annotations

from typing import Any

from adx_runtime.kinds.bank import BANK_SCHEMA, COUNT, NAME
from adx_runtime.kinds.base import ScoringSection, SearchedIndex


class GallerySection(ScoringSection):
    kind = "gallery"
    title = ("SPADE; kNN over training image features, then pixel kNN within the k_pixel nearest images' "
             "feature maps (maps_file) or over a coreset of every training map vector (pixel_bank)")
    searching = True
    SCHEMA = {
        "type": "object",
        "properties": {
            "image_output": {"type": "string", "description": "graph output (B, C) of image features"},
            "map_output": {"type": "string", "description": "graph output (B, h*w, D) of feature maps"},
            "k": {**COUNT, "description": "nearest training images of the image score"},
            "k_pixel": {**COUNT, "description": "of those, the images the pixel search looks in (default k)"},
            "gallery": {
                "type": "object",
                "properties": {
                    "images_bank": BANK_SCHEMA,
                    "images_file": {**NAME, "description": "FAISS index of image features (bundles without "
                                                           "images_bank)"},
                    "maps_file": {**NAME, "description": "npz with feature_maps (N, h*w, D)"},
                    "pixel_bank": BANK_SCHEMA,
                    "dtype": {"enum": ["float32", "float16"]},
                },
                "anyOf": [{"required": ["images_bank", "maps_file"]}, {"required": ["images_file", "maps_file"]},
                          {"required": ["images_bank", "pixel_bank"]}],
            },
        },
        "required": ["image_output", "map_output", "k", "gallery"],
    }

    @property
    def image_output(self) -> str:
        return self.raw["image_output"]

    @property
    def map_output(self) -> str:
        return self.raw["map_output"]

    @property
    def gallery(self) -> dict[str, Any]:
        return self.raw["gallery"]

    @property
    def k(self) -> int:
        return self.raw["k"]

    @property
    def k_pixel(self) -> int:
        return self.raw.get("k_pixel", self.k)  # bundles before k_pixel compared with all k

    @property
    def images_bank(self) -> dict[str, Any]:
        """The image index; bundles before ``images_bank`` named only its file (a FAISS index)."""
        return self.gallery.get("images_bank") or {"file": self.gallery["images_file"], "format": "faiss"}

    def detail(self) -> str:
        detail = self.gallery.get("dtype") or ""
        if self.images_bank.get("index_type", "Flat") != "Flat":
            detail += f", images {self.images_bank['index_type']}"
        if "k_pixel" in self.raw and self.raw["k_pixel"] != self.k:
            detail += f", k_pixel {self.raw['k_pixel']}"
        return detail

    def searched_indexes(self) -> list[SearchedIndex]:
        return [SearchedIndex("image gallery", self.images_bank, self.k, "scoring.k")]
