"""Issue 16, bundle reading: no way around the integrity check, no trusted stale checksum, no
traceback from a non-finite number, no symbolic link followed out of the bundle.

1. a schema-2 bundle relabelled as schema 1 (adexport 0.1.0, no integrity digest) is refused;
   a schema-1 manifest is read only in the shape 0.1.0 wrote, with the copies 0.1.0 wrote of its
   score-deciding fields in agreement;
3. a bank file edited in place with its size and mtime restored is refused on the next load in
   the same process;
8. ``1e999`` in the manifest is a one-line error naming the field (infer, triton-repo);
14. a symlinked ``manifest.json`` or ``.manifest.lock`` is refused, and nothing is created
    outside the bundle.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from adx_cli.app import app
from adx_runtime.bundle import LOCK_FILE, MANIFEST, load_manifest, manifest_lock, read_manifest
from adx_runtime.errors import BundleError
from adx_runtime.predictor import Predictor
from adx_runtime.triton_repo import write_repository

from conftest import CATEGORY

FIXTURES = Path(__file__).parent / "fixtures"
IMAGE = FIXTURES / "schema1_patchcore" / "images"
runner = CliRunner()


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text(encoding="utf-8"))


def _write(root: Path, manifest: dict[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _image() -> Path:
    return sorted(IMAGE.iterdir())[0]


def _cli(*args: Any):
    # catch_exceptions=False: an exception the CLI does not turn into a message fails the test.
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


# ------------------------------------------------------------------ 1. schema downgrade
def _downgrade(m: dict[str, Any]) -> dict[str, Any]:
    """The probe's recipe: schema 1, no integrity, patch_grid and blur_sigma back in scoring."""
    m = copy.deepcopy(m)
    m["schema_version"] = 1
    del m["integrity"]
    post = m.pop("postprocess")
    m["scoring"].pop("kind")
    m["scoring"]["patch_grid"] = post["patch_grid"]
    m["scoring"]["blur_sigma"] = post["smoothing"]["sigma"]
    return m


def _downgrade_fully(m: dict[str, Any]) -> dict[str, Any]:
    """Every key 0.1.0 did not write removed as well, so the manifest has 0.1.0's shape exactly."""
    m = _downgrade(m)
    m["input"].pop("channels", None)
    m["scoring"]["bank"].pop("search_params", None)
    for entry in m["files"]:
        entry.pop("index_type", None)
    return m


def test_probe_downgrade_with_edited_mean_is_refused_by_load_and_triton_repo(bundle_copy: Path,
                                                                              tmp_path: Path) -> None:
    m = _downgrade(_manifest(bundle_copy))
    m["input"]["mean"] = [0.3, 0.3, 0.3]
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match=r"schema 1.*adexport 0\.1\.0 never wrote"):
        load_manifest(bundle_copy)
    with pytest.raises(BundleError, match="schema 1"):
        write_repository(bundle_copy, tmp_path / "repo")
    assert not (tmp_path / "repo" / "patchcore_weave").exists()
    _one_line_error(_cli("triton-repo", bundle_copy, "--out", tmp_path / "repo2"), "schema 1")
    _one_line_error(_cli("infer", bundle_copy, _image()), "schema 1")


def test_downgrade_in_exact_0_1_0_shape_with_edited_mean_is_refused(bundle_copy: Path) -> None:
    """With every schema-2 key removed, the edited mean no longer matches backbone.mean, which
    0.1.0 always wrote equal to it."""
    m = _downgrade_fully(_manifest(bundle_copy))
    _write(bundle_copy, m)
    assert read_manifest(bundle_copy)["upgraded_from_schema"] == 1  # the unedited shape itself reads
    m["input"]["mean"] = [0.3, 0.3, 0.3]
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match=r"input\.mean .* backbone\.mean"):
        load_manifest(bundle_copy)


