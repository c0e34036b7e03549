"""The manifest section of one memory bank (``scoring.bank``, ``scoring.gallery.images_bank``,
``scoring.gallery.pixel_bank``): shared by the kinds that search one, opened by
:func:`adx_runtime.knn.open_bank`."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "description": "a file name listed in the manifest's files"}
COUNT = {"type": "integer", "minimum": 1}

#: JSON Schema of a bank section. ``format`` faiss: a FAISS index file (``file``) or several
#: searched as one (``shards``); npz: the vectors in an ``.npz`` (array ``memory_bank``), searched
#: exactly with numpy.
BANK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "a memory bank: one FAISS index file, FAISS shards searched as one, or an npz of vectors",
    "properties": {
        "format": {"enum": ["faiss", "npz"]},
        "file": NAME,
        "shards": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["file", "offset", "size"],
            "properties": {"file": NAME, "offset": {"type": "integer", "minimum": 0}, "size": COUNT}}},
        "index_type": {"type": "string", "description": "FAISS factory string (Flat, HNSW32, IVF64,Flat, ...); "
                                                        "numpy-exact for npz"},
        "size": COUNT,
        "dim": COUNT,
        "exact": {"type": "boolean"},
        "search_params": {"type": "object", "additionalProperties": {"type": "number"},
                          "description": "FAISS search parameters the runtime applies (nprobe, efSearch)"},
        "approximation": {"type": "object", "description": "an approximate index measured against exact search "
                                                          "at export"},
    },
    "required": ["format"],
    "anyOf": [{"required": ["file"]}, {"required": ["shards"]}],
}
