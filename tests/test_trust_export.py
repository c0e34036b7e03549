"""Issue 16 (trust), export side: FAISS search parameters checked against what the index can use
(item 2), the parity tolerance the user passes applied as given (item 15), and the calibration of a
bundle replaced by ``adx export --overwrite`` kept or dropped, and said which (item 5c)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import list_test_images

from adexport.export import export_bundle, format_export_summary
from adx_cli.app import app
from adx_runtime.bundle import MANIFEST, integrity_section, load_manifest
from adx_runtime.errors import BundleError, ConfigError, ExportError
from adx_runtime.knn import EF_SEARCH_CAP
from adx_runtime.predictor import Predictor

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------- item 2: search parameters
def _approximate_bundle(model_dir: Path, out: Path, index_type: str, search_params: dict[str, int]) -> Path:
    export_bundle(model_dir, out, index_type=index_type, search_params=search_params, accept_approximate=True,
                  tolerance={"image_scores": 1.0, "maps": 1.0})
    return out


@pytest.fixture(scope="module")
def ivf_bundle(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _approximate_bundle(model_dir, tmp_path_factory.mktemp("trust") / "ivf", "IVF4,Flat", {"nprobe": 2})


@pytest.fixture(scope="module")
def hnsw_bundle(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _approximate_bundle(model_dir, tmp_path_factory.mktemp("trust") / "hnsw", "HNSW16", {"efSearch": 32})


@pytest.mark.parametrize("value", [5, 0, -1, 2**31, 2**63])
def test_nprobe_outside_1_to_nlist_is_refused(ivf_bundle: Path, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"nprobe={value} is out of range for this bank's index \(IndexIVFFlat\): "
                                          r"valid 1\.\.4 .*--search-param"):
        Predictor.load(ivf_bundle, search_params={"nprobe": value})


@pytest.mark.parametrize("value", [8.5, math.inf, -math.inf, math.nan, "3", True])
def test_search_parameters_must_be_whole_numbers(ivf_bundle: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"search parameter nprobe must be a whole number"):
        Predictor.load(ivf_bundle, search_params={"nprobe": value})


def test_nprobe_within_range_is_applied(ivf_bundle: Path) -> None:
    import faiss

    p = Predictor.load(ivf_bundle, search_params={"nprobe": 4})
    assert faiss.extract_index_ivf(p.scorer.bank.index).nprobe == 4
    assert faiss.extract_index_ivf(Predictor.load(ivf_bundle).scorer.bank.index).nprobe == 2  # the bundle's


def test_efsearch_is_bounded_by_the_bank_and_by_k(hnsw_bundle: Path, fitted) -> None:
    size = len(fitted.memory_bank)
    high = max(size, EF_SEARCH_CAP)
    for value in (high + 1, 2**31, 2**31 - 1):  # refused before FAISS sees it: no allocation
        with pytest.raises(ConfigError, match=rf"efSearch={value} is out of range .*IndexHNSWFlat.*valid 1\.\.{high}"):
            Predictor.load(hnsw_bundle, search_params={"efSearch": value})
    k = fitted.config.num_neighbors
    assert k == 3
    with pytest.raises(ConfigError, match=rf"efSearch=2 is below the {k} neighbours .* asks for"):
        Predictor.load(hnsw_bundle, search_params={"efSearch": 2})
    p = Predictor.load(hnsw_bundle, search_params={"efSearch": high})
    import faiss

    assert faiss.downcast_index(p.scorer.bank.index).hnsw.efSearch == high
    assert faiss.downcast_index(Predictor.load(hnsw_bundle).scorer.bank.index).hnsw.efSearch == 32


def test_a_parameter_of_the_other_index_type_is_refused(ivf_bundle: Path, hnsw_bundle: Path) -> None:
    with pytest.raises(ConfigError, match=r"efSearch=16 does not apply to this bank's index \(IndexIVFFlat; it takes nprobe\)"):
        Predictor.load(ivf_bundle, search_params={"efSearch": 16})
    with pytest.raises(ConfigError, match=r"nprobe=2 does not apply to this bank's index \(IndexHNSWFlat; it takes efSearch\)"):
        Predictor.load(hnsw_bundle, search_params={"nprobe": 2})


def test_export_refuses_search_parameters_out_of_range(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"efSearch=2147483648 is out of range"):
        export_bundle(model_dir, tmp_path / "h", index_type="HNSW16", search_params={"efSearch": 2**31})
    with pytest.raises(ConfigError, match=r"nprobe=5 is out of range .* valid 1\.\.4"):
        export_bundle(model_dir, tmp_path / "i", index_type="IVF4,Flat", search_params={"nprobe": 5})
    with pytest.raises(ConfigError, match=r"nprobe must be a whole number"):
        export_bundle(model_dir, tmp_path / "j", index_type="IVF4,Flat", search_params={"nprobe": 2.5})
    with pytest.raises(ConfigError, match=r"efSearch=1 is below the 3 neighbours"):
        export_bundle(model_dir, tmp_path / "k", index_type="HNSW16", search_params={"efSearch": 1},
                      accept_approximate=True)
    assert list(tmp_path.iterdir()) == []


def _edit_search_params(bundle: Path, dst: Path, params: dict) -> Path:
    import shutil

    shutil.copytree(bundle, dst)
    m = json.loads((dst / MANIFEST).read_text())
    m["scoring"]["bank"]["search_params"] = params
    m["integrity"] = integrity_section(m)  # digests recomputed: only the values themselves can be refused
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("params", [{"nprobe": 2**31}, {"nprobe": 0}, {"nprobe": 1.5}, {"efSearch": 16}])
def test_a_manifest_with_search_parameters_the_index_cannot_use_is_refused(ivf_bundle: Path, tmp_path: Path,
                                                                          params: dict) -> None:
    edited = _edit_search_params(ivf_bundle, tmp_path / "b", params)
    with pytest.raises(BundleError, match=r"the bundle's scoring\.bank\.search_params"):
        Predictor.load(edited)
    p = Predictor.load(edited, search_params={name: 1 for name in params if name == "nprobe"}) \
        if "nprobe" in params else None
    if p is not None:  # overriding the bad value gives a working bank
        assert p.scorer.bank.size > 0


def test_infer_with_an_efsearch_past_int32_exits_non_zero(hnsw_bundle: Path, dataset: Path) -> None:
    image = list_test_images(dataset)[0]
    r = invoke("infer", hnsw_bundle, image, "--search-param", "efSearch=2147483648", "-q")
    assert r.exit_code != 0 and "efSearch=2147483648 is out of range" in r.output and "Traceback" not in r.output
    r = invoke("infer", hnsw_bundle, image, "--search-param", "nprobe=2147483648", "-q")
    assert r.exit_code != 0 and "nprobe=2147483648 does not apply" in r.output


# ------------------------------------------------------------------- item 15: parity tolerance
def test_int8_with_a_parity_tolerance_from_the_cli_can_pass(model_dir: Path, tmp_path: Path) -> None:
    """--parity-tolerance sets scores and maps; the graph outputs keep int8's own tolerance."""
    r = invoke("export", model_dir, "--out", tmp_path / "b", "--quantize", "int8", "--quantize-images", 6,
               "--parity-tolerance", 0.3, "-q")
    assert r.exit_code == 0, r.output
    m = load_manifest(tmp_path / "b")
    assert m["parity"]["tolerance"] == {"features": 0.3, "image_scores": 0.3, "maps": 0.3}
    assert m["parity"]["passed"]


