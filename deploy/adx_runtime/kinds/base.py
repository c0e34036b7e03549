"""What every scoring kind's typed manifest section has in common (:class:`ScoringSection`)."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from adx_runtime.kinds.check import check, check_declaration


@dataclass(frozen=True)
class SearchedIndex:
    """A FAISS index the scorer asks for ``k`` neighbours: what ``efSearch`` must cover."""

    label: str  #: in messages and the export summary, e.g. "image gallery"
    bank: dict[str, Any]  #: its manifest section (format, file or shards, index_type, search_params, ...)
    k: int
    k_field: str  #: the manifest field ``k`` comes from, e.g. "scoring.k"


@dataclass(frozen=True)
class ScoringSection:
    """One scoring kind's ``scoring`` section, typed and checked against :attr:`SCHEMA` on load.

    ``raw`` is the section exactly as written (kind and the method's descriptive fields, such as
    RD4AD's ``stages``, included), so ``from_dict(d).to_dict() == d`` and the integrity digest of a
    bundle does not depend on this class; the properties of a subclass are the fields the runtime
    reads, typed. A subclass declares :attr:`SCHEMA` (a JSON Schema object: its ``properties`` and
    ``required``, without ``kind``), which is both the runtime's check and the shipped schema's.
    """

    raw: dict[str, Any]

    kind: ClassVar[str]
    title: ClassVar[str]  #: one line for the schema's description: methods and what the scorer does
    SCHEMA: ClassVar[dict[str, Any]]
    searching: ClassVar[bool] = False  #: searches a FAISS index, so takes --search-param

    @classmethod
    @functools.cache
    def _checked_schema(cls) -> dict[str, Any]:
        # Built and checked once per kind: every bundle open reads its section more than once.
        out = copy.deepcopy(cls.SCHEMA)
        out["description"] = f"scoring kind {cls.kind!r}: {cls.title}"
        out["properties"] = {"kind": {"enum": [cls.kind]}, **out.get("properties", {})}
        out["required"] = ["kind", *out.get("required", [])]
        check_declaration(out, f"scoring kind {cls.kind}")
        return out

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """The section's JSON Schema, ``kind`` included; descriptive fields are allowed beyond it."""
        return copy.deepcopy(cls._checked_schema())

    @classmethod
    def from_dict(cls, d: Any, where: str = "scoring") -> "ScoringSection":
        """Checked against :meth:`schema`; a field it refuses is a one-line BundleError naming it."""
        check(d, cls._checked_schema(), where)  # check() reads the schema, never changes it
        return cls(copy.deepcopy(d))

    @classmethod
    def build(cls, **fields: Any) -> "ScoringSection":
        """A section written by export (kind added), checked as a reader would check it."""
        return cls.from_dict({"kind": cls.kind, **fields})

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    def detail(self) -> str:
        """What the scoring data is, in a few words (``Flat``, ``float16``); empty when nothing."""
        return ""

    def searched_indexes(self) -> list[SearchedIndex]:
        """The FAISS indexes the scorer searches with ``k`` neighbours (none unless :attr:`searching`)."""
        return []

    def describe(self, search_params: dict[str, float] | None = None) -> str:
        """:meth:`detail` with the search parameters in effect (the bundle's, overridden by
        ``search_params``): what ``adx bench`` prints after the scoring files."""
        indexes = self.searched_indexes()
        stored = (indexes[0].bank.get("search_params") or {}) if indexes else {}
        params = {**stored, **(search_params or {})}
        detail = self.detail()
        if params:
            detail += " " + ",".join(f"{k}={v}" for k, v in params.items())
        return detail
