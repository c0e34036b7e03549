"""Nearest-neighbour search over a memory bank, with FAISS or plain numpy.

Both return Euclidean (not squared) distances, ascending, and the bank row ids. FAISS reads the
bank from a ``.faiss`` index file (any index type FAISS can write; GPU when asked for), or from
several shard files searched as one ``IndexShards`` (ids run on from shard to shard, so the results
are the unsharded ones); numpy from an ``.npz`` array and searches it exactly by brute force.

On the CPU an exact FAISS bank (``Flat``, plain or sharded) is searched by numpy over its vectors
(:class:`NumpyBank`): the same exact search, and faster wherever numpy's BLAS has kernels for the
CPU that the OpenBLAS inside the faiss-cpu wheel lacks (about 3.5x in the measurement that chose
this, PatchCore's bank of 4,915 vectors of 152 dimensions against 16,384 queries, with the same
neighbours; ``benchmarks/edge_speed.py`` times it on a given machine). Approximate indices, and
every index on a GPU, search with FAISS.

Approximate indices take search parameters: ``nprobe`` (IVF: inverted lists visited per query) and
``efSearch`` (HNSW: candidate list size). The manifest records the export's values; the user may
override them at inference (``--search-param nprobe=16``). Either way each value is checked
against the index before FAISS sees it (:func:`apply_search_params`): FAISS wraps or truncates what
does not fit its int, which once made every search come back empty.
"""

from __future__ import annotations

import importlib
import math
import numbers
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adx_runtime.errors import BundleError, ConfigError, DependencyError, ProviderError
from adx_runtime.npz import read_npz

#: FAISS search parameters a bank accepts, with what they do.
SEARCH_PARAMS = {
    "nprobe": "IVF indices: inverted lists visited per query (more: closer to exact, slower)",
    "efSearch": "HNSW indices: candidate list size of the graph search (more: closer to exact, slower)",
}


class Bank(Protocol):
    size: int  # number of vectors
    dim: int
    backend: str  # what actually searches: "faiss-cpu", "faiss-gpu", "numpy"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``queries (Q, D) -> distances (Q, k), ids (Q, k)``: Euclidean, ascending."""
        ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Bank vectors ``(n, D)`` for row ids ``(n,)``."""
        ...


def import_faiss() -> Any:
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise DependencyError(
            f"FAISS is not installed ({exc}); it reads .faiss memory banks. Install the runtime extra: "
            "pip install 'adexport[cpu]' or 'adexport[gpu]', or export the bank as npz (--bank npz)."
        ) from None


def parse_search_params(items: list[str] | None) -> dict[str, float]:
    """``["nprobe=16", "efSearch=64"]`` -> ``{"nprobe": 16, "efSearch": 64}`` (CLI form)."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key.strip() or number is None:
            raise ConfigError(f"--search-param takes NAME=NUMBER (e.g. nprobe=16 or efSearch=64), got {item!r}")
        if key.strip() in out:  # the last one winning silently would hide a typo in a script
            raise ConfigError(f"--search-param {key.strip()} is given twice ({out[key.strip()]} and {value}); give it once")
        out[key.strip()] = int(number) if number.is_integer() else number
    return out


def is_exact_index_type(index_type: str) -> bool:
    """Whether a FAISS factory string searches exactly (brute force over uncompressed vectors)."""
    return index_type.replace(" ", "") in ("Flat", "IDMap,Flat", "numpy-exact")


#: The largest ``efSearch`` accepted on a bank of any size. Above the bank's size a larger candidate
#: list finds nothing more (the graph search cannot visit more vectors than the bank holds), and FAISS
#: sizes per-query buffers by it: 2^31 - 1 grew a process to 15 GB, 2^31 wrapped to a negative int and
#: every search came back empty (every image scored 0.0, "normal"). So ``efSearch`` may be anything
#: from ``k`` up to ``max(bank size, EF_SEARCH_CAP)``: the cap keeps usual values (64, 256) valid on a
#: small bank, the bank size lets a large bank be searched exhaustively.
EF_SEARCH_CAP = 4096


