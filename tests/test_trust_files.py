"""Issue 16, items 6, 12 and 17a: ``--overwrite`` never deletes what it did not write and verify, a
stale ``.partial`` cleanup never removes what it did not create, and every declared shape (npz
members, the patch grid) is bounded by the file's bytes and the input size before anything is
allocated. Each check behind the manifest's digests is tested with digests recomputed, as a
careful attacker (or a broken exporter) would."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from adexport.export import export_bundle
from adx_runtime.bundle import atomic_dir, clean_stale_partials, integrity_section, manifest_lock, sha256_file
from adx_runtime.errors import BundleError
from adx_runtime.predictor import Predictor

from conftest import CATEGORY, TINY


# ------------------------------------------------------------------ helpers
def _reseal(bundle: Path, edit=None) -> None:
    """Apply ``edit(manifest)``, then record every file's sha256 and size and the protected sections'
    digests afresh, so only the checks behind the digests can catch what was done."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    if edit is not None:
        edit(m)
    for entry in m["files"]:
        entry["sha256"] = sha256_file(bundle / entry["path"])
        entry["bytes"] = (bundle / entry["path"]).stat().st_size
    m["integrity"] = integrity_section(m)
    path.write_text(json.dumps(m))


def _npy(shape: tuple[int, ...], descr: str = "<f4", payload: bytes = b"") -> bytes:
    """A ``.npy`` member whose header declares ``shape`` but which holds only ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _write_npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> None:
    path.unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)


def _npz_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename[: -len(".npy")]: zf.read(info) for info in zf.infolist()}


def _copy(src: Path, tmp_path: Path, name: str = "bundle") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ item 6: --overwrite
@pytest.mark.parametrize("complete", [False, True])
def test_overwrite_refuses_a_fake_manifest_and_deletes_nothing(model_dir: Path, tmp_path: Path, complete: bool) -> None:
    """The issue's case: a minimal manifest naming one file under important_dir/ made the whole
    folder (and engines/my_notes.txt) count as a bundle, and --overwrite deleted them. ``complete``:
    the same manifest with a schema version and x's true sha256, so the tree walk must refuse it."""
    target = tmp_path / "results"
    (target / "important_dir").mkdir(parents=True)
    (target / "engines").mkdir()
    (target / "important_dir" / "x").write_text("measurements")
    (target / "important_dir" / "thesis.tex").write_text("draft")
    (target / "engines" / "my_notes.txt").write_text("notes")
    entry: dict = {"path": "important_dir/x"}
    fake: dict = {"format": "adexport-bundle", "files": [entry]}
    if complete:
        fake["schema_version"] = 2
        entry["sha256"] = sha256_file(target / "important_dir" / "x")
    (target / "manifest.json").write_text(json.dumps(fake))
    before = _tree(target)
    reason = r"\(engines/\)" if complete else r"no schema_version"
    with pytest.raises(BundleError, match=rf"refusing to overwrite .*results.*{reason}.*this tool wrote.*"
                                          r"Remove it yourself or choose another --out"):
        export_bundle(model_dir, target, overwrite=True)
    assert _tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no .partial or .old left either


