"""Issue 16, item 5 and the report: thresholds that flag everything are refused or said out loud,
a bundle used on another category says so, and the report's worst cases are real errors only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CATEGORY

from adx_cli.app import app
from adx_runtime.errors import ConfigError
from adx_runtime.evaluate import evaluate
from adx_runtime.predictor import Predictor
from adx_runtime.recalibrate import recalibrate
from adx_runtime.report import worst_cases, write_report

runner = CliRunner()


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second category the session's weave bundle was not trained on."""
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("grid")
    generate_demo_dataset(root, ["grid"], n_train=4, n_test_good=4, n_test_per_defect=1, image_size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def inverted(dataset: Path, grid: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weave "validation split" whose anomalous images all score below its good ones: the good
    folder holds grid images (far from the weave bank), the defect folder weave training images
    (in or next to the bank). No threshold separates them; F1 is best when everything is flagged."""
    root = tmp_path_factory.mktemp("inverted") / CATEGORY
    (root / "train" / "good").mkdir(parents=True)
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "crack").mkdir(parents=True)
    for i, p in enumerate(sorted((grid / "grid" / "test").glob("*/*.png"))[:4]):
        shutil.copy(p, root / "test" / "good" / f"{i:03d}.png")
    for i, p in enumerate(sorted((dataset / CATEGORY / "train" / "good").glob("*.png"))[:4]):
        shutil.copy(p, root / "test" / "crack" / f"{i:03d}.png")
        shutil.copy(p, root / "train" / "good" / f"{i:03d}.png")
    return root.parent


def _history(bundle: Path) -> list[dict]:
    return json.loads((bundle / "manifest.json").read_text())["calibration"]["history"]


# ------------------------------------------------------------------ 5a: degenerate thresholds
def test_calibrate_refuses_an_f1_threshold_that_flags_every_good_image(bundle_copy: Path, inverted: Path) -> None:
    before = (bundle_copy / "manifest.json").read_bytes()
    ev = evaluate(bundle_copy, inverted, CATEGORY)
    good = [r.score for r in ev.scored if r.label == 0]
    bad = [r.score for r in ev.scored if r.label == 1]
    assert max(bad) < min(good)  # the premise: F1-max is reached by flagging everything
    with pytest.raises(ConfigError, match=r"flags all 4 good images \(100%\).*--mode fpr.*--force"):
        recalibrate(bundle_copy, inverted, CATEGORY, mode="f1")
    assert (bundle_copy / "manifest.json").read_bytes() == before  # nothing written


def test_calibrate_refuses_a_threshold_that_flags_no_anomaly(bundle_copy: Path, inverted: Path) -> None:
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match=r"detects none of the 4 anomalous images.*--force"):
        recalibrate(bundle_copy, inverted, CATEGORY, mode="fpr", fpr=0.0)
    assert (bundle_copy / "manifest.json").read_bytes() == before


def test_calibrate_force_writes_it_and_records_the_warning(bundle_copy: Path, inverted: Path) -> None:
    entry = recalibrate(bundle_copy, inverted, CATEGORY, mode="f1", force=True)
    assert entry["at_new_threshold"]["false_positive_rate"] == 1.0
    assert entry["forced"] is True and any("flags all 4 good images" in w for w in entry["warnings"])
    assert _history(bundle_copy)[-1]["warnings"] == entry["warnings"]
    assert Predictor.load(bundle_copy).image_threshold == entry["image_threshold"]["new"]


def test_cli_calibrate_refuses_without_force_and_warns_on_stderr_with_it(bundle_copy: Path, inverted: Path) -> None:
    before = (bundle_copy / "manifest.json").read_bytes()
    r = runner.invoke(app, ["calibrate", str(bundle_copy), str(inverted), "-c", CATEGORY, "-q"])
    assert r.exit_code == 1 and "flags all 4 good images" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1 and (bundle_copy / "manifest.json").read_bytes() == before
    r = runner.invoke(app, ["calibrate", str(bundle_copy), str(inverted), "-c", CATEGORY, "-q", "--force"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "flags all 4 good images" in r.stderr and "image threshold" in r.stdout


def test_calibrate_warns_when_the_f1_threshold_flags_a_large_share_of_good_images(bundle_copy: Path,
                                                                                   grid: Path) -> None:
    entry = recalibrate(bundle_copy, grid, "grid", mode="f1")  # written: some good images pass
    rate = entry["at_new_threshold"]["false_positive_rate"]
    assert 0.2 < rate < 1.0  # the premise: F1 on another category passes few good images
    assert any(f"flags {round(rate * 4)} of the 4 good images ({rate:.0%})" in w and "--mode fpr" in w
               for w in entry["warnings"]), entry["warnings"]
    entry = recalibrate(bundle_copy, grid, "grid", mode="fpr", fpr=0.25)  # the share asked for: no such warning
    assert not any("good parts" in w for w in entry["warnings"]), entry["warnings"]


# ------------------------------------------------------------------ 5b: a rate too small to measure
def test_calibrate_says_when_there_are_too_few_good_images_for_the_rate(bundle_copy: Path, dataset: Path) -> None:
    entry = recalibrate(bundle_copy, dataset, CATEGORY, mode="fpr", fpr=0.01)
    assert any("4 good images cannot measure a false-positive rate of 0.01" in w and "at least 300 good images" in w
               for w in entry["warnings"]), entry["warnings"]


@pytest.mark.parametrize("n_good,fpr,warned", [(4, 0.01, True), (299, 0.01, True), (300, 0.01, False),
                                               (10, 0.3, False), (9, 0.3, True), (4, 0.0, False)])
def test_rate_resolution_needs_three_expected_false_positives(n_good: int, fpr: float, warned: bool) -> None:
    from adx_runtime.recalibrate import rate_resolution_warning

    assert (rate_resolution_warning(n_good, fpr) is not None) == warned


# ------------------------------------------------------------------ 5d: another category
def test_eval_on_another_category_warns_in_text_json_and_stderr(bundle: Path, grid: Path, tmp_path: Path) -> None:
    ev = evaluate(bundle, grid, "grid")
    assert ev.metrics["at_threshold"]["false_positive_rate"] == 1.0
    assert any("trained on category 'weave'" in w and "'grid'" in w for w in ev.warnings), ev.warnings
    assert any("flags all 4 good images" in w for w in ev.warnings), ev.warnings
    assert ev.to_json()["warnings"] == ev.warnings
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", str(bundle), str(grid), "-c", "grid", "-q", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "warning: the bundle was trained on category 'weave'" in r.stderr
    assert json.loads(out.read_text())["warnings"] == ev.warnings


def test_eval_on_its_own_category_has_no_warning(bundle: Path, dataset: Path) -> None:
    ev = evaluate(bundle, dataset, CATEGORY)
    assert ev.warnings == [] and ev.to_json()["warnings"] == []


def test_no_category_warning_for_a_bundle_that_does_not_record_one(bundle_copy: Path, grid: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["training"]  # not a protected section: a bundle without it still loads
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    ev = evaluate(bundle_copy, grid, "grid")
    assert not any("trained on category" in w for w in ev.warnings), ev.warnings


def test_calibrate_on_another_category_warns(bundle_copy: Path, grid: Path) -> None:
    entry = recalibrate(bundle_copy, grid, "grid", mode="fpr", fpr=0.25)
    assert any("trained on category 'weave'" in w for w in entry["warnings"]), entry["warnings"]


def test_eval_warns_when_every_good_image_is_flagged_whatever_the_reason(bundle: Path, dataset: Path) -> None:
    ev = evaluate(bundle, dataset, CATEGORY, threshold=0.0)  # same category: only the threshold is wrong
    assert ev.warnings and "flags all 4 good images" in ev.warnings[0] and len(ev.warnings) == 1


# ------------------------------------------------------------------ report: worst cases are real errors
def test_report_lists_only_flagged_good_images_as_false_positives(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    ev = evaluate(bundle, dataset, CATEGORY, threshold=1e9)  # nothing flagged: no false positive exists
    fn, fp = worst_cases(ev)
    assert fp == [] and len(fn) == 6 and all(not r.predicted for r in fn)
    names = {p.name for p in write_report(ev, tmp_path, Predictor.load(bundle, threshold=1e9))}
    assert "false_positives.png" not in names and "false_negatives.png" in names
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Worst false positives</h2><p>none" in page and "<ol></ol>" not in page


def test_report_lists_only_missed_anomalies_as_false_negatives(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    ev = evaluate(bundle, dataset, CATEGORY, threshold=0.0)  # everything flagged: no anomaly missed
    fn, fp = worst_cases(ev, n=3)
    good = sorted((r.score for r in ev.scored if r.label == 0), reverse=True)
    assert fn == [] and [r.score for r in fp] == good[:3]
    write_report(ev, tmp_path, Predictor.load(bundle, threshold=0.0))
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Worst false negatives</h2><p>none" in page and "<ol></ol>" not in page
    assert "flags all 4 good images" in page  # the warnings are on the page too