def search_param_ranges(index: Any) -> dict[str, tuple[int, int, str]]:
    """The search parameters ``index`` takes, each with its valid range ``(low, high)`` and what sets
    the high end: ``nprobe`` in ``1..nlist`` for IVF, ``efSearch`` in ``1..max(ntotal, EF_SEARCH_CAP)``
    for HNSW, nothing for any other index. Looks through shards (the range every shard accepts),
    pre-transforms and id maps."""
    faiss = import_faiss()
    sub = faiss.downcast_index(index)
    if isinstance(sub, faiss.IndexShards):
        per_shard = [search_param_ranges(sub.at(i)) for i in range(sub.count())]
        if not per_shard:
            return {}
        names = set.intersection(*(set(r) for r in per_shard))
        return {n: (max(r[n][0] for r in per_shard), min(r[n][1] for r in per_shard), per_shard[0][n][2] + ", per shard")
                for n in names}
    if isinstance(sub, (faiss.IndexPreTransform, faiss.IndexIDMap)):
        return search_param_ranges(sub.index)
    ivf = faiss.try_extract_index_ivf(sub) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        return {"nprobe": (1, int(ivf.nlist), f"the index has nlist = {int(ivf.nlist)} inverted lists")}
    if isinstance(sub, faiss.IndexHNSW):
        n = int(sub.ntotal)
        return {"efSearch": (1, max(n, EF_SEARCH_CAP), f"the larger of the bank's {n} vectors and {EF_SEARCH_CAP}")}
    return {}


def whole_search_param(name: str, value: Any, origin: str = "--search-param") -> int:
    """``value`` as an int if it is a whole number (JSON or CLI: ``16`` or ``16.0``); a fraction,
    inf, NaN, a string or a bool is refused (FAISS would truncate or wrap it silently)."""
    whole = (isinstance(value, numbers.Integral) or
             (isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer()))
    if isinstance(value, bool) or not whole:
        error = BundleError if origin != "--search-param" else ConfigError
        raise error(f"search parameter {name} must be a whole number, got {value!r} (from {origin}); "
                    f"e.g. --search-param {name}=16")
    return int(value)


def apply_search_params(index: Any, params: dict[str, float] | None,
                        origins: dict[str, str] | None = None) -> None:
    """Set ``nprobe`` / ``efSearch`` on ``index`` (also inside shards and pre-transforms) after
    checking each against :func:`search_param_ranges`: a parameter this index type does not have,
    or a value it cannot use, is refused before FAISS sees it.

    ``origins``: where each value came from, for the error (default ``--search-param``); a value
    from the bundle's manifest is refused as a :class:`BundleError`."""
    if not params:
        return
    faiss = import_faiss()
    ranges = search_param_ranges(index)
    checked: dict[str, int] = {}
    for name, value in params.items():
        origin = (origins or {}).get(name, "--search-param")
        error = ConfigError if origin == "--search-param" else BundleError
        fix = "re-export the bundle, or override it with --search-param" if error is BundleError else "pass a value in range"
        if name not in SEARCH_PARAMS:
            raise error(f"search parameter {name!r} is not known; valid: {', '.join(SEARCH_PARAMS)} (received from "
                        f"{origin}; e.g. --search-param nprobe=16)")
        number = whole_search_param(name, value, origin)
        if name not in ranges:
            takes = ", ".join(ranges) or "no search parameters"
            raise error(f"search parameter {name}={number} does not apply to this bank's index ({_describe(index)}; "
                        f"it takes {takes}); {name} is for {SEARCH_PARAMS[name].split(':')[0]} (from {origin}): drop it")
        low, high, why = ranges[name]
        if not low <= number <= high:
            raise error(f"search parameter {name}={number} is out of range for this bank's index ({_describe(index)}): "
                        f"valid {low}..{high} ({why}); received from {origin}: {fix}, "
                        f"e.g. --search-param {name}={min(max(low, 16), high)}")
        checked[name] = number
    space = faiss.ParameterSpace()
    for name, number in checked.items():
        try:
            space.set_index_parameter(index, name, float(number))
        except RuntimeError:  # a wrapper FAISS's ParameterSpace does not look through
            raise ConfigError(f"search parameter {name}={number} does not apply to this bank's index "
                              f"({_describe(index)}); {name} is for {SEARCH_PARAMS[name].split(':')[0]}") from None


def _describe(index: Any) -> str:
    faiss = import_faiss()
    sub = faiss.downcast_index(index)
    if isinstance(sub, faiss.IndexShards):
        sub = faiss.downcast_index(sub.at(0))
    return type(sub).__name__


def squared_to_distance(d2: np.ndarray) -> np.ndarray:
    # ||q||^2 - 2 q.b + ||b||^2 can come out slightly negative through rounding.
    return np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)