def _fixture_copy(tmp_path: Path, method: str = "patchcore") -> Path:
    dst = tmp_path / f"s1_{method}"
    shutil.copytree(FIXTURES / f"schema1_{method}" / "bundle", dst)
    return dst


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "integrity kept": (lambda m: m.__setitem__("integrity", {"sections": {}}), "integrity"),
    "postprocess added": (lambda m: m.__setitem__("postprocess", {"map": True}), "postprocess"),
    "quantization added": (lambda m: m.__setitem__("quantization", {}), "quantization"),
    "scoring.kind added": (lambda m: m["scoring"].__setitem__("kind", "knn"), "scoring.kind"),
    "input.channels added": (lambda m: m["input"].__setitem__("channels", 3), "input.channels"),
    "grey input": (lambda m: m["input"].__setitem__("colour", "L"), "input.colour"),
    "bank search params": (lambda m: m["scoring"]["bank"].__setitem__("search_params", {"nprobe": 1}),
                           "scoring.bank.search_params"),
    "newer version": (lambda m: m.__setitem__("adexport_version", "0.2.0"), "adexport_version"),
    "extra file": (lambda m: m["files"].append({**m["files"][1], "path": "other.faiss"}), "files"),
    "edited mean": (lambda m: m["input"].__setitem__("mean", [0.4, 0.456, 0.406]), "input.mean"),
    "edited std": (lambda m: m["input"].__setitem__("std", [0.5, 0.5, 0.5]), "input.std"),
    "edited scale": (lambda m: m["input"].__setitem__("scale", 0.005), "input.scale"),
    "edited interpolation": (lambda m: m["input"].__setitem__("interpolation", "nearest"), "input.interpolation"),
    "edited sigma": (lambda m: m["scoring"].__setitem__("blur_sigma", 1.0), "scoring.blur_sigma"),
    "edited neighbours": (lambda m: m["scoring"].__setitem__("num_neighbors", 1), "scoring.num_neighbors"),
    "edited grid": (lambda m: m["scoring"].__setitem__("patch_grid", [2, 8]), "scoring.patch_grid"),
    "edited bank file": (lambda m: m["scoring"]["bank"].__setitem__("file", "model.onnx"), "scoring.bank.file"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_schema1_manifest_is_read_only_as_0_1_0_wrote_it(tmp_path: Path, name: str) -> None:
    edit, field = EDITS[name]
    root = _fixture_copy(tmp_path)
    m = _manifest(root)
    edit(m)
    _write(root, m)
    with pytest.raises(BundleError, match=rf"schema 1.*{field.replace('.', '[.]')}") as info:
        read_manifest(root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["padim", "spade"])
@pytest.mark.parametrize("field", ["scoring.blur_sigma", "input.mean"])
def test_schema1_padim_and_spade_edits_are_refused(tmp_path: Path, method: str, field: str) -> None:
    root = _fixture_copy(tmp_path, method)
    m = _manifest(root)
    section, key = field.split(".")
    m[section][key] = 2.0 if key == "blur_sigma" else [0.1, 0.2, 0.3]
    _write(root, m)
    with pytest.raises(BundleError, match=rf"schema 1.*{field.replace('.', '[.]')}"):
        read_manifest(root)


def _npz_bank(m: dict[str, Any]) -> None:
    """What 0.1.0's ``--bank npz`` wrote for PatchCore."""
    m["scoring"]["bank"].update(file="memory_bank.npz", format="npz", index_type="numpy-exact", exact=True)
    m["files"][1] = {"path": "memory_bank.npz", "kind": "npz", "bytes": 3700, "sha256": "0" * 64,
                     "arrays": {"memory_bank": {"shape": [11, 80], "dtype": "float32"}}}


def _tensorrt(m: dict[str, Any]) -> None:
    """What 0.1.0's ``--format tensorrt`` added."""
    m["graph"]["max_batch"] = 16
    m["tensorrt"] = {"engine_dir": "engines", "engine_prefix": "model_trt10.3_sm89", "tensorrt_version": "10.3",
                     "compute_capability": "89", "fp16": False,
                     "profile": {"min": "image:1x3x32x32", "opt": "image:8x3x32x32", "max": "image:16x3x32x32"},
                     "parity": copy.deepcopy(m["parity"])}
    m["files"].append({"path": "engines/model_trt10.3_sm89.engine", "kind": "tensorrt-engine", "bytes": 10,
                       "sha256": "1" * 64, "tensorrt_version": "10.3", "compute_capability": "89"})


def _ivf(m: dict[str, Any]) -> None:
    m["scoring"]["bank"].update(index_type="IVF4,Flat", exact=False)


def _recalibrated(m: dict[str, Any]) -> None:
    """``adx calibrate`` rewrites only calibration; its keys are not checked against 0.1.0's."""
    m["calibration"]["image"]["threshold"] = 0.07
    m["calibration"]["history"].append({"at": "2027-01-01T00:00:00+00:00", "action": "calibrate", "mode": "f1"})


@pytest.mark.parametrize("variant", [_npz_bank, _tensorrt, _ivf, _recalibrated])
def test_schema1_variants_0_1_0_could_write_are_still_read(tmp_path: Path, variant: Callable) -> None:
    root = _fixture_copy(tmp_path)
    m = _manifest(root)
    variant(m)
    _write(root, m)
    assert read_manifest(root)["upgraded_from_schema"] == 1


@pytest.mark.parametrize("method", ["patchcore", "padim", "spade"])
def test_schema1_fixtures_still_verify(method: str) -> None:
    m = load_manifest(FIXTURES / f"schema1_{method}" / "bundle")
    assert m["upgraded_from_schema"] == 1 and m["postprocess"]["smoothing"] == {"type": "gaussian", "sigma": 4.0}


# ------------------------------------------------------------------ 3. no stale checksum cache
def test_bank_edited_in_place_with_size_and_mtime_restored_is_refused_on_reload(bundle_copy: Path) -> None:
    Predictor.load(bundle_copy)
    bank = bundle_copy / "memory_bank.faiss"
    st = os.stat(bank)
    with open(bank, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        last = f.read(4)
        f.seek(-4, os.SEEK_END)
        f.write(bytes(b ^ 0x40 for b in last))
    os.utime(bank, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(bank)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    with pytest.raises(BundleError, match="memory_bank.faiss.*failed its checksum"):
        Predictor.load(bundle_copy)


# ------------------------------------------------------------------ 8. non-finite numbers
@pytest.mark.parametrize("literal", ["1e999", "-1e999"])
def test_infinite_number_in_a_protected_section_is_a_one_line_error(bundle_copy: Path, tmp_path: Path,
                                                                    literal: str) -> None:
    text = (bundle_copy / MANIFEST).read_text(encoding="utf-8")
    m = json.loads(text)
    old = json.dumps(m["input"]["mean"][0])
    text = text.replace(f'"mean": [\n      {old},', f'"mean": [\n      {literal},', 1)
    assert literal in text
    (bundle_copy / MANIFEST).write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match=r"input\.mean\[0\].*not a finite number"):
        read_manifest(bundle_copy)
    _one_line_error(_cli("infer", bundle_copy, _image()), "input.mean[0]")
    _one_line_error(_cli("triton-repo", bundle_copy, "--out", tmp_path / "repo"), "input.mean[0]")


def test_infinite_number_outside_protected_sections_is_refused_too(bundle_copy: Path) -> None:
    text = (bundle_copy / MANIFEST).read_text(encoding="utf-8")
    text = text.replace('"training": {', '"training": {\n    "huge": -1e999,', 1)
    (bundle_copy / MANIFEST).write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match=r"training\.huge.*not a finite number"):
        read_manifest(bundle_copy)


# ------------------------------------------------------------------ 14. symbolic links
def test_symlinked_manifest_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle_copy / MANIFEST, outside)
    (bundle_copy / MANIFEST).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_manifest(bundle_copy)
    _one_line_error(_cli("infer", bundle_copy, _image()), "symbolic link")
    _one_line_error(_cli("triton-repo", bundle_copy, "--out", tmp_path / "repo"), "symbolic link")


