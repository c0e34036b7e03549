"""Bundles: what a manifest records, and the bundles the runtime refuses (with the reason)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adexport.export import export_bundle
from adexport.methods.base import TOLERANCE_APPROXIMATE_INDEX
from adx_runtime.bundle import SCHEMA_VERSION, load_manifest, sha256_file
from adx_runtime.errors import BundleError, ExportError
from adx_runtime.predictor import Predictor


def test_manifest_records_the_contract(bundle: Path) -> None:
    m = load_manifest(bundle)
    assert m["schema_version"] == SCHEMA_VERSION and m["method"] == "patchcore"
    assert m["input"]["input_size"] == [64, 64] and m["input"]["interpolation"] == "bilinear"
    assert m["graph"]["inputs"][0]["shape"][0] == "batch"  # dynamic batch axis
    assert m["graph"]["outputs"][0] == {"name": "patch_features", "shape": ["batch", 64, 80], "dtype": "float32"}
    files = {f["path"]: f for f in m["files"]}
    assert set(files) == {"model.onnx", "memory_bank.faiss"}
    assert files["model.onnx"]["sha256"] == sha256_file(bundle / "model.onnx")
    bank = m["scoring"]["bank"]
    assert files["memory_bank.faiss"]["shape"] == [bank["size"], bank["dim"]] and bank["exact"]
    assert m["parity"]["passed"] and m["parity"]["n_images"] == 8
    cal = m["calibration"]
    assert cal["image"]["threshold"] > cal["image"]["stats"]["median"] and cal["holdout_images"] == 4
    assert "torch" in m["provenance"]
    assert not list(bundle.parent.glob(".*partial"))  # no temporary folder left behind


def test_npz_bundle_has_no_faiss_file(npz_bundle: Path) -> None:
    m = load_manifest(npz_bundle)
    assert {f["path"] for f in m["files"]} == {"model.onnx", "memory_bank.npz"}
    assert m["scoring"]["bank"]["format"] == "npz"


def test_tampered_file_fails_its_checksum(bundle_copy: Path) -> None:
    with open(bundle_copy / "memory_bank.faiss", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="'memory_bank.faiss'.*failed its checksum"):
        Predictor.load(bundle_copy)


def _edit_manifest(bundle: Path, **changes) -> None:
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("version,hint", [(SCHEMA_VERSION + 1, "upgrade adexport"), (0, "re-export")])
def test_wrong_schema_version_is_refused(bundle_copy: Path, version: int, hint: str) -> None:
    _edit_manifest(bundle_copy, schema_version=version)
    with pytest.raises(BundleError, match=f"schema version {version}.*reads versions 1, {SCHEMA_VERSION}.*{hint}"):
        Predictor.load(bundle_copy)


def test_missing_file_and_missing_manifest(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing 'model.onnx'"):
        Predictor.load(bundle_copy)
    with pytest.raises(BundleError, match="has no manifest.json"):
        Predictor.load(tmp_path)


def test_runtime_dispatches_on_scoring_kind_not_method_name(bundle_copy: Path) -> None:
    before = Predictor.load(bundle_copy).predict_tensor(np.zeros((1, 3, 64, 64), np.float32)).image_scores
    _edit_manifest(bundle_copy, method="some_new_method")  # a method this runtime never heard of
    after = Predictor.load(bundle_copy).predict_tensor(np.zeros((1, 3, 64, 64), np.float32)).image_scores
    np.testing.assert_array_equal(before, after)


def test_garbled_manifest_and_unknown_scoring_kind(bundle_copy: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["scoring"]["kind"] = "flow"
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="scoring kind 'flow'.*not known.*knn, gallery, gaussian, map"):
        Predictor.load(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.load(bundle_copy)


def test_path_escaping_the_bundle_is_refused(bundle_copy: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"][1]["path"] = "../elsewhere.faiss"
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle"):
        Predictor.load(bundle_copy)


def test_failed_parity_leaves_nothing_that_looks_like_a_bundle(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match="(?s)parity check failed.*No bundle was written"):
        export_bundle(model_dir, out, tolerance={"features": 0.0, "image_scores": 0.0, "maps": 0.0})
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_kept_unless_overwrite(bundle: Path, model_dir: Path) -> None:
    before = sha256_file(bundle / "manifest.json")
    with pytest.raises(BundleError, match="already exists.*--overwrite"):
        export_bundle(model_dir, bundle)
    assert sha256_file(bundle / "manifest.json") == before


def test_approximate_index_gets_the_looser_tolerance(model_dir: Path, tmp_path: Path) -> None:
    m = export_bundle(model_dir, tmp_path / "hnsw", index_type="HNSW16")
    assert not m["scoring"]["bank"]["exact"]
    assert m["parity"]["tolerance"] == TOLERANCE_APPROXIMATE_INDEX and m["parity"]["passed"]
    approx = m["scoring"]["bank"]["approximation"]  # the index's own gate, measured on held-out patches
    assert approx["passed"] and approx["recall_at_1"] >= 0.5 and approx["queries"] == 4 * 64
