"""The graph-runner seam: a runtime target is a runner class and a row of ``RUNNERS``.

The test double is a real second runtime target with no ONNX Runtime in it: onnx's own numpy
reference evaluator (``onnx.reference``) running the bundle's ``model.onnx``. With
``onnxruntime.InferenceSession`` made to fail, it serves a whole bundle through ``Predictor`` and
export's parity check, which proves both reach the graph only through the runner interface.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import list_test_images

from adx_runtime.bundle import MANIFEST, bundle_file, load_manifest, sha256_file
from adx_runtime.errors import BundleError, ProviderError
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import load_image, stack
from adx_runtime.runners import RUNNERS, GraphRunner, OnnxRuntimeRunner, TensorSpec

DEVICE = "onnx-reference"
#: batch sizes the reference runner was asked to run, in order
RUNS: list[int] = []


class ReferenceRunner(GraphRunner):
    """The bundle's graph on ``onnx.reference.ReferenceEvaluator`` (numpy only); records each batch."""

    def __init__(self, path: Path):
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(path))
        self.evaluator = ReferenceEvaluator(model)

        def spec(value: Any) -> TensorSpec:
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in value.type.tensor_type.shape.dim]
            return TensorSpec(value.name, tuple(dims))

        self.inputs = [spec(v) for v in model.graph.input]
        self.outputs = [spec(v) for v in model.graph.output]
        self.providers = ["onnx.reference"]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        RUNS.append(len(batch))
        return dict(zip(self.output_names, self.evaluator.run(self.output_names, {self.input_name: batch})))

    @classmethod
    def for_bundle(cls, root: Path, manifest: dict[str, Any], device: str, *, threads: int = 0) -> "ReferenceRunner":
        return cls(bundle_file(root, manifest, manifest["graph"]["file"], what="graph.file"))


@pytest.fixture
def reference_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference runner as one more row of the table, and ONNX Runtime unable to open a session."""
    import onnxruntime as ort

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ONNX Runtime was asked for a session while the reference runner serves")

    monkeypatch.setitem(RUNNERS, DEVICE, ReferenceRunner)
    monkeypatch.setattr(ort, "InferenceSession", refuse)
    RUNS.clear()


def test_onnxruntime_runner_declares_the_bundle_signature_and_matches_the_reference(bundle: Path,
                                                                                   dataset: Path) -> None:
    manifest = load_manifest(bundle)
    runner = OnnxRuntimeRunner.open(bundle / "model.onnx")
    assert runner.input_name == "image" and runner.providers == ["CPUExecutionProvider"]
    assert runner.output_names == [o["name"] for o in manifest["graph"]["outputs"]]
    declared = manifest["graph"]["outputs"][0]["shape"]
    assert runner.outputs[0].shape[0] == "batch" and runner.outputs[0].shape[1:] == tuple(declared[1:])
    x = stack([load_image(p, Predictor.load(bundle).preprocess) for p in list_test_images(dataset)[:3]])
    got = runner.run(x)
    ref = ReferenceRunner(bundle / "model.onnx").run(x)
    assert set(got) == set(ref) == set(runner.output_names)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def ort_results(bundle: Path, dataset: Path) -> list[Any]:
    """Seven files scored with ONNX Runtime's CPU runner (a module fixture: set up before ONNX Runtime
    is taken away by ``reference_target``)."""
    return list(Predictor.load(bundle).predict_files(list_test_images(dataset)[:7], batch_size=3, keep_maps=True))


def test_a_runner_without_onnxruntime_serves_a_whole_bundle_through_predictor(
        bundle: Path, dataset: Path, ort_results: list[Any], reference_target: None) -> None:
    p = Predictor.load(bundle, device=DEVICE)
    assert p.providers == ["onnx.reference"] and isinstance(p.runner, ReferenceRunner)
    got = list(p.predict_files(list_test_images(dataset)[:7], batch_size=3, keep_maps=True))
    assert RUNS == [3, 3, 1]  # every batch went through the runner, and nothing else ran the graph
    assert [r.path for r in got] == [r.path for r in ort_results] and all(r.ok for r in got)
    np.testing.assert_allclose([r.image_score for r in got], [r.image_score for r in ort_results], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.stack([r.anomaly_map for r in got]), np.stack([r.anomaly_map for r in ort_results]),
                               rtol=1e-4, atol=1e-5)
    assert [r.label for r in got] == [r.label for r in ort_results]


def test_the_parity_check_runs_on_any_runtime_target(fitted: Any, bundle: Path, dataset: Path,
                                                     reference_target: None) -> None:
    from adexport.export import parity_check

    images = list_test_images(dataset)[:4]
    tolerance = load_manifest(bundle)["parity"]["tolerance"]
    result = parity_check(fitted, bundle, images, device=DEVICE, tolerance=tolerance)
    assert RUNS == [4, 4]  # the raw outputs compared as features, then the predictor's batch
    assert result["passed"] and result["device"] == DEVICE and result["providers"] == ["onnx.reference"]
    assert result["errors"]["features"]["max_rel"] < 1e-4 and result["errors"]["maps"]["max_rel"] < 1e-4


@pytest.mark.parametrize("change,message", [
    (lambda s: TensorSpec("other", s.shape),
     r"output names \['other'\] in the graph, \['patch_features'\] in the manifest"),
    (lambda s: TensorSpec(s.name, (*s.shape[:-1], 7)),
     r"output 'patch_features' has shape \[None, \d+, 7\] in the graph"),
])
def test_a_runner_whose_declared_signature_differs_from_the_manifest_is_refused(
        bundle: Path, reference_target: None, monkeypatch: pytest.MonkeyPatch, change: Any, message: str) -> None:
    class Renamed(ReferenceRunner):
        def __init__(self, path: Path):
            super().__init__(path)
            self.outputs = [change(self.outputs[0])]

    monkeypatch.setitem(RUNNERS, DEVICE, Renamed)
    with pytest.raises(BundleError, match=message):
        Predictor.load(bundle, device=DEVICE)
    assert RUNS == []  # refused when opened, before any batch


def test_unknown_device_names_every_row_of_the_table(bundle: Path, reference_target: None) -> None:
    with pytest.raises(ProviderError, match=f"device 'npu' is not known; valid: cpu, cuda, tensorrt, {DEVICE}$"):
        Predictor.load(bundle, device="npu")


def test_tritons_graph_model_runs_the_bundle_through_the_runner(bundle: Path, dataset: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's Python-backend graph model (``adx serve``), driven with a stand-in for Triton's
    ``triton_python_backend_utils``: requests batched, run once, split back per request."""

    class Tensor:
        def __init__(self, name: str, array: np.ndarray):
            self.name, self.array = name, array

        def as_numpy(self) -> np.ndarray:
            return self.array

    class Response:
        def __init__(self, output_tensors: list[Tensor], error: Any = None):
            self.tensors, self.error = {t.name: t.array for t in output_tensors}, error

    class Request:
        def __init__(self, image: np.ndarray):
            self.image = image

        def requested_output_names(self) -> list[str]:
            return []

    pb = types.SimpleNamespace(Tensor=Tensor, InferenceResponse=Response, TritonError=str,
                               get_input_tensor_by_name=lambda request, name: Tensor(name, request.image))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from adx_runtime.triton_models import GraphModel

    params = {"adx_bundle_dir": str(bundle), "adx_manifest_sha256": sha256_file(bundle / MANIFEST), "adx_threads": "1"}
    model = GraphModel()
    model.initialize({"model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}}),
                      "model_repository": str(tmp_path), "model_version": "1", "model_name": "patchcore_graph"})
    assert isinstance(model.runner, OnnxRuntimeRunner)
    p = Predictor.load(bundle)
    x = stack([load_image(f, p.preprocess) for f in list_test_images(dataset)[:3]])
    responses = model.execute([Request(x[:2]), Request(x[2:])])
    expected = p.runner.run(x)
    assert [r.error for r in responses] == [None, None]
    for name, value in expected.items():
        np.testing.assert_allclose(np.concatenate([r.tensors[name] for r in responses]), value, rtol=1e-5, atol=1e-6)
        assert [len(r.tensors[name]) for r in responses] == [2, 1]