class NumpyBank:
    """Exact brute-force search: ``d^2 = ||q||^2 - 2 q.b + ||b||^2`` in chunks of queries.

    A chunk of 256 queries keeps the ``(256, N)`` distance block near the cache for the passes over
    it (measured: 256 queries 12.5 ms per image, 64 14.2, 1,024 16.6, at N = 4,915). ``||q||^2`` is
    the same along a row, so it is added to the k selected distances only."""

    backend = "numpy"

    def __init__(self, vectors: np.ndarray, chunk: int = 256, backend: str = "numpy"):
        if vectors.ndim != 2:
            raise BundleError(f"memory bank must be 2-D (N, D), got shape {vectors.shape}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.norms = np.einsum("nd,nd->n", self.vectors, self.vectors)
        self.size, self.dim = self.vectors.shape
        self.chunk = chunk
        self.backend = backend

    @classmethod
    def load(cls, path: str | Path, key: str = "memory_bank") -> "NumpyBank":
        # read_npz bounds the header's declared shape by the file's bytes before allocating.
        return cls(read_npz(path, [key], what="memory bank")[key])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.size)
        dist = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), self.chunk):
            qc = q[s : s + self.chunk]
            d2 = (qc * np.float32(-2.0)) @ self.vectors.T  # -2 q.b: scaling by 2 is exact
            d2 += self.norms[None, :]
            if k == 1:
                i = np.argmin(d2, axis=1)[:, None]
            else:
                part = np.argpartition(d2, k - 1, axis=1)[:, :k]
                order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
                i = np.take_along_axis(part, order, axis=1)
            dist[s : s + len(qc)] = np.take_along_axis(d2, i, axis=1) + np.einsum("qd,qd->q", qc, qc)[:, None]
            ids[s : s + len(qc)] = i
        return squared_to_distance(dist), ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors[np.asarray(ids, dtype=np.int64)]


class FaissBank:
    """A FAISS index read from disk; moved to the GPU when ``device='cuda'``."""

    def __init__(self, index: Any, faiss: Any, backend: str):
        self.index = index
        self._faiss = faiss
        self.backend = backend
        self.size, self.dim = int(index.ntotal), int(index.d)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", search_params: dict[str, float] | None = None, *,
             origins: dict[str, str] | None = None) -> "FaissBank":
        faiss = import_faiss()
        index = _read_index(faiss, path)
        apply_search_params(index, search_params, origins)
        if device == "cpu":
            return cls(index, faiss, "faiss-cpu")
        if device != "cuda":
            raise ProviderError(f"bank device {device!r} is not known; valid: cpu, cuda")
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if not hasattr(faiss, "StandardGpuResources") or ngpu == 0:
            raise ProviderError(
                "the FAISS GPU index was asked for (--bank-device cuda) but this FAISS has no GPU support "
                f"or sees no GPU (GPUs visible to FAISS: {ngpu}). Install adexport[gpu] (faiss-gpu-cuvs), "
                "or use --bank-device cpu."
            )
        res = faiss.StandardGpuResources()
        try:
            gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
        except RuntimeError:
            raise ProviderError(f"FAISS has no GPU version of this bank's index ({_describe(index)}; HNSW and flat "
                                "scalar quantizers search on the CPU only); use --bank-device cpu, or export with "
                                "Flat or an IVF index type") from None
        bank = cls(gpu_index, faiss, "faiss-gpu")
        bank._resources = res  # keep the GPU resources alive as long as the index
        bank._cpu_index = index  # reconstruct from the CPU copy: not every GPU index supports it
        return bank

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _faiss_search(self.index, queries, min(k, self.size))

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        index = getattr(self, "_cpu_index", self.index)
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        return index.reconstruct_batch(ids)


def _faiss_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """L2 distances and ids ``(Q, k)`` from a FAISS index (which returns squared distances)."""
    d2, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return squared_to_distance(d2), ids


def _is_flat(index: Any) -> bool:
    """An exact, uncompressed index (``IndexFlatL2``; :func:`_read_index` refuses other metrics):
    its vectors are the bank itself."""
    return type(import_faiss().downcast_index(index)).__name__ in ("IndexFlatL2", "IndexFlat")


def _read_index(faiss: Any, path: str | Path) -> Any:
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise BundleError(f"FAISS could not read {str(path)!r}: {exc}") from None
    metric = getattr(index, "metric_type", faiss.METRIC_L2)
    if metric != faiss.METRIC_L2:
        raise BundleError(f"{str(path)!r} is not an L2 index (metric_type={metric}); adexport banks are L2")
    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        ivf.make_direct_map()  # IVF indices reconstruct by id only with a direct map
    return index


