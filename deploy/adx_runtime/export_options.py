"""Export options a method may honour, declared once: keyword, flag, help and how a command line reads it.

They choose how a bundle's scoring data is written (bank format, FAISS index type, shards, the
search parameters recorded as its defaults), all of which this runtime reads. A method names the
options it honours in ``ExportProperties.options`` (keys of :data:`METHOD_EXPORT_OPTIONS`);
``export_bundle`` refuses the others by their flag; ``adx export`` and ``adx bench-fit`` build their
flags from this table, so a new option is one row here plus the method that reads it. The table
lives in the runtime because the CLI reads it at start-up, where neither torch nor ``adexport``
need be installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

#: How a command line gives the value: ``text`` and ``int`` one value, ``switch`` an on/off flag
#: (off means "not given"), ``repeated`` a list of ``NAME=VALUE`` items turned into the library's
#: value by ``parse``.
Kind = Literal["text", "int", "switch", "repeated"]


@dataclass(frozen=True)
class ExportOption:
    name: str  # keyword of export_bundle, key of ExportProperties.options
    flag: str  # the command-line flag, also what refusals name
    kind: Kind
    help: str
    parse: Optional[Callable[[list[str]], Any]] = None  # repeated items -> the library's value

    def from_cli(self, value: Any) -> Any:
        """A parsed flag value -> the library's value; ``None`` when the flag was not given (a switch
        left off, an empty repeated option), so an unused option is never sent to a method."""
        if self.kind == "switch":
            return True if value else None
        if self.kind == "repeated":
            if not value:
                return None
            return (self.parse(list(value)) if self.parse else list(value)) or None
        return value


def _search_params(items: list[str]) -> dict[str, float]:
    from adx_runtime.knn import parse_search_params  # noqa: PLC0415  (the runtime's parser, read when used)

    return parse_search_params(items)


METHOD_EXPORT_OPTIONS: tuple[ExportOption, ...] = (
    ExportOption("bank", "--bank", "text",
                 "Methods with a memory bank: faiss (a FAISS index) or npz (numpy arrays) [default: faiss]. "
                 "Other methods refuse it."),
    ExportOption("index_type", "--index-type", "text",
                 "Memory bank or image gallery: FAISS index factory string: Flat (exact), SQ8, IVF64,Flat, "
                 "IVF64,PQ38, HNSW32, ... [default: Flat]. Approximate ones are measured against exact search "
                 "on held-out images. Other methods refuse it."),
    ExportOption("search_params", "--search-param", "repeated",
                 "Approximate index: NAME=VALUE search parameter recorded as the bundle's default, repeatable: "
                 "nprobe=N (IVF), efSearch=N (HNSW) [default: FAISS's, nprobe 1, efSearch 16].",
                 parse=_search_params),
    ExportOption("shards", "--shards", "int",
                 "Memory bank: split it into N FAISS index files searched as one (IndexShards) "
                 "[default: 1, one file]. Other methods refuse it."),
    ExportOption("accept_approximate", "--accept-approximate", "switch",
                 "Write the bundle even when the approximate index misses its tolerance against exact search "
                 "(recall@1 >= 0.5, mean relative distance error <= 0.05)."),
)

#: Option keyword -> its flag (what export refusals name).
EXPORT_OPTION_FLAGS: dict[str, str] = {o.name: o.flag for o in METHOD_EXPORT_OPTIONS}


def given_export_options(**values: Any) -> dict[str, Any]:
    """The method export options actually given (``None`` and empty values dropped), keyed as in
    :data:`METHOD_EXPORT_OPTIONS`. A keyword the table lacks is a programming error (``TypeError``),
    so a caller and the table cannot drift apart."""
    unknown = sorted(set(values) - set(EXPORT_OPTION_FLAGS))
    if unknown:
        raise TypeError(f"not export options: {', '.join(unknown)}; known: {', '.join(EXPORT_OPTION_FLAGS)}")
    return {k: v for k, v in values.items() if v is not None and not (isinstance(v, (dict, list)) and not v)}