def test_a_new_export_format_is_one_class_and_one_row(fitted: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A format that builds nothing extra but runs its own parity check on its runtime target: export
    builds it after the ONNX bundle, records its section and that parity, and refuses --fp16 for it."""
    from adexport import export
    from adx_runtime.errors import ConfigError

    built: list[dict[str, Any]] = []

    class ReferenceFormat(export.ExportFormat):
        name = "reference"
        title = "the ONNX reference evaluator"
        artefact = "reference build"
        section = "reference_build"
        device = DEVICE

        def build(self, bundle_dir: Path, manifest: dict[str, Any], *, max_batch: int,
                  fp16: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            built.append({"dir": bundle_dir, "max_batch": max_batch, "fp16": fp16})
            return {"evaluator": "onnx.reference"}, []

    monkeypatch.setitem(export.FORMATS, "reference", ReferenceFormat())
    monkeypatch.setitem(RUNNERS, DEVICE, ReferenceRunner)
    assert list(export.FORMATS)[:2] == ["onnx", "tensorrt"]
    with pytest.raises(ConfigError, match="--fp16 applies to TensorRT engines; the ONNX graph is exported in float32"):
        export.export_bundle(fitted, tmp_path / "fp16", fmt="reference", fp16=True)
    RUNS.clear()
    m = export.export_bundle(fitted, tmp_path / "b", fmt="reference")
    assert len(built) == 1 and built[0]["max_batch"] == 16 and built[0]["fp16"] is False
    assert m["graph"]["max_batch"] is None  # no batch profile: the graph's batch axis stays open
    section = m["reference_build"]
    assert section["evaluator"] == "onnx.reference" and section["parity"]["passed"]
    assert section["parity"]["providers"] == ["onnx.reference"] and RUNS == [len(section["parity"]["images"])] * 2
    assert Predictor.load(tmp_path / "b").providers == ["CPUExecutionProvider"]


def test_unknown_export_format_lists_the_table(fitted: Any, tmp_path: Path) -> None:
    from adexport.export import export_bundle
    from adx_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="export format 'engine' is not known; valid: onnx, tensorrt$"):
        export_bundle(fitted, tmp_path / "b", fmt="engine")
