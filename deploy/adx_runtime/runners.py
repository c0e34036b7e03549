"""Graph runners: the one seam between the runtime and whatever executes a bundle's graph.

A runner declares the graph's I/O signature (input name, output names, shapes) and runs one batch:
``run(batch (B, C, H, W) float32) -> {output name: (B, ...) array}``. :class:`Predictor`, export's
parity check and Triton's graph model reach the graph only through it.

A runtime target is a :class:`GraphRunner` subclass and a row of :data:`RUNNERS` (``--device`` name
-> class). The ONNX Runtime runner serves ``cpu``, ``cuda`` and ``tensorrt`` (its TensorRT provider
reading the engines the bundle's ``tensorrt`` section lists); a native TensorRT engine or another
language's runtime would be one more class and one more row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adx_runtime.bundle import bundle_file, bundle_folder
from adx_runtime.errors import BundleError, ProviderError
from adx_runtime.sessions import create_session, require_provider, tensorrt_provider_options

Dim = int | str | None  # a fixed size, a named dynamic axis ("batch"), or unknown


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the runner declares it."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"


class GraphRunner(ABC):
    """Runs one graph, the batch of one input, and says what it runs it on.

    Subclasses set :attr:`inputs`, :attr:`outputs` and :attr:`providers` and implement :meth:`run`;
    to be chosen by ``--device`` they implement :meth:`for_bundle` and take a row of :data:`RUNNERS`.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: what executes the graph, most preferred first (e.g. ``["CPUExecutionProvider"]``), for reports
    providers: list[str]

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` ``(B, C, H, W)`` float32 -> every output by name, batch ``B`` first."""

    @classmethod
    def require(cls, device: str) -> None:
        """Refuse ``device`` before any bundle is read, when this machine cannot run it."""

    @classmethod
    def uses_gpu(cls, device: str) -> bool:
        """Whether the graph runs on a GPU on ``device`` (``--bank-device auto`` then searches there too)."""
        return False

    @classmethod
    def for_bundle(cls, root: Path, manifest: dict[str, Any], device: str, *, threads: int = 0) -> "GraphRunner":
        """The runner of a verified bundle's graph on ``device``."""
        raise NotImplementedError(f"{cls.__name__} does not open bundles")


class OnnxRuntimeRunner(GraphRunner):
    """An ONNX Runtime session whose first provider is the requested one (see :mod:`adx_runtime.sessions`)."""

    def __init__(self, session: Any):
        self.session = session
        self.inputs = [TensorSpec(a.name, tuple(a.shape)) for a in session.get_inputs()]
        self.outputs = [TensorSpec(a.name, tuple(a.shape)) for a in session.get_outputs()]
        self.providers = list(session.get_providers())

    @classmethod
    def open(cls, onnx_path: str | Path, device: str = "cpu", *, threads: int = 0,
             trt_options: dict[str, Any] | None = None) -> "OnnxRuntimeRunner":
        return cls(create_session(onnx_path, device, threads=threads, trt_options=trt_options))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = self.output_names
        return dict(zip(names, self.session.run(names, {self.input_name: batch})))

    @classmethod
    def require(cls, device: str) -> None:
        require_provider(device)

    @classmethod
    def uses_gpu(cls, device: str) -> bool:
        return device != "cpu"

    @classmethod
    def for_bundle(cls, root: Path, manifest: dict[str, Any], device: str, *, threads: int = 0) -> "OnnxRuntimeRunner":
        trt_options = bundle_tensorrt_options(root, manifest) if device == "tensorrt" else None
        graph_path = bundle_file(root, manifest, manifest["graph"]["file"], what="graph.file")
        return cls.open(graph_path, device, threads=threads, trt_options=trt_options)


#: ``--device`` -> the runner class that serves it: the table of runtime targets.
RUNNERS: dict[str, type[GraphRunner]] = {
    "cpu": OnnxRuntimeRunner,
    "cuda": OnnxRuntimeRunner,
    "tensorrt": OnnxRuntimeRunner,
}


def runner_class(device: str) -> type[GraphRunner]:
    """The runner of ``device``, refused (one line naming the valid ones) when no row serves it."""
    if device not in RUNNERS:
        raise ProviderError(f"device {device!r} is not known; valid: {', '.join(RUNNERS)}")
    return RUNNERS[device]


def require_device(device: str) -> type[GraphRunner]:
    """The runner class of ``device``, after it has confirmed this machine can run it."""
    cls = runner_class(device)
    cls.require(device)
    return cls


def open_runner(root: Path, manifest: dict[str, Any], device: str, *, threads: int = 0,
                runner_cls: type[GraphRunner] | None = None) -> GraphRunner:
    """The runner of a verified bundle's graph on ``device``, its signature checked against the manifest.
    ``runner_cls``: what :func:`require_device` already returned for ``device`` (not asked again)."""
    runner = (runner_cls or require_device(device)).for_bundle(root, manifest, device, threads=threads)
    check_graph_signature(runner, manifest, root)
    return runner


def check_graph_signature(runner: GraphRunner, manifest: dict[str, Any], root: Path) -> None:
    """The runner's declared input and output names and static sizes must be what the manifest says
    (and the input what the input contract says), checked when the bundle is opened, not at the first batch."""
    graph = manifest["graph"]
    pre = manifest["input"]
    size = pre.get("input_size") or pre.get("center_crop") or pre.get("resize")

    def dims(shape: Sequence[Any]) -> list[Any]:
        return [d if isinstance(d, int) and not isinstance(d, bool) else None for d in shape]

    problems = []
    for kind, declared, actual in (("input", graph["inputs"], runner.inputs),
                                   ("output", graph["outputs"], runner.outputs)):
        want = [(d["name"], dims(d["shape"])) for d in declared]
        got = [(a.name, dims(a.shape)) for a in actual]
        if [n for n, _ in want] != [n for n, _ in got]:
            problems.append(f"{kind} names {[n for n, _ in got]} in the graph, {[n for n, _ in want]} in the manifest")
            continue
        for (name, w), (_, g) in zip(want, got):
            fixed = [(a, b) for a, b in zip(w, g) if a is not None and b is not None]
            if len(w) != len(g) or any(a != b for a, b in fixed):
                problems.append(f"{kind} {name!r} has shape {g} in the graph, {w} in the manifest")
    first = dims(graph["inputs"][0]["shape"])
    if size is not None and len(first) == 4 and first[2:] != [None, None] and first[2:] != [int(v) for v in size]:
        problems.append(f"input {graph['inputs'][0]['name']!r} is {first[2:]} but the input contract says {list(size)}")
    if problems:
        raise BundleError(f"the graph of bundle {str(root)!r} does not match its manifest: {'; '.join(problems)}. "
                          "The graph and manifest do not belong together; re-export the bundle.")


def bundle_tensorrt_options(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Provider options that point ONNX Runtime's TensorRT provider at the bundle's engines."""
    trt = manifest.get("tensorrt")
    if not trt:
        raise BundleError(
            f"bundle {str(root)!r} has no TensorRT section; build its engine first with "
            "`adx export MODEL --format tensorrt` on the target GPU, or use --device cuda"
        )
    engine_dir = bundle_folder(root, trt["engine_dir"], what="tensorrt.engine_dir")
    # ONNX Runtime reads whatever engine in that folder matches the prefix: every file there must
    # be one export listed (and so checksummed), not one dropped in or rebuilt afterwards.
    for path in sorted(engine_dir.iterdir()):
        name = f"{trt['engine_dir'].rstrip('/')}/{path.name}"
        if not any(e["path"] == name for e in manifest["files"]):
            raise BundleError(
                f"bundle {str(root)!r}: {name!r} is in the TensorRT engine folder but not listed in the manifest's "
                "files, so it is unverified (written after export, e.g. an engine rebuilt for another GPU or "
                "TensorRT). Remove it, or re-export with --format tensorrt on this machine."
            )
        bundle_file(root, manifest, name, what="TensorRT engine")
    return tensorrt_provider_options(engine_dir, trt["profile"], fp16=bool(trt.get("fp16")), prefix=trt["engine_prefix"])


__all__ = ["RUNNERS", "GraphRunner", "OnnxRuntimeRunner", "TensorSpec", "bundle_tensorrt_options",
           "check_graph_signature", "open_runner", "require_device", "runner_class"]
