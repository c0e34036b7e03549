"""Bundles: what a manifest records, and the bundles the runtime refuses (with the reason)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from adexport.export import export_bundle
from adexport.methods.base import TOLERANCE_APPROXIMATE_INDEX
from adx_runtime.bundle import SCHEMA_VERSION, integrity_section, load_manifest, sha256_file
from adx_runtime.errors import BundleError, ExportError
from adx_runtime.predictor import Predictor

from conftest import TINY


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


def _rewrite(bundle: Path, edit, *, reseal: bool) -> None:
    """Apply ``edit(manifest)``; with ``reseal`` record fresh digests, as an exporter would (a test of a
    check behind the digest), without it leave them as they were (a hand edit)."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    if reseal:
        m["integrity"] = integrity_section(m)
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
    _rewrite(bundle_copy, lambda m: m["scoring"].update(kind="flow"), reseal=True)  # a newer exporter's kind
    with pytest.raises(BundleError, match="scoring kind 'flow'.*not known.*knn, gallery, gaussian, map"):
        Predictor.load(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.load(bundle_copy)


def test_path_escaping_the_bundle_is_refused(bundle_copy: Path) -> None:
    def edit(m):
        m["files"][1]["path"] = "../elsewhere.faiss"
    _rewrite(bundle_copy, edit, reseal=True)
    with pytest.raises(BundleError, match="outside the bundle"):
        Predictor.load(bundle_copy)


# ------------------------------------------------------------------ every opened file is verified
def _flip_byte(path: Path, at: int = 200) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_bank_dropped_from_files_is_not_loaded_unverified(bundle_copy: Path) -> None:
    """Removing the bank's entry from ``files`` used to skip its checksum while the scorer still loaded it."""
    _flip_byte(bundle_copy / "memory_bank.faiss")
    _rewrite(bundle_copy, lambda m: m.update(files=[f for f in m["files"] if f["path"] != "memory_bank.faiss"]),
             reseal=True)
    with pytest.raises(BundleError, match="scoring.bank.file 'memory_bank.faiss' is not listed in the manifest's files"):
        Predictor.load(bundle_copy)


@pytest.mark.parametrize("name,reason", [
    ("../../other/memory_bank.faiss", "outside the bundle folder .absolute path or '..'"),
    ("/etc/passwd", "outside the bundle folder .absolute path or '..'"),
    ("link.faiss", "outside the bundle folder .a symbolic link"),
    ("spare.faiss", "is not listed in the manifest's files"),
])
def test_scoring_file_outside_or_unlisted_is_refused(bundle_copy: Path, tmp_path: Path, name: str, reason: str) -> None:
    outside = tmp_path / "other"
    outside.mkdir()
    (outside / "memory_bank.faiss").write_bytes((bundle_copy / "memory_bank.faiss").read_bytes())
    (bundle_copy / "link.faiss").symlink_to(outside / "memory_bank.faiss")
    (bundle_copy / "spare.faiss").write_bytes((bundle_copy / "memory_bank.faiss").read_bytes())
    _rewrite(bundle_copy, lambda m: m["scoring"]["bank"].update(file=name), reseal=True)
    with pytest.raises(BundleError, match=f"scoring.bank.file '{re.escape(name)}' .*{reason}"):
        Predictor.load(bundle_copy)


def test_listed_file_symlinked_out_of_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.faiss"
    (bundle_copy / "memory_bank.faiss").rename(real)
    (bundle_copy / "memory_bank.faiss").symlink_to(real)  # same bytes, same checksum, outside the folder
    with pytest.raises(BundleError, match="outside the bundle folder .a symbolic link"):
        Predictor.load(bundle_copy)


# ------------------------------------------------------------------ the manifest is protected
@pytest.mark.parametrize("section,edit", [
    ("input", lambda m: m["input"].update(mean=[0.0, 0.0, 0.0])),
    ("postprocess", lambda m: m["postprocess"].update(patch_grid=[16, 64])),
    ("scoring", lambda m: m["scoring"].update(num_neighbors=1)),
    ("graph", lambda m: m["graph"].update(opset=11)),
    ("files", lambda m: m["files"][0].update(kind="x")),
])
def test_hand_edit_of_a_protected_section_is_refused(bundle_copy: Path, section: str, edit) -> None:
    _rewrite(bundle_copy, edit, reseal=False)
    with pytest.raises(BundleError, match=f"protected section {section} changed after export.*adx calibrate"):
        Predictor.load(bundle_copy)


def test_thresholds_stay_editable_and_formatting_does_not_matter(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    m = json.loads(path.read_text())
    m["calibration"]["image"]["threshold"] = 123.0
    path.write_text(json.dumps(m, indent=None, sort_keys=True))  # re-ordered and re-indented
    assert Predictor.load(bundle_copy).image_threshold == 123.0


def test_schema2_manifest_without_integrity_is_refused(bundle_copy: Path) -> None:
    _rewrite(bundle_copy, lambda m: m.pop("integrity"), reseal=False)
    with pytest.raises(BundleError, match="no integrity section.*Re-export the bundle"):
        Predictor.load(bundle_copy)


def _set(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("calibration.image.threshold", "abc"), "calibration.image.threshold must be a finite number, got 'abc'"),
    (_set("calibration.image.threshold", None), "calibration.image.threshold must be a finite number, got None"),
    (_set("files.1", {"kind": "faiss", "sha256": "0" * 64}), r"files\[1\].path must be a file name"),
    (_set("files", {"model.onnx": {}}), "files must be a non-empty list"),
    (_set("graph.inputs", []), "graph.inputs must be a non-empty list"),
    (_set("schema_version", True), "schema version True"),
    (_set("schema_version", 1.0), "schema version 1.0"),
    (_set("calibration", "x"), "calibration.image must be an object"),
    (_set("calibration.image.threshold", 1e300), "calibration.image.threshold must be a finite number"),
    (_set("scoring.feature_output", "abc"), "scoring.feature_output must be one of the graph's outputs .patch_features."),
    (_set("scoring.feature_output", None), "scoring.feature_output must be one of the graph's outputs"),
    (_set("postprocess.patch_grid", []), "postprocess.patch_grid must be null or two positive integers"),
])
def test_malformed_fields_are_one_line_errors(bundle_copy: Path, edit, message: str) -> None:
    _rewrite(bundle_copy, edit, reseal=True)
    with pytest.raises(BundleError, match=message) as info:
        Predictor.load(bundle_copy)
    assert "\n" not in str(info.value)


