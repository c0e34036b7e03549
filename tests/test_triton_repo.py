"""The Triton model repository of a bundle: configs that Triton's own schema parses, ensembles that
chain, versions per export, and Python-backend models that load on a real tritonserver."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from servekit import CONFIGS_AS_JSON, free_ports, run_py, serve_python

from adx_runtime.bundle import load_manifest, sha256_file
from adx_runtime.errors import BundleError
from adx_runtime.triton_repo import model_configs, model_name, write_repository


@pytest.fixture(scope="module")
def repo(bundle: Path, padim_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton") / "models"
    write_repository(bundle, root)
    write_repository(padim_bundle, root, max_batch=8, delay_us=250, instances=2)
    return root


@pytest.fixture(scope="module")
def parsed(repo: Path) -> dict:
    """Every config.pbtxt parsed by tritonclient's ModelConfig protobuf (Triton's model_config.proto)."""
    return run_py(serve_python(), CONFIGS_AS_JSON, str(repo))


def test_every_config_parses_with_tritons_schema(parsed: dict) -> None:
    names = {f"{base}{part}" for base in ("patchcore_weave", "padim_weave")
             for part in ("", "_image", "_graph", "_score", "_decode")}
    assert set(parsed) == names


def test_graph_model_is_on_the_onnxruntime_backend_with_dynamic_batching(parsed: dict, repo: Path, bundle: Path) -> None:
    g = parsed["patchcore_weave_graph"]
    assert g["platform"] == "onnxruntime_onnx" and g["backend"] == "onnxruntime"
    assert g["max_batch_size"] == 16 and "dynamic_batching" in g
    assert parsed["padim_weave_graph"]["dynamic_batching"]["max_queue_delay_microseconds"] == "250"
    assert g["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "64", "64"]}]
    assert g["output"] == [{"name": "patch_features", "data_type": "TYPE_FP32", "dims": ["64", "80"]}]
    manifest = load_manifest(bundle)
    assert sha256_file(repo / "patchcore_weave_graph" / "1" / "model.onnx") == next(
        f["sha256"] for f in manifest["files"] if f["path"] == "model.onnx")
    padim = parsed["padim_weave_score"]
    assert padim["max_batch_size"] == 8 and padim["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]


def test_manifest_sha256_is_in_every_config(parsed: dict, bundle: Path, padim_bundle: Path) -> None:
    for name, config in parsed.items():
        src = bundle if name.startswith("patchcore") else padim_bundle
        assert config["parameters"]["adx_manifest_sha256"]["string_value"] == sha256_file(src / "manifest.json")


@pytest.mark.parametrize("entry", ["patchcore_weave", "patchcore_weave_image", "padim_weave_image"])
def test_ensembles_chain_decoder_graph_and_scorer(parsed: dict, entry: str) -> None:
    ens = parsed[entry]
    assert ens["platform"] == "ensemble"
    available = {t["name"] for t in ens["input"]}
    for step in ens["ensemble_scheduling"]["step"]:
        model = parsed[step["model_name"]]
        assert set(step["input_map"]) == {t["name"] for t in model["input"]}  # every input of the step is fed
        assert set(step["input_map"].values()) <= available  # from the entry or an earlier step
        assert set(step["output_map"]) <= {t["name"] for t in model["output"]}
        available |= set(step["output_map"].values())
    assert {t["name"] for t in ens["output"]} <= available
    assert [s["model_name"].rsplit("_", 1)[-1] for s in ens["ensemble_scheduling"]["step"]] == (
        ["decode", "graph", "score"] if entry.endswith("_image") else ["graph", "score"])
    assert {t["name"] for t in ens["output"]} == {"image_score", "normalized_score", "label", "anomaly_map"}
    assert ens["max_batch_size"] <= min(parsed[s["model_name"]]["max_batch_size"]
                                        for s in ens["ensemble_scheduling"]["step"])
    assert parsed[entry.replace("_image", "") + "_decode"]["input"][0]["data_type"] == "TYPE_STRING"


def test_python_models_get_a_verifiable_bundle_copy_and_the_runtimes_code(repo: Path) -> None:
    assert load_manifest(repo / "patchcore_weave_score" / "1" / "bundle", verify=True)
    assert not (repo / "patchcore_weave_graph" / "1" / "bundle").exists()  # the onnxruntime backend reads model.onnx
    code = (repo / "patchcore_weave_score" / "1" / "model.py").read_text()
    assert "from adx_runtime.triton_models import ScoreModel as TritonPythonModel" in code
    readme = (repo / "README.md").read_text()
    assert "nvcr.io/nvidia/tritonserver" in readme and "kind: Deployment" in readme and "Tested with" in readme


def test_a_new_export_is_a_new_version_and_the_same_export_is_not(bundle: Path, npz_bundle: Path,
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "models"
    first = write_repository(bundle, root)
    again = write_repository(bundle, root)
    assert (first.version, again.version, again.reused) == (1, 1, True)
    second = write_repository(npz_bundle, root)  # another export of the same model
    assert second.version == 2 and second.name == first.name
    for part in ("", "_image", "_graph", "_score", "_decode"):
        assert sorted(p.name for p in (root / f"patchcore_weave{part}").iterdir() if p.is_dir()) == ["1", "2"]
    config = (root / "patchcore_weave" / "config.pbtxt").read_text()
    assert sha256_file(npz_bundle / "manifest.json") in config


def test_a_tampered_bundle_is_refused_before_export(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "memory_bank.faiss").write_bytes(b"x" * 100)
    with pytest.raises(BundleError, match="failed its checksum"):
        write_repository(bundle_copy, tmp_path / "models")
    assert not (tmp_path / "models" / "patchcore_weave").exists()


def test_model_name_comes_from_the_manifest(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    assert model_name(manifest) == "patchcore_weave"
    configs = model_configs(manifest, "x", manifest_sha256="0" * 64, bundle_dir="bundle", max_batch=1)
    assert "dynamic_batching" not in configs["x_graph"]  # max batch 1: nothing to batch


LOAD = r"""
import json, sys
from adx_runtime.serve import ServeOptions, repository_index, start_repository
server = start_repository(sys.argv[1], ServeOptions(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]),
                                                     startup_timeout=150))
