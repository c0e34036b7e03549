"""A tiled bundle on Triton: ``N_graph`` (tiles) and the Python-backend ``N_image``, which runs the
runtime's own tiled scoring and sends each chunk of tiles to ``N_graph`` through BLS.

The Python-backend models are driven with a stand-in for Triton's ``triton_python_backend_utils``
whose BLS ``exec()`` runs the repository's real ``GraphModel`` (the graph model ``adx serve`` uses),
so ``N_image``'s answers are compared with :meth:`Predictor.predict` on the same encoded images.
"""

from __future__ import annotations

import io
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from adx_runtime.bundle import load_manifest, sha256_file
from adx_runtime.errors import ConfigError
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import TilingSpec
from adx_runtime.triton_repo import write_repository

NAME = "patchcore_weave"


@pytest.fixture(scope="module")
def tiled_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PatchCore trained on 64-px tiles of 128-px images (3 x 3 tiles at an overlap of 16)."""
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train
    from adexport.methods import METHODS
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("tiled-triton")
    generate_demo_dataset(root / "data", ["weave"], n_train=4, n_test_good=2, n_test_per_defect=1, image_size=128, seed=0)
    options = {**METHODS["patchcore"].test_options, "image_size": 64}
    fitted = train(root / "data", "weave", "patchcore", options=options, holdout=0.34, tiling=TilingSpec(overlap=16))
    export_bundle(fitted, root / "bundle")
    return root / "bundle"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tiled_bundle: Path) -> list[bytes]:
    """Two encoded images of different sizes: 128 x 128 (3 x 3 tiles) and 112 x 80 (2 x 2)."""
    data = tiled_bundle.parent / "data" / "weave" / "test"
    files = sorted(data.glob("*/*.png"))
    defect = next(f for f in files if f.parent.name != "good")
    return [_png(Image.open(defect).convert("RGB")), _png(Image.open(files[0]).convert("RGB").crop((8, 20, 120, 100)))]


# ------------------------------------------------------------------ a stand-in for triton_python_backend_utils


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self.array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self.array


class TritonError:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None):
        self.tensors = {t.name(): t for t in output_tensors}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class InferenceRequest:
    """Both a request Triton hands ``execute`` and a BLS request a model builds (``exec()``)."""

    models: dict[str, Any] = {}  # the server's loaded models, by name
    calls: list[tuple[str, int]] = []  # (model, batch) of every BLS request

    def __init__(self, model_name: str = "", requested_output_names: list[str] | None = None,
                 inputs: list[Tensor] | None = None):
        self.model_name, self.wanted = model_name, list(requested_output_names or [])
        self.inputs = {t.name(): t for t in inputs or []}

    def requested_output_names(self) -> list[str]:
        return self.wanted

    def exec(self) -> InferenceResponse:
        model = self.models.get(self.model_name)
        batch = len(next(iter(self.inputs.values())).as_numpy())
        self.calls.append((self.model_name, batch))
        if model is None:
            return InferenceResponse([], TritonError(f"Failed for execute the inference request.\nModel "
                                                     f"'{self.model_name}' is not ready."))
        return model.execute([self])[0]


def _fake_pb() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = (Tensor, TritonError, InferenceResponse,
                                                                            InferenceRequest)
    pb.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    pb.get_output_tensor_by_name = lambda response, name: response.tensors.get(name)
    return pb


def _model_config(config: Path) -> dict[str, Any]:
    """What Triton hands ``initialize`` as ``model_config`` (JSON), for what the models read: the
    parameters and the output names."""
    text = config.read_text()
    params = {k: {"string_value": json.loads(v)} for k, v in
              re.findall(r'key: "(\w+)" value: \{ string_value: ("(?:[^"\\]|\\.)*") \}', text)}
    outputs = re.search(r"output \[\n(.*?)\n\]", text, re.S)
    assert outputs is not None
    return {"parameters": params, "output": [{"name": n} for n in re.findall(r'name: "(\w+)"', outputs.group(1))]}


def _load(model: Any, root: Path, name: str) -> Any:
    model.initialize({"model_config": json.dumps(_model_config(root / name / "config.pbtxt")),
                      "model_repository": str(root / name), "model_version": "1", "model_name": name})
    return model


@pytest.fixture
def server(tiled_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The repository ``adx serve`` writes for the tiled bundle (graph on the Python backend, bundle
    as given, max batch 4 so that 9 tiles go in chunks), its two models loaded."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb())
    monkeypatch.setattr(InferenceRequest, "models", {})
    monkeypatch.setattr(InferenceRequest, "calls", [])
    from adx_runtime.triton_models import GraphModel, TiledImageModel

    root = tmp_path / "repo"
    entry = write_repository(tiled_bundle, root, graph_backend="python", copy_bundle=False, max_batch=4)
    assert entry.models == [f"{NAME}_image", f"{NAME}_graph"]
    InferenceRequest.models[f"{NAME}_graph"] = _load(GraphModel(), root, f"{NAME}_graph")
    InferenceRequest.models[f"{NAME}_image"] = _load(TiledImageModel(), root, f"{NAME}_image")
    return InferenceRequest.models


def _request(*items: bytes, outputs: list[str] | None = None) -> InferenceRequest:
    array = np.empty((len(items), 1), dtype=object)
    array[:, 0] = items
    return InferenceRequest(requested_output_names=outputs, inputs=[Tensor("image_bytes", array)])


def _check(response: InferenceResponse, expected: Any, i: int) -> None:
    assert not response.has_error(), response.error().message()
    t = {k: v.as_numpy() for k, v in response.tensors.items()}
    assert t["image_score"].shape == t["normalized_score"].shape == t["label"].shape == (1, 1)
    assert t["label"].dtype == bool and t["image_score"].dtype == np.float32
    np.testing.assert_allclose(t["image_score"][0, 0], expected.image_scores[i], rtol=1e-5)
    np.testing.assert_allclose(t["normalized_score"][0, 0], expected.normalized_scores[i], rtol=1e-5)
    assert t["label"][0, 0] == expected.labels[i]
    assert t["anomaly_map"].shape == (1, *expected.anomaly_maps[i].shape)
    np.testing.assert_allclose(t["anomaly_map"][0], expected.anomaly_maps[i], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ tests


def test_image_model_answers_what_the_runtime_predicts(server: dict, tiled_bundle: Path, images: list[bytes]) -> None:
    expected = Predictor.load(tiled_bundle).predict(images)
    assert [m.shape for m in expected.anomaly_maps] == [(128, 128), (80, 112)]  # each image's own size
    assert expected.image_scores[0] != expected.image_scores[1]
    responses = server[f"{NAME}_image"].execute([_request(images[0]), _request(images[1])])  # one dynamic batch
    for i, response in enumerate(responses):
        _check(response, expected, i)
    # 9 + 4 tiles in chunks of at most the graph model's max_batch_size (4), both images' tiles mixed
    assert InferenceRequest.calls == [(f"{NAME}_graph", 4)] * 3 + [(f"{NAME}_graph", 1)]


def test_a_bad_image_fails_its_own_request_only(server: dict, tiled_bundle: Path, images: list[bytes]) -> None:
    expected = Predictor.load(tiled_bundle).predict(images)
    small = _png(Image.new("RGB", (48, 200)))  # narrower than one 64-px tile
    responses = server[f"{NAME}_image"].execute([_request(b"not an image"), _request(images[0]), _request(small),
                                                 _request(images[1])])
    assert [r.has_error() for r in responses] == [True, False, True, False]
    assert responses[0].error().message().startswith("image 0 of the request: ")
    assert "smaller than the bundle's 64 x 64 tiles" in responses[2].error().message()
    _check(responses[1], expected, 0)
    _check(responses[3], expected, 1)


def test_a_request_of_two_sizes_gets_scores_but_not_one_map(server: dict, tiled_bundle: Path,
                                                            images: list[bytes]) -> None:
    expected = Predictor.load(tiled_bundle).predict(images)
    both = server[f"{NAME}_image"].execute([_request(*images)])[0]
    assert both.has_error() and "send one image per request" in both.error().message()
    scores = server[f"{NAME}_image"].execute([_request(*images, outputs=["image_score", "label"])])[0]
    assert not scores.has_error() and set(scores.tensors) == {"image_score", "label"}
    np.testing.assert_allclose(scores.tensors["image_score"].as_numpy()[:, 0], expected.image_scores, rtol=1e-5)
    np.testing.assert_array_equal(scores.tensors["label"].as_numpy()[:, 0], expected.labels)


def test_a_graph_model_error_is_a_one_line_error_response(server: dict, images: list[bytes]) -> None:
    del server[f"{NAME}_graph"]  # unloaded: BLS answers with Triton's (two-line) error
    responses = server[f"{NAME}_image"].execute([_request(images[0]), _request(b"junk")])
    message = responses[0].error().message()
    assert message == (f"model {NAME}_image: graph model {NAME}_graph failed on 4 tiles: Failed for execute the "
                       f"inference request. Model '{NAME}_graph' is not ready.")
    assert responses[1].error().message().startswith("image 0 of the request: ")


def test_repository_of_a_tiled_bundle_parses_with_tritons_schema(tiled_bundle: Path, tmp_path: Path) -> None:
    from servekit import CONFIGS_AS_JSON, run_py, serve_python

    root = tmp_path / "models"
    entry = write_repository(tiled_bundle, root)
    parsed = run_py(serve_python(), CONFIGS_AS_JSON, str(root))
    assert set(parsed) == {f"{NAME}_image", f"{NAME}_graph"}  # no float-input ensemble, scorer or decoder
    image, graph = parsed[f"{NAME}_image"], parsed[f"{NAME}_graph"]
    assert image["backend"] == "python" and image["max_batch_size"] == 16 and "dynamic_batching" in image
    assert image["input"] == [{"name": "image_bytes", "data_type": "TYPE_STRING", "dims": ["1"]}]
    assert image["output"] == [
        {"name": "image_score", "data_type": "TYPE_FP32", "dims": ["1"]},
        {"name": "normalized_score", "data_type": "TYPE_FP32", "dims": ["1"]},
        {"name": "label", "data_type": "TYPE_BOOL", "dims": ["1"]},
        {"name": "anomaly_map", "data_type": "TYPE_FP32", "dims": ["-1", "-1"]}]
    params = {k: v["string_value"] for k, v in image["parameters"].items()}
    assert params["adx_graph_model"] == f"{NAME}_graph" and params["adx_graph_max_batch"] == "16"
    assert params["adx_model"] == "tiled_image" and params["adx_bundle_dir"] == "bundle"
    assert params["adx_manifest_sha256"] == sha256_file(tiled_bundle / "manifest.json")
    assert graph["platform"] == "onnxruntime_onnx" and graph["max_batch_size"] == 16
    assert graph["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "64", "64"]}]
    assert load_manifest(root / f"{NAME}_image" / "1" / "bundle", verify=True)["input"]["tiling"]
    assert not (root / f"{NAME}_graph" / "1" / "bundle").exists()
    code = (root / f"{NAME}_image" / "1" / "model.py").read_text()
    assert "from adx_runtime.triton_models import TiledImageModel as TritonPythonModel" in code
    readme = (root / "README.md").read_text()
    assert f"- `{NAME}_image` (encoded image bytes, tiled" in readme and f'"--load-model={NAME}_image", "--load-model={NAME}_graph"]' in readme
    again = write_repository(tiled_bundle, root)
    assert (entry.version, again.version, again.reused) == (1, 1, True)


def test_a_tiled_export_over_an_untiled_one_of_the_same_name_is_refused(tiled_bundle: Path, bundle: Path,
                                                                       tmp_path: Path) -> None:
    """The untiled ensemble and scorer would stay loaded and take the tiled graph as their latest
    version; the other way round, the untiled export replaces every model of the name."""
    root = tmp_path / "models"
    write_repository(bundle, root)
    with pytest.raises(ConfigError, match=f"holds an untiled export of '{NAME}'"):
        write_repository(tiled_bundle, root)
    assert sorted(p.name for p in (root / f"{NAME}_graph").iterdir() if p.is_dir()) == ["1"]
    other = tmp_path / "other"
    write_repository(tiled_bundle, other)
    untiled = write_repository(bundle, other)
    assert untiled.version == 2 and 'platform: "ensemble"' in (other / f"{NAME}_image" / "config.pbtxt").read_text()
    assert "(float input)" in (other / "README.md").read_text()


SERVE = r"""
import json, sys
import numpy as np
from adx_runtime.client import RemoteModel
from adx_runtime.serve import ServeOptions, repository_index, start
bundle, http, grpc, out, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
said = []
server = start([bundle], ServeOptions(http_port=http, grpc_port=grpc, threads=1, startup_timeout=150), said.append)
try:
    startup = server.startup_line()
    index = sorted((m["name"], m["state"]) for m in repository_index(server))
    model = RemoteModel(f"http://127.0.0.1:{http}", server.models[0].name, timeout=60)
    rows = list(model.predict_files(files, keep_maps=True))  # one request per file
    model.close()