def test_overwrite_names_the_first_unexpected_file_even_in_engines(bundle: Path, model_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A TensorRT-style bundle: engines/ holds a listed engine, and the user's notes beside it."""
    copy = _copy(bundle, tmp_path)
    (copy / "engines").mkdir()
    (copy / "engines" / "model_trt10_sm90.engine").write_bytes(b"engine")
    _reseal(copy, lambda m: m["files"].append({"path": "engines/model_trt10_sm90.engine", "kind": "tensorrt-engine"}))
    (copy / "engines" / "my_notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match=r"holds files that are not part of the bundle \(engines/my_notes.txt\)"):
        export_bundle(model_dir, copy, overwrite=True)
    assert (copy / "engines" / "my_notes.txt").read_text() == "keep me"
    assert (copy / "manifest.json").is_file() and (copy / "engines" / "model_trt10_sm90.engine").is_file()
    (copy / "engines" / "my_notes.txt").unlink()
    export_bundle(model_dir, copy, overwrite=True)  # without the notes it is export's own: replaced
    assert not (copy / "engines").exists()


def test_overwrite_refuses_a_listed_file_that_changed(bundle: Path, model_dir: Path, tmp_path: Path) -> None:
    """A file listed in the manifest but no longer the one export wrote is the user's now."""
    copy = _copy(bundle, tmp_path)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"user data")
    before = _tree(copy)
    with pytest.raises(BundleError, match=r"model.onnx changed since export \(sha256"):
        export_bundle(model_dir, copy, overwrite=True)
    assert _tree(copy) == before


def test_overwrite_refuses_symlinks_and_empty_folders(bundle: Path, model_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("precious")
    copy = _copy(bundle, tmp_path)
    (copy / "link").symlink_to(outside)
    with pytest.raises(BundleError, match=r"symbolic link, which export never writes \(link\)"):
        export_bundle(model_dir, copy, overwrite=True)
    assert (outside / "data.txt").read_text() == "precious" and (copy / "link").is_symlink()
    (copy / "link").unlink()
    (copy / "engines" / "mine").mkdir(parents=True)
    with pytest.raises(BundleError, match=r"folder that is not part of the bundle \(engines/\)"):
        export_bundle(model_dir, copy, overwrite=True)
    assert (copy / "engines" / "mine").is_dir()


def test_overwrite_replaces_an_untouched_bundle_even_after_calibrate_locked_it(bundle: Path, model_dir: Path,
                                                                               tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    with manifest_lock(copy):  # what `adx calibrate` leaves behind: an empty .manifest.lock
        pass
    assert (copy / ".manifest.lock").is_file()
    old = (copy / "manifest.json").read_bytes()
    export_bundle(model_dir, copy, overwrite=True)
    assert (copy / "manifest.json").read_bytes() != old  # a new export (new created_at, parity)
    assert sorted(p.name for p in copy.iterdir()) == ["manifest.json", "memory_bank.faiss", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    Predictor.load(copy)


def test_overwrite_recheck_at_the_swap_keeps_a_file_added_during_export(bundle: Path, tmp_path: Path) -> None:
    """The folder is verified again just before it is swapped out: a file the user dropped in
    while the export ran is not deleted with it."""
    copy = _copy(bundle, tmp_path)
    with pytest.raises(BundleError, match=r"not part of the bundle \(late.txt\)"):
        with atomic_dir(copy, overwrite=True) as tmp:
            (tmp / "manifest.json").write_text("{}")
            (copy / "late.txt").write_text("added while exporting")
    assert (copy / "late.txt").read_text() == "added while exporting" and (copy / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_stale_partial_cleanup_removes_only_folders_it_created(tmp_path: Path) -> None:
    """A folder that merely looks like a dead process's partial export (the user's, or copied from
    another machine) is not removed; one atomic_dir made and its process left behind is."""
    dest = tmp_path / "b"
    lookalike = tmp_path / f".b.pid{_dead_pid()}.abcd1234.partial"
    lookalike.mkdir()
    (lookalike / "work.txt").write_text("mine")
    assert clean_stale_partials(dest) == []
    assert (lookalike / "work.txt").read_text() == "mine"


def test_partial_of_a_killed_export_is_still_cleaned_up(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    script = (
        "import os, signal, sys\n"
        "from adx_runtime.bundle import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'model.onnx').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, timeout=120)
    assert proc.returncode == -9
    (partial,) = tmp_path.iterdir()
    assert partial.name.endswith(".partial")
    assert clean_stale_partials(out) == [partial]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ item 12: declared shapes are bounded
def _bank_file(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["scoring"]["bank"]["file"]


def test_npz_bank_declaring_a_huge_shape_is_refused_before_allocating(npz_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(npz_bundle, tmp_path)
    name = _bank_file(copy)
    _write_npz(copy / name, {"memory_bank": _npy((4_000_000, 100_000), payload=b"\0" * 64)})
    _reseal(copy)
    with pytest.raises(BundleError, match=rf"{name}.*'memory_bank' declares shape \(4000000, 100000\) float32 "
                                          r"\(1,600,000,000,000 bytes\) but holds 64 bytes"):
        Predictor.load(copy)


def test_npz_member_whose_zip_size_is_a_lie_is_refused(npz_bundle: Path, tmp_path: Path) -> None:
    """A stored (uncompressed) member must hold exactly what the zip says it holds."""
    copy = _copy(npz_bundle, tmp_path)
    name = _bank_file(copy)
    members = _npz_members(copy / name)
    _write_npz(copy / name, members)
    data = bytearray((copy / name).read_bytes())
    # Patch the uncompressed size in the central directory (offset 24 of the 'PK\1\2' record).
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24: cd + 28] = (2**32 - 2).to_bytes(4, "little")
    (copy / name).write_bytes(bytes(data))
    _reseal(copy)
    with pytest.raises(BundleError, match=rf"{name}.*'memory_bank'.*(size|bytes)"):
        Predictor.load(copy)


def test_gaussian_statistics_declaring_a_huge_shape_are_refused(padim_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(padim_bundle, tmp_path)
    name = json.loads((copy / "manifest.json").read_text())["scoring"]["gaussian"]["file"]
    members = _npz_members(copy / name)
    members["chol_packed"] = _npy((3_000_000, 500_000), payload=b"\0" * 16)
    _write_npz(copy / name, members)
    _reseal(copy)
    with pytest.raises(BundleError, match=rf"{name}.*'chol_packed' declares shape \(3000000, 500000\)"):
        Predictor.load(copy)


@pytest.fixture(scope="module")
def spade_bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adexport.fit_pipeline import train

    fitted = train(dataset, CATEGORY, "spade", options={**TINY, "k": 3}, holdout=0.25)
    out = tmp_path_factory.mktemp("bundles") / "spade"
    export_bundle(fitted, out)
    return out


def test_gallery_maps_declaring_a_huge_shape_are_refused(spade_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(spade_bundle, tmp_path)
    name = json.loads((copy / "manifest.json").read_text())["scoring"]["gallery"]["maps_file"]
    _write_npz(copy / name, {"feature_maps": _npy((1_000_000, 4096, 512), "<f8", payload=b"\0" * 8)})
    _reseal(copy)
    with pytest.raises(BundleError, match=rf"{name}.*'feature_maps' declares shape \(1000000, 4096, 512\) float64"):
        Predictor.load(copy)


def test_patch_grid_larger_than_the_input_is_refused(bundle: Path, tmp_path: Path) -> None:
    """``patch_grid = [1e9, 1e9]`` made the upsampling matrices 477 GiB."""
    copy = _copy(bundle, tmp_path)
    _reseal(copy, lambda m: m["postprocess"].update(patch_grid=[10**9, 10**9]))
    with pytest.raises(BundleError, match=r"patch_grid \[1000000000, 1000000000\].*input size \[64, 64\]"):
        Predictor.load(copy)


def test_patch_grid_that_does_not_match_the_graph_is_refused_at_load(bundle: Path, tmp_path: Path) -> None:
    """Within the input size but not what the graph outputs (8 x 8 patches): refused when the
    bundle is opened, not at the first image."""
    copy = _copy(bundle, tmp_path)
    _reseal(copy, lambda m: m["postprocess"].update(patch_grid=[16, 16]))
    with pytest.raises(BundleError, match=r"patch_grid \[16, 16\].*'patch_features'.*\['batch', 64, 80\]"):
        Predictor.load(copy)


# ------------------------------------------------------------------ item 17a: pickled npz data
def test_npz_holding_pickled_objects_is_refused_for_that_reason(npz_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(npz_bundle, tmp_path)
    name = _bank_file(copy)
    (copy / name).unlink()
    np.savez(copy / name, memory_bank=np.array([{"a": 1}, None], dtype=object))
    _reseal(copy)
    with pytest.raises(BundleError, match=rf"{name}.*'memory_bank' holds pickled Python objects.*never") as err:
        Predictor.load(copy)
    assert "manifest" not in str(err.value)