try:
    index = repository_index(server)
    backends = sorted(p.name for p in (server.workdir / "backends").iterdir())
finally:
    code = server.stop()
print(json.dumps({"index": index, "backends": backends, "exit": code}))
"""


@pytest.mark.slow
def test_exported_repository_loads_on_pytritons_tritonserver(repo: Path, tmp_path: Path) -> None:
    """PyTriton's tritonserver has only the Python backend: the scorer and decoder models of the exported
    repository load (each verifies its bundle copy), the onnxruntime graph cannot here, and a model whose
    bundle copy was tampered with after export refuses to load."""
    copy = tmp_path / "models"
    shutil.copytree(repo, copy)
    (copy / "padim_weave_score" / "1" / "bundle" / "gaussian.npz").unlink()
    (copy / "padim_weave_score" / "1" / "bundle" / "gaussian.npz").write_bytes(b"tampered")
    http, grpc = free_ports(2)
    result = run_py(serve_python(), LOAD, str(copy), str(http), str(grpc), timeout=240)
    states = {m["name"]: m for m in result["index"]}
    assert result["backends"] == ["python"] and result["exit"] == 0
    for part in ("patchcore_weave_score", "patchcore_weave_decode", "padim_weave_decode"):
        assert states[part]["state"] == "READY", states[part]
    assert states["padim_weave_score"]["state"] == "UNAVAILABLE"
    assert "failed its checksum" in states["padim_weave_score"]["reason"]
    assert states["patchcore_weave_graph"]["state"] == "UNAVAILABLE"
    assert "onnxruntime" in states["patchcore_weave_graph"]["reason"]


def test_cli_writes_the_repository_both_ways(bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adx_cli.app import app

    runner = CliRunner()
    a = runner.invoke(app, ["triton-repo", str(bundle), "--out", str(tmp_path / "a"), "--max-batch", "4"])
    b = runner.invoke(app, ["export", str(bundle), "--format", "triton", "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert "wrote patchcore_weave version 1" in a.output and "wrote patchcore_weave version 1" in b.output
    assert "max_batch_size: 4" in (tmp_path / "a" / "patchcore_weave_graph" / "config.pbtxt").read_text()
    bad = runner.invoke(app, ["triton-repo", str(tmp_path), "--out", str(tmp_path / "c")])
    assert bad.exit_code == 1 and "no manifest.json" in bad.output and "Traceback" not in bad.output
