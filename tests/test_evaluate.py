"""adx eval, calibrate, bench and reports, on the tiny bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import CATEGORY

from adx_runtime.bench import format_comparison, format_report, run_bench
from adx_runtime.bundle import load_manifest, sha256_file
from adx_runtime.evaluate import evaluate
from adx_runtime.predictor import Predictor
from adx_runtime.recalibrate import fpr_threshold, recalibrate
from adx_runtime.report import worst_cases, write_report


@pytest.fixture(scope="module")
def evaluation(bundle: Path, dataset: Path):
    return evaluate(bundle, dataset, CATEGORY)


def test_eval_auroc_equals_sklearn_on_the_scores_it_reports(evaluation) -> None:
    ok = evaluation.scored
    labels = [r.label for r in ok]
    scores = [r.score for r in ok]
    assert abs(evaluation.metrics["image_auroc"] - roc_auc_score(labels, scores)) < 1e-9
    pixel = roc_auc_score(evaluation.masks.ravel(), evaluation.maps.ravel())
    assert abs(evaluation.metrics["pixel_auroc"] - pixel) < 1e-9


def test_eval_breaks_down_per_defect_and_good(evaluation, dataset: Path) -> None:
    kinds = sorted(p.name for p in (dataset / CATEGORY / "test").iterdir())
    assert sorted(evaluation.per_kind) == kinds
    good = evaluation.per_kind["good"]
    assert good["n"] == 4 and "image_auroc" not in good
    for kind in kinds:
        if kind != "good":
            e = evaluation.per_kind[kind]
            sel = [r for r in evaluation.scored if r.defect in (kind, "good")]
            assert e["image_auroc"] == pytest.approx(roc_auc_score([r.label for r in sel], [r.score for r in sel]))
            assert 0.0 <= e["aupro"] <= 1.0
    j = evaluation.to_json()
    assert j["manifest_sha256"] == sha256_file(Path(evaluation.bundle) / "manifest.json")
    assert "numpy" in j["versions"] and len(j["images"]) == 12


def test_eval_without_masks_reports_image_metrics_and_says_why(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "nomask"
    shutil.copytree(dataset / CATEGORY, data / CATEGORY, ignore=shutil.ignore_patterns("ground_truth"))
    ev = evaluate(bundle, data, CATEGORY)
    assert ev.metrics["image_auroc"] is not None and "pixel_auroc" not in ev.metrics and "aupro" not in ev.metrics
    assert any("pixel metrics skipped" in n and "ground_truth" in n for n in ev.notes)


def test_eval_reports_a_bad_test_image_and_scores_the_rest(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "broken"
    shutil.copytree(dataset / CATEGORY, data / CATEGORY)
    (data / CATEGORY / "test" / "good" / "001.png").write_bytes(b"garbage")
    ev = evaluate(bundle, data, CATEGORY)
    assert ev.metrics["n_failed"] == 1 and ev.metrics["n_images"] == 11
    assert any("001.png" in n and "not scored" in n for n in ev.notes)


def test_report_writes_pictures_that_open(evaluation, bundle: Path, tmp_path: Path) -> None:
    files = write_report(evaluation, tmp_path, Predictor.load(bundle))
    names = {p.name for p in files}
    assert {"roc.png", "pro.png", "scores.png", "false_negatives.png", "index.html"} <= names
    assert ("false_positives.png" in names) == bool(worst_cases(evaluation)[1])  # only when a good image was flagged
    for p in files:
        if p.suffix == ".png":
            with Image.open(p) as img:
                assert img.size[0] > 300 and img.size[1] > 300
    assert "Worst false negatives" in (tmp_path / "index.html").read_text()


def test_worst_cases_order(evaluation) -> None:
    fn, fp = worst_cases(evaluation, n=3)
    t = evaluation.threshold  # only errors at the threshold: missed anomalous, flagged good
    anomalous = sorted(r.score for r in evaluation.scored if r.label == 1 and r.score < t)
    normal = sorted((r.score for r in evaluation.scored if r.label == 0 and r.score >= t), reverse=True)
    assert [r.score for r in fn] == anomalous[:3] and [r.score for r in fp] == normal[:3]


# ------------------------------------------------------------------------------------- calibrate
@pytest.mark.parametrize("scores,fpr,flagged", [
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.0, 0),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.1, 1),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.25, 2),  # floor(2.5)
    ([5, 5, 5, 1], 0.5, 0),  # a tie at the cut cannot be split: none of the three 5s is flagged
])
def test_fpr_threshold_flags_at_most_the_allowed_share(scores, fpr, flagged) -> None:
    t = fpr_threshold(np.array(scores, float), fpr)
    assert int((np.array(scores) >= t).sum()) == flagged


def test_calibrate_rewrites_thresholds_records_history_and_keeps_checksums(bundle_copy: Path, dataset: Path) -> None:
    before = load_manifest(bundle_copy)
    files_before = {f["path"]: sha256_file(bundle_copy / f["path"]) for f in before["files"]}
    entry = recalibrate(bundle_copy, dataset, CATEGORY, mode="fpr", fpr=0.0)
    after = load_manifest(bundle_copy)  # verifies every checksum again
    assert after["calibration"]["image"]["threshold"] == entry["image_threshold"]["new"]
    assert after["calibration"]["history"][-1]["action"] == "calibrate" and len(after["calibration"]["history"]) == 2
    assert entry["at_new_threshold"]["false_positive_rate"] == 0.0
    assert {f["path"]: sha256_file(bundle_copy / f["path"]) for f in after["files"]} == files_before
    p = Predictor.load(bundle_copy)
    assert p.image_threshold == entry["image_threshold"]["new"]
    entry = recalibrate(bundle_copy, dataset, CATEGORY, mode="f1", force=True)  # the tiny model's flags every good image
    ev = evaluate(bundle_copy, dataset, CATEGORY)
    assert entry["image_threshold"]["new"] == pytest.approx(ev.metrics["image_f1_threshold"])
    assert entry["pixel_threshold"]["new"] == pytest.approx(ev.metrics["pixel_f1_threshold"])


def test_calibrate_refuses_a_bad_mode(bundle: Path, dataset: Path) -> None:
    from adx_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="mode 'best' is not known; valid: f1, fpr"):
        recalibrate(bundle, dataset, CATEGORY, mode="best")


# ----------------------------------------------------------------------------------------- bench
def test_bench_reports_every_figure(bundle: Path, dataset: Path, npz_bundle: Path) -> None:
    images = sorted((dataset / CATEGORY / "test" / "good").glob("*.png"))
    r = run_bench(bundle, images=images, batch_sizes=(1, 3), runs=3, warmup=1)
    assert [x["batch_size"] for x in r["results"]] == [1, 3]
    for x in r["results"]:
        lat = x["latency_ms_per_batch"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert set(x["stage_ms_per_image"]) == {"preprocess", "graph", "scoring", "postprocess"}
        assert 0.5 < sum(x["stage_share"].values()) <= 1.0 + 1e-9  # the stages account for the time
        assert x["throughput_images_per_s"] > 0
    assert r["providers"] == ["CPUExecutionProvider"] and r["scoring_backend"] == "numpy (exact search of the FAISS Flat bank)"
    assert r["bundle_mb"] > 0 and r["peak_rss_mb"] > 0
    r2 = run_bench(npz_bundle, images=images, batch_sizes=(1, 3), runs=2, warmup=0)
    text = format_comparison(r, r2)
    assert "B/A" in text and "batch 3 img/s" in text and "numpy" in text
    assert "decode+preprocess" in format_report(r)


def test_cli_eval_json_and_bench_compare(bundle: Path, npz_bundle: Path, dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adx_cli.app import app

    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(bundle), str(dataset), "-c", CATEGORY, "--json", str(tmp_path / "e.json"), "-q"])
    assert r.exit_code == 0, r.output
    assert "image AUROC" in r.output and "AUPRO" in r.output and json.loads((tmp_path / "e.json").read_text())["metrics"]
    r = runner.invoke(app, ["bench", str(bundle), "--compare", str(npz_bundle), "--batch-sizes", "1,2", "--runs", "2",
                            "--warmup", "0", "--images", str(dataset / CATEGORY / "test" / "good"), "-q",
                            "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    both = json.loads((tmp_path / "b.json").read_text())
    assert both["a"]["scoring_backend"] == "numpy (exact search of the FAISS Flat bank)" and both["b"]["scoring_backend"] == "numpy"
    assert both["a"]["torch_imported"] is False  # measured in a fresh process that never imported torch


def test_an_unscorable_image_or_mask_leaves_only_that_file_out(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    test = sorted((root / CATEGORY / "test").glob("*/*.png"))
    anomalous = [p for p in test if p.parent.name != "good"]
    anomalous[0].write_bytes(b"junk")  # an image that cannot be scored
    mask = sorted((root / CATEGORY / "ground_truth" / anomalous[1].parent.name).glob(f"{anomalous[1].stem}*"))[0]
    mask.write_bytes(b"junk")  # a mask that cannot be decoded
    ev = evaluate(bundle, root, CATEGORY)
    assert ev.has_masks and ev.metrics["pixel_auroc"] is not None and ev.metrics["aupro"] is not None
    assert ev.metrics["n_images"] == len(test) - 2 and ev.metrics["n_failed"] == 2
    assert ev.maps.shape[0] == ev.masks.shape[0] == len(ev.scored)
    assert any(str(anomalous[0]) in n and "left out" in n for n in ev.notes)
    assert any(str(anomalous[1]) in n and "ground-truth mask" in n for n in ev.notes)
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    entry = recalibrate(copy, root, CATEGORY)  # pixel recalibration still happens
    assert entry["pixel_threshold"] is not None