def test_nan_in_manifest_deep_nesting_and_huge_manifest(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace('"threshold":', '"threshold": NaN, "x":', 1))
    with pytest.raises(BundleError, match="not valid JSON.*NaN is not JSON"):
        Predictor.load(bundle_copy)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests too deeply|not valid JSON"):
        Predictor.load(bundle_copy)
    with open(path, "wb") as f:
        f.truncate(300_000_000)  # sparse: 300 MB without writing them
    with pytest.raises(BundleError, match="300,000,000 bytes, more than a manifest can be"):
        Predictor.load(bundle_copy)


def test_graph_that_does_not_match_the_manifest_is_refused_at_load(bundle_copy: Path) -> None:
    def rename(m):
        m["graph"]["outputs"][0]["name"] = "features"
        m["scoring"]["feature_output"] = "features"
    _rewrite(bundle_copy, rename, reseal=True)
    with pytest.raises(BundleError, match=r"does not match its manifest: output names \['patch_features'\] in the graph"):
        Predictor.load(bundle_copy)


def test_graph_shape_mismatch_is_refused_at_load(bundle_copy: Path) -> None:
    _rewrite(bundle_copy, lambda m: m["graph"]["outputs"][0].update(shape=["batch", 64, 81]), reseal=True)
    with pytest.raises(BundleError, match=r"output 'patch_features' has shape \[None, 64, 80\] in the graph"):
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