def test_a_failed_parity_names_the_tolerance_and_the_option_that_sets_it(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError) as info:
        export_bundle(model_dir, tmp_path / "b", tolerance={"image_scores": 0.0, "maps": 0.0})
    msg = str(info.value)
    assert "\n" not in msg
    assert "image_scores" in msg and "tolerance 0 (set by --parity-tolerance)" in msg
    assert "features" not in msg  # the graph itself matched: not blamed
    with pytest.raises(ExportError) as info:
        export_bundle(model_dir, tmp_path / "c", quantize="int8", quantize_images=2,
                      tolerance={"features": 1e-3})
    msg = str(info.value)
    assert "features" in msg and "--parity-tolerance does not change this tolerance" in msg and "--quantize-images" in msg
    assert list(tmp_path.iterdir()) == []


def test_unknown_or_negative_tolerances_are_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parity tolerance 'score' is not known; valid: features, image_scores, maps"):
        export_bundle(model_dir, tmp_path / "b", tolerance={"score": 0.1})
    with pytest.raises(ConfigError, match=r"parity tolerance image_scores must be a number >= 0, got -0.1"):
        export_bundle(model_dir, tmp_path / "b", tolerance={"image_scores": -0.1})


# ---------------------------------------------------- item 5c: calibration across --overwrite
def _calibrate(bundle: Path, dataset: Path) -> float:
    from adx_runtime.recalibrate import recalibrate

    entry = recalibrate(bundle, dataset, "weave", mode="fpr", fpr=0.0)
    return entry["image_threshold"]["new"]


