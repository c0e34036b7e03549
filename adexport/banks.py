"""Memory banks at export, written once for every method that searches one (PatchCore's coreset,
SPADE's image gallery); the section each returns is :data:`adx_runtime.kinds.bank.BANK_SCHEMA`.

- :func:`write_faiss_bank`: build the index the user named (a FAISS factory string: ``Flat``,
  ``SQ8``, ``IVF64,Flat``, ``IVF64,PQ38``, ``HNSW32``, ...), optionally split into shards that the
  runtime searches as one ``IndexShards``, with search parameters (``nprobe``, ``efSearch``)
  recorded as the runtime's defaults;
- :func:`write_npz_bank`: the vectors in an ``.npz``, searched exactly with numpy (``--bank npz``);
- :func:`measure_approximation`: an approximate index against exact search on held-out normal
  queries (recall@1 and the relative error of the nearest-neighbour distance); above the
  tolerance the export is refused unless the user accepts it.

The reference is an exact ``IndexFlatL2`` over the same vectors (faiss ``contrib``'s pattern).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.bundle import file_entry
from adx_runtime.errors import ConfigError, ExportError
from adx_runtime.knn import apply_search_params, import_faiss, is_exact_index_type, squared_to_distance

#: An approximate index is refused when, on held-out normal queries, its nearest neighbour is the
#: exact one less often than ``recall_at_1`` or its nearest distance is off by more than
#: ``distance_rel_error`` on average (|d_approx - d_exact| / d_exact). Measured on the demo's PatchCore
#: bank (4,915 x 152): SQ8 0.991 / 0.0008, IVF64,Flat nprobe 8 0.998 / 0.0000, HNSW32 1.000 / 0.0000,
#: IVF64,PQ38 nprobe 8 0.75 / 0.020, all with image and pixel AUROC within 0.0002 of exact search.
APPROXIMATION_TOLERANCE = {"recall_at_1": 0.5, "distance_rel_error": 0.05}


def build_index(vectors: np.ndarray, index_type: str) -> Any:
    """A trained, filled FAISS index of ``vectors (N, D)`` float32 for a factory string."""
    faiss = import_faiss()
    N, D = vectors.shape
    try:
        index = faiss.index_factory(D, index_type, faiss.METRIC_L2)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"FAISS could not build index type {index_type!r} on a bank of {N} x {D} ({first}); use Flat, or an "
            "index whose training needs fewer points (IVF: nlist <= N / 39; PQ: sub-quantizers dividing D)"
        ) from None
    return index


def measure_approximation(index: Any, vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Nearest neighbour of every query in ``index`` against exact search over ``vectors``."""
    faiss = import_faiss()
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    d_ref, i_ref = exact.search(q, 1)
    d_got, i_got = index.search(q, 1)
    d_ref, d_got = squared_to_distance(d_ref[:, 0].astype(np.float64)), squared_to_distance(d_got[:, 0].astype(np.float64))
    rel = np.abs(d_got - d_ref) / np.maximum(d_ref, 1e-12)
    return {
        "queries": len(q),
        "recall_at_1": float((i_got[:, 0] == i_ref[:, 0]).mean()),
        "distance_rel_error": float(rel.mean()),
        "distance_rel_error_p99": float(np.percentile(rel, 99)),
        "distance_rel_error_max": float(rel.max()),
        "measure": "nearest neighbour against exact IndexFlatL2 search; relative error |d - d_exact| / d_exact, mean",
    }


