"""Bundles written by adexport 0.1.0 (manifest schema 1) still load and score as they did.

The fixtures under ``tests/fixtures/schema1_*`` were exported by that release, with the image
scores and maps it produced; the schema-2 runtime reads them by upgrading the manifest in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adx_runtime.bundle import load_manifest
from adx_runtime.errors import BundleError
from adx_runtime.predictor import Predictor

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "schema1_patchcore" / "images"


@pytest.mark.parametrize("method,kind", [("patchcore", "knn"), ("padim", "gaussian"), ("spade", "gallery")])
def test_schema1_bundle_scores_identically(method: str, kind: str) -> None:
    root = FIXTURES / f"schema1_{method}"
    on_disk = json.loads((root / "bundle" / "manifest.json").read_text())
    assert on_disk["schema_version"] == 1 and "kind" not in on_disk["scoring"] and "postprocess" not in on_disk
    expected = json.loads((root / "expected.json").read_text())
    predictor = Predictor.load(root / "bundle")
    assert predictor.manifest["scoring"]["kind"] == kind and predictor.manifest["upgraded_from_schema"] == 1
    got = predictor.predict([IMAGES / n for n in expected["images"]])
    np.testing.assert_allclose(got.image_scores, expected["image_scores"], rtol=1e-6, atol=0)
    # Normalised scores are (raw - threshold) / (2 scale): the raw scores' float32 rounding (rtol 1e-6 of a
    # raw score, which differs between ONNX Runtime releases) comes back divided by the scale, not by the
    # score, so it is compared on its absolute [0, 1] scale.
    np.testing.assert_allclose(got.normalized_scores, expected["normalized_scores"], rtol=0, atol=1e-5)
    assert got.labels.tolist() == expected["labels"]
    # Maps to a few float32 ulps: a blurred map sums hundreds of products, and their rounding moves with the
    # ONNX Runtime release (1.32 differs from the one that wrote the fixtures by up to 1.1e-6 relative).
    np.testing.assert_allclose(got.anomaly_maps, np.load(root / "expected_maps.npy"), rtol=1e-5, atol=1e-9)


def test_schema1_bundle_is_still_checksummed(tmp_path: Path) -> None:
    dst = tmp_path / "b"
    shutil.copytree(FIXTURES / "schema1_patchcore" / "bundle", dst)
    with open(dst / "memory_bank.faiss", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(BundleError, match="failed its checksum"):
        load_manifest(dst)


def test_schema1_bundle_that_cannot_be_upgraded_says_how_to_reexport(tmp_path: Path) -> None:
    dst = tmp_path / "b"
    shutil.copytree(FIXTURES / "schema1_patchcore" / "bundle", dst)
    m = json.loads((dst / "manifest.json").read_text())
    del m["scoring"]["blur_sigma"]
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"schema 1.*re-export it.*adx export"):
        load_manifest(dst)