class ShardedBank:
    """A bank split over several FAISS index files, searched as one ``IndexShards`` whose ids run
    on from shard to shard (``successive_ids``): the results are those of the unsharded bank."""

    backend = "faiss-cpu (sharded)"

    def __init__(self, parts: list[Any], faiss: Any):
        dim = int(parts[0].d)
        self.index = faiss.IndexShards(dim, False, True)  # not threaded: FAISS's own threads do the work
        for part in parts:
            self.index.add_shard(part)
        self._parts = parts  # the shard container does not own the Python wrappers
        self.offsets = np.cumsum([0] + [int(p.ntotal) for p in parts])
        self.size, self.dim = int(self.offsets[-1]), dim

    @classmethod
    def load(cls, paths: list[Path], device: str = "cpu", search_params: dict[str, float] | None = None, *,
             origins: dict[str, str] | None = None) -> "ShardedBank":
        if device != "cpu":
            raise ProviderError("a sharded memory bank is searched on the CPU in this release; use --bank-device cpu")
        faiss = import_faiss()
        parts = [_read_index(faiss, p) for p in paths]
        if len({int(p.d) for p in parts}) != 1:
            raise BundleError(f"the bank's shards have different dimensions: {[int(p.d) for p in parts]}; re-export it")
        bank = cls(parts, faiss)
        apply_search_params(bank.index, search_params, origins)
        return bank

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _faiss_search(self.index, queries, min(k, self.size))

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        out = np.empty((len(ids), self.dim), np.float32)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._parts[s].reconstruct_batch(ids[sel] - self.offsets[s])
        return out


def load_bank(path: str | Path | list[Path], fmt: str, device: str = "cpu",
              search_params: dict[str, float] | None = None, *, origins: dict[str, str] | None = None) -> Bank:
    """Open a bank written by export: ``fmt`` is ``faiss`` or ``npz``; a list of paths is a
    sharded FAISS bank. ``origins``: where each search parameter came from (for errors)."""
    if fmt == "faiss":
        bank: FaissBank | ShardedBank
        if isinstance(path, list):
            bank = ShardedBank.load(path, device, search_params, origins=origins)
            parts = bank._parts
        else:
            bank = FaissBank.load(path, device, search_params, origins=origins)
            parts = [bank.index]
        if device == "cpu" and all(_is_flat(p) for p in parts):
            vectors = np.concatenate([p.reconstruct_n(0, int(p.ntotal)) for p in parts])
            return NumpyBank(vectors, backend=f"numpy (exact search of the FAISS Flat bank{', sharded' if len(parts) > 1 else ''})")
        return bank
    if search_params:
        raise ConfigError(f"search parameters ({', '.join(search_params)}) apply to approximate FAISS indices; this "
                          f"bank is {fmt!r}, searched exactly: drop --search-param")
    if fmt == "npz":
        if device != "cpu":
            raise ProviderError("an npz memory bank is searched with numpy on the CPU; use --bank-device cpu "
                                "or export with the FAISS bank (--bank faiss) for GPU search")
        return NumpyBank.load(path)
    raise BundleError(f"memory bank format {fmt!r} is not known; valid: faiss, npz")


def open_bank(bundle_dir: Path, manifest: dict[str, Any], bank: dict[str, Any], device: str = "cpu",
              search_params: dict[str, float] | None = None, *, what: str = "scoring.bank") -> Bank:
    """The bank a manifest section describes (``file`` or ``shards``, ``format``), with the
    manifest's search parameters overridden by ``search_params``. Every file (each shard too) is
    opened through :func:`adx_runtime.bundle.bundle_file`: listed, checksummed, inside the bundle."""
    from adx_runtime.bundle import bundle_file  # noqa: PLC0415

    stored = bank.get("search_params") or {}
    if not isinstance(stored, dict):
        raise BundleError(f"the bundle's {what}.search_params must be an object like {{\"nprobe\": 8}}, got {stored!r}; "
                          "re-export the bundle")
    params = {**stored, **(search_params or {})}
    # A stored value the user did not override is the bundle's: an unusable one is a bad bundle.
    origins = {name: f"the bundle's {what}.search_params" for name in stored if name not in (search_params or {})}
    if bank.get("shards"):
        path: Path | list[Path] = [bundle_file(bundle_dir, manifest, s["file"], what=f"{what}.shards[{i}].file")
                                   for i, s in enumerate(bank["shards"])]
    else:
        path = bundle_file(bundle_dir, manifest, bank["file"], what=f"{what}.file")
    return load_bank(path, bank["format"], device, params, origins=origins)