def write_faiss_bank(bundle_dir: Path, stem: str, vectors: np.ndarray, *, index_type: str = "Flat",
                     search_params: dict[str, float] | None = None, shards: int | None = None,
                     queries: np.ndarray | None = None, accept_approximate: bool = False,
                     tolerance: dict[str, float] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write ``stem.faiss`` (or ``stem.shardNN.faiss`` files); returns the manifest's bank section
    (without ``format``-independent extras) and the ``files`` entries.

    ``queries``: held-out normal vectors to measure an approximate index on (required for one).
    """
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    M, D = vectors.shape
    n_shards = 1 if shards is None else int(shards)
    if n_shards < 1 or n_shards > M:
        raise ConfigError(f"--shards must be between 1 and the bank size {M}, got {shards}")
    exact = is_exact_index_type(index_type)
    params = dict(search_params or {})
    if exact and params:
        raise ConfigError(f"--search-param {', '.join(params)} applies to approximate indices (IVF: nprobe, HNSW: "
                          f"efSearch); index type {index_type!r} searches exactly: drop it")
    bounds = np.linspace(0, M, n_shards + 1).round().astype(int)
    parts = [build_index(vectors[a:b], index_type) for a, b in zip(bounds[:-1], bounds[1:])]
    for part in parts:
        apply_search_params(part, params)
    section: dict[str, Any] = {"index_type": index_type, "size": M, "dim": D, "exact": exact,
                               "search_params": params}
    if not exact:
        if queries is None or not len(queries):
            raise ExportError(f"the approximate index {index_type!r} must be measured against exact search on "
                              "held-out normal images, and none were recorded at training; re-train, or use Flat")
        # ``parts`` (a local here) keeps the shard wrappers alive while ``whole`` searches them.
        whole = parts[0] if n_shards == 1 else _shards_for_measure(faiss, D, parts)
        measured = measure_approximation(whole, vectors, queries)
        tol = dict(tolerance or APPROXIMATION_TOLERANCE)
        failed = [k for k in ("recall_at_1",) if measured[k] < tol[k]] + \
                 [k for k in ("distance_rel_error",) if measured[k] > tol[k]]
        section["approximation"] = {**measured, "tolerance": tol, "passed": not failed, "accepted_above_tolerance": bool(failed)}
        if failed and not accept_approximate:
            what = ", ".join(f"{k} {measured[k]:.4f} (tolerance {'>=' if k == 'recall_at_1' else '<='} {tol[k]})"
                             for k in failed)
            raise ExportError(
                f"the approximate index {index_type!r} with search parameters {params or 'FAISS defaults'} misses "
                f"exact search on {measured['queries']} held-out normal queries: {what}. No bundle was written; raise "
                "nprobe/efSearch with --search-param, choose a finer index, or pass --accept-approximate to write it anyway"
            )
    files = []
    names = [f"{stem}.faiss"] if n_shards == 1 else [f"{stem}.shard{i:02d}.faiss" for i in range(n_shards)]
    for name, part, a, b in zip(names, parts, bounds[:-1], bounds[1:]):
        faiss.write_index(part, str(bundle_dir / name))
        files.append(file_entry(bundle_dir, name, "faiss-index", shape=[int(b - a), D], dtype="float32",
                                index_type=index_type))
    if n_shards == 1:
        section["file"] = names[0]
    else:
        section["shards"] = [{"file": n, "offset": int(a), "size": int(b - a)} for n, a, b in zip(names, bounds[:-1], bounds[1:])]
    return section, files


def write_npz_bank(bundle_dir: Path, stem: str, vectors: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write ``stem.npz`` (array ``memory_bank``), searched exactly with numpy by the runtime;
    returns the manifest's bank section and the ``files`` entries, as :func:`write_faiss_bank`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    M, D = vectors.shape
    name = f"{stem}.npz"
    np.savez(bundle_dir / name, memory_bank=vectors)
    section = {"file": name, "format": "npz", "index_type": "numpy-exact", "size": M, "dim": D, "exact": True}
    return section, [file_entry(bundle_dir, name, "npz", arrays={"memory_bank": {"shape": [M, D], "dtype": "float32"}})]


def _shards_for_measure(faiss: Any, dim: int, parts: list[Any]) -> Any:
    shards = faiss.IndexShards(dim, False, True)  # not threaded, successive ids
    for part in parts:
        shards.add_shard(part)
    return shards  # the caller keeps ``parts`` alive: faiss's wrappers take no extra attributes