def test_symlinked_manifest_inside_the_bundle_is_refused_too(bundle_copy: Path) -> None:
    shutil.move(bundle_copy / MANIFEST, bundle_copy / "real.json")
    (bundle_copy / MANIFEST).symlink_to("real.json")
    with pytest.raises(BundleError, match="symbolic link"):
        read_manifest(bundle_copy)


def test_dangling_lock_symlink_creates_nothing_outside(bundle_copy: Path, tmp_path: Path) -> None:
    target = tmp_path / "outside" / "created-by-lock"
    target.parent.mkdir()
    (bundle_copy / LOCK_FILE).symlink_to(target)
    with pytest.raises(BundleError, match=r"\.manifest\.lock.*symbolic link"):
        with manifest_lock(bundle_copy):
            pass
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_calibrate_with_a_lock_symlink_fails_without_touching_outside(bundle_copy: Path, dataset: Path,
                                                                     tmp_path: Path) -> None:
    target = tmp_path / "outside.lock"
    (bundle_copy / LOCK_FILE).symlink_to(target)
    before = (bundle_copy / MANIFEST).read_bytes()
    result = _cli("calibrate", bundle_copy, dataset, "--category", CATEGORY, "--mode", "fpr", "--fpr", "0.25",
                  "--quiet")
    _one_line_error(result, "symbolic link")
    assert not target.exists()
    assert (bundle_copy / MANIFEST).read_bytes() == before