# ------------------------------------------------------------------ --overwrite replaces only a bundle
def test_overwrite_refuses_a_folder_that_is_not_a_bundle(model_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(BundleError, match="refusing to overwrite .*not a bundle .it has no manifest.json."):
        export_bundle(model_dir, notes, overwrite=True)
    assert (notes / "todo.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="exists and is not a folder"):
        export_bundle(model_dir, tmp_path / "file", overwrite=True)


def test_overwrite_refuses_a_bundle_holding_other_files(bundle_copy: Path, model_dir: Path) -> None:
    (bundle_copy / "notes.txt").write_text("measurements")
    with pytest.raises(BundleError, match=r"holds files that are not part of the bundle \(notes.txt\)"):
        export_bundle(model_dir, bundle_copy, overwrite=True)
    assert (bundle_copy / "notes.txt").is_file() and (bundle_copy / "manifest.json").is_file()


def test_overwrite_replaces_a_bundle_and_a_failed_swap_loses_nothing(bundle_copy: Path, model_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import adx_runtime.bundle.atomic as bundle_mod

    before = (bundle_copy / "manifest.json").read_bytes()
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        if Path(dst).name in ("bundle", ".bundle.old"):
            calls.append((Path(src).name, Path(dst).name))
        if Path(src).name.endswith(".partial"):  # the new bundle into place, after the old one was moved aside
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(model_dir, bundle_copy, overwrite=True)
    assert calls[0] == ("bundle", ".bundle.old") and calls[-1] == (".bundle.old", "bundle")
    assert (bundle_copy / "manifest.json").read_bytes() == before  # put back
    monkeypatch.setattr(bundle_mod.os, "replace", real_replace)
    export_bundle(model_dir, bundle_copy, overwrite=True)
    assert (bundle_copy / "manifest.json").read_bytes() != before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]  # no .old, no .partial left


def test_train_overwrite_refuses_a_folder_that_is_not_a_model(dataset: Path, tmp_path: Path) -> None:
    from adexport.fit_pipeline import run_training
    from adx_runtime.errors import ConfigError

    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "paper.tex").write_text("draft")
    with pytest.raises(ConfigError, match="refusing to overwrite .*not a fitted model .it has no model.json."):
        run_training(dataset, keep, "weave", "patchcore", shortcuts=dict(TINY), overwrite=True)
    assert (keep / "paper.tex").read_text() == "draft"


# ------------------------------------------------------------------ permissions follow the umask
def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_bundle_and_model_folders_follow_the_umask(fitted, model_dir: Path, tmp_path: Path) -> None:
    from adexport.fitted import save_fitted

    old = os.umask(0o022)
    try:
        out = tmp_path / "b"
        export_bundle(model_dir, out)
        model = save_fitted(fitted, tmp_path / "m")
    finally:
        os.umask(old)
    assert _mode(out) == 0o755 and _mode(out / "manifest.json") == 0o644 and _mode(out / "model.onnx") == 0o644
    assert _mode(model) == 0o755 and _mode(model / "model.json") == 0o644


def test_calibrate_keeps_the_manifest_mode(bundle_copy: Path, dataset: Path) -> None:
    from adx_runtime.recalibrate import recalibrate

    os.chmod(bundle_copy / "manifest.json", 0o644)
    recalibrate(bundle_copy, dataset, "weave", force=True)  # the tiny model's F1 threshold flags every good image
    assert _mode(bundle_copy / "manifest.json") == 0o644


# ------------------------------------------------------------------ concurrent calibrate
def test_two_calibrate_runs_at_once_both_land(bundle_copy: Path, dataset: Path) -> None:
    import threading

    from adx_runtime.recalibrate import recalibrate

    errors: list[BaseException] = []

    def run(mode: str) -> None:
        try:
            recalibrate(bundle_copy, dataset, "weave", mode=mode, fpr=0.0, force=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in ("f1", "fpr")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = json.loads((bundle_copy / "manifest.json").read_text())["calibration"]["history"]
    assert sorted(h["mode"] for h in history if h.get("action") == "calibrate") == ["f1", "fpr"]  # none lost
    Predictor.load(bundle_copy)


def test_calibrate_waits_for_the_lock_then_fails_clearly(bundle_copy: Path, dataset: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import adx_runtime.bundle.locking as bundle_mod
    from adx_runtime.bundle import manifest_lock
    from adx_runtime.recalibrate import recalibrate

    monkeypatch.setattr(bundle_mod, "LOCK_TIMEOUT_S", 0.3)
    before = (bundle_copy / "manifest.json").read_bytes()
    with manifest_lock(bundle_copy):
        with pytest.raises(BundleError, match="another process is changing the manifest.*waited 0.3 s"):
            recalibrate(bundle_copy, dataset, "weave")
    assert (bundle_copy / "manifest.json").read_bytes() == before


# ------------------------------------------------------------------ a killed export
@pytest.mark.parametrize("phase", ["export_onnx", "_write_manifest", "parity_check", "_refuse_if_failed"])
def test_export_stopped_at_any_phase_leaves_no_bundle(model_dir: Path, tmp_path: Path, phase: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import adexport.export as export_mod

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises; not an Exception, so nothing swallows it

    monkeypatch.setattr(export_mod, phase, boom)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        export_bundle(model_dir, out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    export_bundle(model_dir, out)
    Predictor.load(out)


def test_sigkilled_export_is_refused_and_cleaned_up_by_the_next(model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "b"
    script = (
        "import os, signal, sys\n"
        "import adexport.export as e\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "e.parity_check = die\n"
        "e.export_bundle(sys.argv[1], sys.argv[2])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir), str(out)], capture_output=True, timeout=300)
    assert proc.returncode == -9
    partial = [p for p in tmp_path.iterdir()]
    assert len(partial) == 1 and partial[0].name.endswith(".partial") and not out.exists()
    assert (partial[0] / "manifest.json").is_file()  # killed after the manifest was written
    with pytest.raises(BundleError, match="no completed parity check.*Re-export it"):
        Predictor.load(partial[0])
    export_bundle(model_dir, out)  # the dead process's folder is removed
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    Predictor.load(out)


def test_partial_folder_of_a_live_process_is_left_alone(model_dir: Path, tmp_path: Path) -> None:
    live = tmp_path / f".b.pid{os.getpid()}.abcd.partial"
    live.mkdir()
    export_bundle(model_dir, tmp_path / "b")
    assert live.is_dir()


# ------------------------------------------------------------------ tampering matrix: every file, every way
@pytest.mark.parametrize("which", ["faiss", "npz"])
@pytest.mark.parametrize("how", ["flip", "truncate", "append", "symlink_out", "delete"])
def test_every_bundle_file_is_verified_whatever_is_done_to_it(bundle: Path, npz_bundle: Path, tmp_path: Path,
                                                             which: str, how: str) -> None:
    import shutil

    src = bundle if which == "faiss" else npz_bundle
    names = [f["path"] for f in load_manifest(src)["files"]]
    assert len(names) == 2
    for name in names:
        copy = tmp_path / f"{name}.bundle"
        shutil.copytree(src, copy)
        target = copy / name
        if how == "flip":
            _flip_byte(target, at=target.stat().st_size // 2)
        elif how == "truncate":
            os.truncate(target, target.stat().st_size - 1)
        elif how == "append":
            with open(target, "ab") as f:
                f.write(b"\0")
        elif how == "symlink_out":
            outside = tmp_path / f"outside_{name}"
            target.rename(outside)
            target.symlink_to(outside)
        else:
            target.unlink()
        reason = {"symlink_out": "outside the bundle folder", "delete": f"missing '{name}'"}.get(how, "failed its checksum")
        with pytest.raises(BundleError, match=re.escape(reason) if how == "delete" else reason):
            Predictor.load(copy)


def test_tensorrt_engine_folder_holds_only_listed_verified_engines(bundle_copy: Path) -> None:
    """On a CPU box the TensorRT provider is missing, so the engine check is called directly."""
    from adx_runtime.bundle import file_entry
    from adx_runtime.runners import bundle_tensorrt_options as _tensorrt_options

    engines = bundle_copy / "engines"
    engines.mkdir()
    (engines / "model_trt10_sm89.engine").write_bytes(b"engine")
    profile = {"min": "image:1x3x64x64", "opt": "image:8x3x64x64", "max": "image:16x3x64x64"}

    def add_trt(m):
        m["files"].append(file_entry(bundle_copy, "engines/model_trt10_sm89.engine", "tensorrt-engine"))
        m["tensorrt"] = {"engine_dir": "engines", "engine_prefix": "model_trt10_sm89", "fp16": False, "profile": profile}
    _rewrite(bundle_copy, add_trt, reseal=True)
    manifest = load_manifest(bundle_copy)
    assert _tensorrt_options(bundle_copy, manifest)["trt_engine_cache_path"] == str(engines)
    (engines / "dropped.engine").write_bytes(b"other")
    with pytest.raises(BundleError, match="'engines/dropped.engine' is in the TensorRT engine folder but not listed"):
        _tensorrt_options(bundle_copy, manifest)
    (engines / "dropped.engine").unlink()
    (engines / "model_trt10_sm89.engine").write_bytes(b"enginf")
    with pytest.raises(BundleError, match="failed its checksum"):
        _tensorrt_options(bundle_copy, manifest)
    _rewrite(bundle_copy, lambda m: m["tensorrt"].update(fp16=True), reseal=False)
    with pytest.raises(BundleError, match="protected section tensorrt changed"):
        load_manifest(bundle_copy, verify=False)
    _rewrite(bundle_copy, lambda m: m.pop("tensorrt"), reseal=False)
    with pytest.raises(BundleError, match="protected section tensorrt changed"):
        load_manifest(bundle_copy, verify=False)
