"""Nearest-neighbour search over a memory bank, with FAISS or plain numpy.

Both return Euclidean (not squared) distances, ascending, and the bank row ids. FAISS reads the
bank from a ``.faiss`` index file (any index type FAISS can write; GPU when asked for), numpy from
an ``.npz`` array and searches it exactly by brute force.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adx_runtime.errors import BundleError, DependencyError, ProviderError


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


def squared_to_distance(d2: np.ndarray) -> np.ndarray:
    # ||q||^2 - 2 q.b + ||b||^2 can come out slightly negative through rounding.
    return np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)


class NumpyBank:
    """Exact brute-force search: ``d^2 = ||q||^2 - 2 q.b + ||b||^2`` in chunks of queries."""

    backend = "numpy"

    def __init__(self, vectors: np.ndarray, chunk: int = 4096):
        if vectors.ndim != 2:
            raise BundleError(f"memory bank must be 2-D (N, D), got shape {vectors.shape}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.norms = np.einsum("nd,nd->n", self.vectors, self.vectors)
        self.size, self.dim = self.vectors.shape
        self.chunk = chunk

    @classmethod
    def load(cls, path: str | Path, key: str = "memory_bank") -> "NumpyBank":
        with np.load(path, allow_pickle=False) as data:
            if key not in data:
                raise BundleError(f"{str(path)!r} has no array {key!r} (has: {', '.join(data.files)})")
            return cls(data[key])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.size)
        dist = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), self.chunk):
            qc = q[s : s + self.chunk]
            d2 = qc @ self.vectors.T
            d2 *= -2.0
            d2 += self.norms[None, :]
            d2 += np.einsum("qd,qd->q", qc, qc)[:, None]
            if k == 1:
                i = np.argmin(d2, axis=1)[:, None]
            else:
                part = np.argpartition(d2, k - 1, axis=1)[:, :k]
                order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
                i = np.take_along_axis(part, order, axis=1)
            dist[s : s + len(qc)] = np.take_along_axis(d2, i, axis=1)
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
    def load(cls, path: str | Path, device: str = "cpu") -> "FaissBank":
        faiss = import_faiss()
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
        if device == "cpu":
            return cls(index, faiss, "faiss-cpu")
        if device != "cuda":
            raise ProviderError(f"bank device {device!r} is not known; valid: cpu, cuda")
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if not hasattr(faiss, "StandardGpuResources") or ngpu == 0:
            raise ProviderError(
                "the FAISS GPU index was asked for (--bank-device cuda) but this FAISS has no GPU support "
                f"or sees no GPU (GPUs visible to FAISS: {ngpu}). Install adexport[gpu] (faiss-gpu-cu12), "
                "or use --bank-device cpu."
            )
        res = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
        bank = cls(gpu_index, faiss, "faiss-gpu")
        bank._resources = res  # keep the GPU resources alive as long as the index
        bank._cpu_index = index  # reconstruct from the CPU copy: not every GPU index supports it
        return bank

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        d2, ids = self.index.search(q, min(k, self.size))
        return squared_to_distance(d2), ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        index = getattr(self, "_cpu_index", self.index)
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        return index.reconstruct_batch(ids)


def load_bank(path: str | Path, fmt: str, device: str = "cpu") -> Bank:
    """Open a bank file written by export: ``fmt`` is ``faiss`` or ``npz``."""
    if fmt == "faiss":
        return FaissBank.load(path, device)
    if fmt == "npz":
        if device != "cpu":
            raise ProviderError("an npz memory bank is searched with numpy on the CPU; use --bank-device cpu "
                                "or export with the FAISS bank (--bank faiss) for GPU search")
        return NumpyBank.load(path)
    raise BundleError(f"memory bank format {fmt!r} is not known; valid: faiss, npz")