def test_overwrite_with_the_same_model_keeps_the_calibration(model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    first = export_bundle(model_dir, out)
    default = first["calibration"]["image"]["threshold"]
    threshold = _calibrate(out, dataset)
    assert threshold != default
    history = load_manifest(out)["calibration"]["history"]
    m = export_bundle(model_dir, out, overwrite=True)
    on_disk = load_manifest(out)
    assert on_disk["calibration"]["image"]["threshold"] == threshold
    assert on_disk["calibration"]["history"] == history
    assert Predictor.load(out).image_threshold == pytest.approx(threshold)
    summary = format_export_summary(m, out)
    assert "kept the calibration" in summary and f"{threshold:.4g}" in summary


def test_overwrite_with_a_changed_model_drops_the_calibration_and_says_so(model_dir: Path, dataset: Path,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "b"
    first = export_bundle(model_dir, out)
    default = first["calibration"]["image"]["threshold"]
    threshold = _calibrate(out, dataset)
    m = export_bundle(model_dir, out, bank="npz", overwrite=True)  # scoring data changed
    on_disk = load_manifest(out)
    assert on_disk["calibration"]["image"]["threshold"] == default
    assert [e["action"] for e in on_disk["calibration"]["history"]] == ["fit"]  # no `adx calibrate` entry
    summary = format_export_summary(m, out)
    assert f"{threshold:.4g}" in summary and "not kept" in summary and "adx calibrate" in summary
    assert "scoring" in summary  # which protected sections changed


def test_overwrite_of_an_uncalibrated_bundle_says_nothing(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    export_bundle(model_dir, out)
    m = export_bundle(model_dir, out, bank="npz", overwrite=True)
    summary = format_export_summary(m, out)
    assert "calibrat" not in summary
    assert np.isfinite(m["calibration"]["image"]["threshold"])


# ------------------------------------------------------------- found in the review of the change
def test_an_approximate_index_in_shards_is_measured_and_written(tmp_path: Path) -> None:
    """faiss's wrappers take no extra attributes: keeping the shard parts alive on the container
    crashed every approximate export with --shards > 1."""
    from adexport.banks import write_faiss_bank

    rng = np.random.default_rng(0)
    vectors, queries = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    section, files = write_faiss_bank(tmp_path, "memory_bank", vectors, index_type="HNSW8", shards=2,
                                      queries=queries, accept_approximate=True)
    assert [s["size"] for s in section["shards"]] == [100, 100]
    assert section["approximation"]["queries"] == 20 and [f["path"] for f in files] == [
        "memory_bank.shard00.faiss", "memory_bank.shard01.faiss"]


@pytest.mark.parametrize("flag", [["--search-param", "efSearch=64"], ["--bank-device", "cpu"], ["--batch-size", "2"]])
def test_infer_with_a_server_refuses_options_the_server_would_ignore(bundle: Path, dataset: Path, flag) -> None:
    image = list_test_images(dataset)[0]
    result = runner.invoke(app, ["infer", str(bundle), str(image), "--server", "127.0.0.1:1", *flag])
    assert result.exit_code == 1 and flag[0] in result.output and "Traceback" not in result.output


def test_eval_compare_scores_both_bundles_with_the_search_parameters_given(hnsw_bundle: Path, dataset: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real = Predictor.load.__func__

    def recording(cls, *args, **kwargs):
        seen.append(kwargs.get("search_params"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Predictor, "load", classmethod(recording))
    result = invoke("eval", hnsw_bundle, dataset, "-c", "weave", "--compare", hnsw_bundle,
                    "--search-param", "efSearch=48")
    assert result.exit_code == 0, result.output
    assert seen == [{"efSearch": 48}, {"efSearch": 48}]


@pytest.mark.parametrize("flag", ["--quantize-images", "--calibration-images"])
def test_images_for_int8_ranges_without_int8_are_refused(model_dir: Path, tmp_path: Path, flag: str) -> None:
    result = runner.invoke(app, ["export", str(model_dir), "-o", str(tmp_path / "b"), flag, "8"])
    assert result.exit_code == 1 and "--quantize int8" in result.output and not (tmp_path / "b").exists()


def test_a_search_parameter_given_twice_is_refused() -> None:
    from adx_runtime.knn import parse_search_params

    with pytest.raises(ConfigError, match="efSearch is given twice"):
        parse_search_params(["efSearch=8", "efSearch=9"])


@pytest.mark.parametrize("opset", ["5", "12", "99"])
def test_an_opset_export_cannot_write_is_refused_in_one_line(model_dir: Path, tmp_path: Path, opset: str) -> None:
    result = runner.invoke(app, ["export", str(model_dir), "-o", str(tmp_path / "b"), "--opset", opset])
    assert result.exit_code == 1 and f"--opset {opset}" in result.output and "13 to 20" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "b").exists()