finally:
    code = server.stop()
np.savez(out, **{f"map{i}": r.anomaly_map for i, r in enumerate(rows) if r.ok})
print(json.dumps({"startup": startup, "index": index, "exit": code, "said": said,
                  "rows": [[r.image_score, r.normalized_score, r.label, r.error] for r in rows]}))
"""


@pytest.mark.slow
def test_adx_serve_serves_a_tiled_bundle_on_pytritons_tritonserver(tiled_bundle: Path, images: list[bytes],
                                                                   tmp_path: Path) -> None:
    """The real server (Python backend only, so the graph is a Python-backend model too): N_image loads,
    its BLS requests reach N_graph, and what comes back over HTTP is what the runtime computes here."""
    from servekit import free_ports, run_py, serve_python

    files = []
    for i, data in enumerate([images[0], b"not an image", images[1]]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(data)
    http, grpc = free_ports(2)
    result = run_py(serve_python(), SERVE, str(tiled_bundle), str(http), str(grpc), str(tmp_path / "out.npz"),
                    json.dumps([str(f) for f in files]), timeout=240)
    assert result["index"] == [[f"{NAME}_graph", "READY"], [f"{NAME}_image", "READY"]] and result["exit"] == 0
    assert f"ready: {NAME}_image (v1; tiled, encoded images only)" in result["startup"]
    expected = list(Predictor.load(tiled_bundle).predict_files(files, keep_maps=True))
    rows = result["rows"]
    assert [r[3] is None for r in rows] == [True, False, True]
    assert "not a recognised image file" in rows[1][3] and "\n" not in rows[1][3]
    with np.load(tmp_path / "out.npz") as maps:
        for i in (0, 2):
            score, norm, label, _ = rows[i]
            np.testing.assert_allclose([score, norm], [expected[i].image_score, expected[i].normalized_score],
                                       rtol=1e-5, atol=1e-6)
            assert label == expected[i].label
            assert maps[f"map{i}"].shape == expected[i].anomaly_map.shape == ((128, 128) if i == 0 else (80, 112))
            np.testing.assert_allclose(maps[f"map{i}"], expected[i].anomaly_map, rtol=1e-4, atol=1e-5)
