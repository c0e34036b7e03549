"""``adx select``: the selection/report split, the Pareto front and pick rule against a hand-made
table, resume, failing candidates, and the command end to end on the tiny dataset (tiny networks)."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adexport.select.rank import Row, format_duration, pareto_front, parse_duration, pick, ranked
from adexport.select.split import MODE_SPLIT, MODE_VALIDATION, materialise, plan_validation, stratified_halves
from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from conftest import CATEGORY

runner = CliRunner()
BANK = ("patchcore", "padim")


# ------------------------------------------------------------------------- pure: front and pick
#: name, accuracy, latency ms. Worked by hand: C is dominated by B (as accurate, slower), G by A
#: (less accurate, as fast), F failed; the front, most accurate first, is E A B D.
TABLE = [Row("A", 0.95, 30.0), Row("B", 0.90, 10.0), Row("C", 0.90, 12.0), Row("D", 0.80, 5.0),
         Row("E", 0.97, 100.0), Row("F", None, None), Row("G", 0.85, 30.0)]


def test_pareto_front_against_the_hand_computed_table() -> None:
    assert pareto_front(TABLE) == ["E", "A", "B", "D"]
    assert [r.name for r in ranked(TABLE)] == ["E", "A", "B", "C", "G", "D", "F"]


@pytest.mark.parametrize("budget, expected", [(None, "E"), (1000.0, "E"), (50.0, "A"), (30.0, "A"), (29.9, "B"),
                                              (11.0, "B"), (5.0, "D")])
def test_the_pick_is_the_most_accurate_within_the_latency_budget(budget: float | None, expected: str) -> None:
    assert pick(TABLE, budget).name == expected


def test_no_pick_when_nothing_is_within_the_budget_or_nothing_was_measured() -> None:
    none = pick(TABLE, 4.0)
    assert none.name is None and "fastest, D, takes 5.0 ms" in none.reason
    assert pick([Row("F", None, None), Row("H", 0.9, None)]).name is None
    assert pick(TABLE, 50.0).reason.endswith("more accurate but slower: E")


def test_ties_go_to_the_faster_then_to_the_name() -> None:
    rows = [Row("z", 0.9, 20.0), Row("y", 0.9, 10.0), Row("x", 0.9, 10.0)]
    assert pick(rows).name == "x"
    assert pareto_front(rows) == ["x", "y"]  # equal rows do not dominate each other


def test_durations() -> None:
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400
    for bad in ("30", "thirty minutes", "0m", "5x"):
        with pytest.raises(ConfigError, match="budget"):
            parse_duration(bad)
    assert format_duration(59) == "59s" and format_duration(125) == "2m05s" and format_duration(3700) == "1h01m"


# ------------------------------------------------------------------------- the split
def _targets(root: Path) -> set[Path]:
    return {Path(os.path.realpath(p)) for p in root.rglob("*") if p.is_symlink() or p.is_file()}


def test_the_test_split_is_stratified_seeded_and_disjoint(dataset: Path, tmp_path: Path) -> None:
    split = load_split(dataset, CATEGORY)
    a, b = stratified_halves(split.test, seed=0)
    assert {s.path for s in a}.isdisjoint({s.path for s in b}) and len(a) + len(b) == len(split.test)
    for kind in {s.defect for s in split.test}:
        n = sum(s.defect == kind for s in split.test)
        assert sum(s.defect == kind for s in a) == (n + 1) // 2
    assert [s.path for s in stratified_halves(split.test, seed=0)[0]] == [s.path for s in a]
    assert [s.path for s in stratified_halves(split.test, seed=1)[0]] != [s.path for s in a]

    plan = plan_validation(dataset, CATEGORY, seed=0)
    assert plan.mode == MODE_SPLIT
    work = materialise(plan, tmp_path / "work", seed=0)
    report_files = {Path(os.path.realpath(p)) for _, img, mask in plan.report for p in (img, mask) if p}
    select_test = _targets(work.select_root / CATEGORY / "test") | _targets(work.select_root / CATEGORY / "ground_truth")
    assert report_files and select_test and report_files.isdisjoint(select_test)
    # what evaluation and training read of the selection set is exactly the selection half
    seen = load_split(work.select_root, CATEGORY)
    assert {Path(os.path.realpath(s.path)) for s in seen.test} == {Path(os.path.realpath(p)) for _, p, _ in plan.select}
    assert seen.has_masks and len(seen.train) == len(split.train)


def test_a_validation_folder_is_chosen_on_and_test_is_reported_on(dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    cat = data / CATEGORY
    (cat / "validation").mkdir()
    for kind in ("good", "hole"):
        shutil.copytree(cat / "test" / kind, cat / "validation" / kind)
    plan = plan_validation(data, CATEGORY, seed=0)
    assert plan.mode == MODE_VALIDATION
    assert {k for k, _, _ in plan.select} == {"good", "hole"}
    assert len(plan.report) == len(load_split(data, CATEGORY).test)


# ------------------------------------------------------------------------- runs (tiny fits)
def _tiny_options() -> dict[str, dict[str, Any]]:
    from adexport.methods import METHODS

    options = {m: dict(e.test_options) for m, e in METHODS.items()}
    for m, e in METHODS.items():
        if e.trained:
            options[m]["epochs"] = 1
    return options


def _library_run(data: Path, out: Path, methods: tuple[str, ...] = BANK, **kwargs: Any):
    from adexport.select.run import SelectOptions, run_select

    opts = SelectOptions(methods=list(methods), options=_tiny_options(), bench_batches=(1, 2), bench_runs=2,
                         bench_warmup=1, bench_process=False, **kwargs)
    return run_select(data, CATEGORY, out, opts)


def _fixed_bench(bundle: Path, **kwargs: Any) -> dict[str, Any]:
    """A benchmark with fixed figures per method, so a tie in accuracy cannot make the pick depend
    on timing noise."""
    method = json.loads((Path(bundle) / "manifest.json").read_text())["method"]
    ms = {"patchcore": 0.002, "padim": 0.001}[method]
    results = [{"batch_size": b, "latency_ms_per_batch": {"p50": 1000 * ms * b, "p99": 1000 * ms * b},
                "throughput_images_per_s": 1 / ms} for b in kwargs["batch_sizes"]]
    return {"results": results, "bundle_mb": 1.0, "peak_rss_mb": 1.0, "providers": ["CPUExecutionProvider"],
            "device": "cpu"}


def test_report_images_cannot_change_the_pick(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace every report image by noise and swap the pictures of report good and defect images
    (labels now wrong): the selection metrics and the pick stay exactly the same."""
    import adx_runtime.bench

    monkeypatch.setattr(adx_runtime.bench, "run_bench", _fixed_bench)
    first = _library_run(dataset, tmp_path / "a")
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    plan = plan_validation(data, CATEGORY, seed=0)
    rng = np.random.default_rng(1)
    goods = [p for k, p, _ in plan.report if k == "good"]
    defects = [p for k, p, _ in plan.report if k != "good"]
    for g, d in zip(goods, defects):  # swap: a good file now shows a defect and the other way round
        tmp = g.read_bytes()
        g.write_bytes(d.read_bytes())
        d.write_bytes(tmp)
    for p in defects[len(goods):]:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    second = _library_run(data, tmp_path / "b")
    assert first.pick.name == second.pick.name is not None
    for a, b in zip(first.candidates, second.candidates):
        assert a["method"] == b["method"] and a["status"] == b["status"] == "ok"
        assert a["selection"] == b["selection"]
    assert first.report != second.report  # the report set did change, and only the report saw it


@pytest.fixture(scope="module")
def cli_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``adx select`` over the two bank methods, end to end, tiny options through --option."""
    from adx_cli.app import app

    out = tmp_path_factory.mktemp("select") / "run"
    args = ["select", str(dataset), "-c", CATEGORY, "--out", str(out), "--methods", ",".join(BANK), "-q"]
    for m in BANK:
        for k, v in _tiny_options()[m].items():
            args += ["--option", f"{m}.{k}={v}"]
    result = runner.invoke(app, args, catch_exceptions=False)
    return out, result, args


def _copy_run(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(out, dst, symlinks=True)
    return dst


def test_the_command_runs_end_to_end(cli_run: tuple[Path, Any, list[str]]) -> None:
    out, result, _ = cli_run
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "select.json").read_text())
    assert set(summary["candidates"]) == set(BANK)
    assert summary["pick"]["method"] in BANK and summary["pick"]["method"] == summary["ranking"][0]
    assert summary["pick"]["method"] in summary["pareto_front"]
    assert summary["validation"]["mode"] == MODE_SPLIT and summary["report_set"]["n_images"] > 0
    for m in BANK:
        c = json.loads((out / "candidates" / f"{m}.json").read_text())
        assert c["status"] == "ok" and 0.0 <= c["selection"]["image_auroc"] <= 1.0
        assert c["bench"]["p50_ms"] > 0 and c["bench"]["images_per_s"] > 0 and c["bench"]["bundle_mb"] > 0
        # measured in its own process: its own peak, not the torch parent's (getrusage's survives exec)
        assert 0 < c["bench"]["peak_rss_mb"] < resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert set(c["bench"]["per_batch"]) == {"1", "4", "16"}
    assert (out / "best" / "manifest.json").is_file()
    assert json.loads((out / "best" / "manifest.json").read_text())["method"] == summary["pick"]["method"]
    page = (out / "select.html").read_text()
    assert (out / "select.svg").read_text().startswith("<svg")
    assert "<svg" in page and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "Pareto front" in result.output and f"pick: {summary['pick']['method']}" in result.output


def test_a_rerun_skips_finished_candidates(cli_run: tuple[Path, Any, list[str]], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from adx_cli.app import app
    import adexport.fit_pipeline

    out, _, args = cli_run
    run = _copy_run(out, tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(adexport.fit_pipeline, "train", lambda *a, **k: calls.append(a[2]))
    args = [run if a == str(out) else a for a in args]
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls == []
    assert "resumed from the earlier run (not redone): patchcore, padim" in result.output
    assert json.loads((run / "select.json").read_text())["resumed"] == list(BANK)


def test_failing_candidates_are_reported_and_the_others_go_on(cli_run: tuple[Path, Any, list[str]], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The two finished ones resume; spade gets a bad option, riad's export raises: both reported, pick made."""
    from adx_cli.app import app
    import adexport.export

    out, _, args = cli_run
    run = _copy_run(out, tmp_path)

    def refuse(*a: Any, **k: Any) -> None:
        raise RuntimeError("simulated export refusal")

    monkeypatch.setattr(adexport.export, "export_bundle", refuse)
    args = [run if a == str(out) else a for a in args]
    args[args.index("--methods") + 1] = "patchcore,padim,spade,riad"
    args += ["--option", "spade.k=-1"] + [x for k, v in _tiny_options()["riad"].items()
                                           for x in ("--option", f"riad.{k}={v}")]
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    spade = json.loads((run / "candidates" / "spade.json").read_text())
    riad = json.loads((run / "candidates" / "riad.json").read_text())
    assert spade["status"] == "failed" and spade["phase"] == "options" and "k" in spade["reason"]
    assert riad["status"] == "failed" and riad["phase"] == "export"
    assert riad["reason"] == "RuntimeError: simulated export refusal" and riad["fit_seconds"] > 0
    assert "FAILED: RuntimeError: simulated export refusal" in result.output.replace("\n", " ") or \
        "RuntimeError: simulated export refusal" in result.output
    summary = json.loads((run / "select.json").read_text())
    assert summary["pick"]["method"] in BANK and set(summary["pareto_front"]) <= set(BANK)


def test_other_arguments_are_refused_and_an_impossible_latency_exits_1(cli_run: tuple[Path, Any, list[str]],
                                                                      tmp_path: Path) -> None:
    from adx_cli.app import app

    out, _, args = cli_run
    run = _copy_run(out, tmp_path)
    args = [str(run) if a == str(out) else str(a) for a in args]
    other = runner.invoke(app, args + ["--seed", "1"], catch_exceptions=False)
    assert other.exit_code == 1 and "other arguments" in other.output and "seed 0 -> 1" in other.output
    slow = runner.invoke(app, args + ["--max-latency-ms", "0.0001"], catch_exceptions=False)
    assert slow.exit_code == 1 and "no candidate is within --max-latency-ms" in slow.output
    assert json.loads((run / "select.json").read_text())["pick"]["method"] is None
    assert not (run / "best").exists()


def test_a_set_item_must_name_a_candidate(dataset: Path, tmp_path: Path) -> None:
    from adexport.select.run import parse_set_items

    assert parse_set_items(["padim.n_features=40", "padim.seed=1"], list(BANK)) == {"padim": ["n_features=40", "seed=1"]}
    with pytest.raises(ConfigError, match="not a candidate"):
        parse_set_items(["spade.k=3"], list(BANK))
    with pytest.raises(ConfigError, match="METHOD.KEY=VALUE"):
        parse_set_items(["k=3"], list(BANK))


# ------------------------------------------------------------------------- no defective images
def _normal_only(dataset: Path, tmp_path: Path, keep_test_good: bool) -> Path:
    data = tmp_path / "normal_only"
    shutil.copytree(dataset, data)
    cat = data / CATEGORY
    shutil.rmtree(cat / "ground_truth")
    for d in (cat / "test").iterdir():
        if d.name != "good" or not keep_test_good:
            shutil.rmtree(d)
    if not keep_test_good:
        (cat / "test").rmdir()
    return data


def test_without_defects_the_selection_set_is_synthetic_on_held_out_normals(dataset: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import adx_runtime.bench
    from adexport.select.report import format_select
    from adexport.select.split import MODE_SYNTHETIC

    data = _normal_only(dataset, tmp_path, keep_test_good=True)
    plan = plan_validation(data, CATEGORY, seed=0)
    assert plan.mode == MODE_SYNTHETIC and plan.report == []
    normals = sorted((data / CATEGORY / "test" / "good").iterdir())
    assert sorted([p for _, p, _ in plan.select] + plan.synthetic_sources) == normals
    assert set(plan.train) == set((data / CATEGORY / "train" / "good").iterdir())

    monkeypatch.setattr(adx_runtime.bench, "run_bench", _fixed_bench)
    result = _library_run(data, tmp_path / "out", methods=("patchcore",))
    seen = load_split(tmp_path / "out" / "work" / "select", CATEGORY)
    synthetic = [s for s in seen.test if s.defect == "synthetic"]
    assert len(synthetic) == len(plan.synthetic_sources) and seen.has_masks
    for s in synthetic:  # a painted copy of a held-out normal image, its mask non-empty
        assert np.asarray(Image.open(s.mask_path)).any()
    assert result.pick.name == "patchcore" and result.report is None
    text = format_select(result)
    assert "synthetic defects" in text and "no report set" in text


def test_without_test_images_normals_are_held_out_of_training(dataset: Path, tmp_path: Path) -> None:
    from adexport.select.split import MODE_SYNTHETIC

    data = _normal_only(dataset, tmp_path, keep_test_good=False)
    plan = plan_validation(data, CATEGORY, seed=0)
    held = {p for _, p, _ in plan.select} | set(plan.synthetic_sources)
    assert plan.mode == MODE_SYNTHETIC and len(held) == 4
    assert held.isdisjoint(plan.train) and len(plan.train) + len(held) == 16
    work = materialise(plan, tmp_path / "work", seed=0)
    trained_on = {Path(os.path.realpath(p)) for p in (work.select_root / CATEGORY / "train" / "good").iterdir()}
    assert trained_on.isdisjoint({Path(os.path.realpath(p)) for p in held})


def test_an_interrupted_run_resumes_with_the_candidates_already_done(dataset: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import adx_runtime.bench
    from adexport.fit_pipeline import train
    from adexport.select.run import SelectOptions, run_select
    from adx_runtime.errors import Interrupted

    monkeypatch.setattr(adx_runtime.bench, "run_bench", _fixed_bench)
    calls: list[str] = []

    def ctrl_c_at_padim(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        if args[2] == "padim":
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    opts = SelectOptions(methods=list(BANK), options=_tiny_options(), bench_batches=(1,), bench_runs=1,
                         bench_warmup=0, bench_process=False)
    with pytest.raises(Interrupted, match="1 finished candidates are kept .*patchcore"):
        run_select(dataset, CATEGORY, tmp_path / "out", opts, train_fn=ctrl_c_at_padim)
    assert json.loads((tmp_path / "out" / "candidates" / "patchcore.json").read_text())["status"] == "ok"
    assert not (tmp_path / "out" / "candidates" / "padim.json").exists()
    calls.clear()
    result = run_select(dataset, CATEGORY, tmp_path / "out", opts, train_fn=lambda *a, **k: (calls.append(a[2]),
                                                                                             train(*a, **k))[1])
    assert calls == ["padim"] and result.skipped == ["patchcore"]
    assert [c["status"] for c in result.candidates] == ["ok", "ok"] and result.pick.name in BANK


def test_non_finite_figures_become_none() -> None:
    from adexport.select.run import _finite

    assert _finite({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"}) == {"a": None, "b": [1.0, None], "c": "x"}


def test_help_explains_and_shows_its_defaults() -> None:
    import re

    from adx_cli.app import app

    out = re.sub(r"\s+", " ", runner.invoke(app, ["select", "--help"], env={"COLUMNS": "400"}).output)
    for flag, default in [("--device", "[default: cpu]"), ("--metric", "[default: image_auroc]"),
                          ("--seed", "[default: 0]"), ("--budget", "[default: none, every method's default epochs]"),
                          ("--max-latency-ms", "[default: none, the most accurate on the Pareto front]")]:
        assert flag in out and default in out, (flag, default)
    assert "Which bundle should go on this box" in runner.invoke(app, ["--help"]).output


def test_a_slow_bundle_is_timed_on_fewer_batches() -> None:
    from adexport.select.run import BENCH_CAP_S, SelectOptions, _bench_runs

    opts = SelectOptions(bench_batches=(1, 4, 16), bench_runs=10, bench_warmup=2)
    assert _bench_runs(opts, 0.001) == 10  # 21 images per run: far under the cap
    # 0.5 s per image: 10.5 s per run, 60 s allow 5 runs of which 2 are warm-up -> 3 timed
    assert _bench_runs(opts, 0.5) == int(BENCH_CAP_S / 10.5) - 2 == 3
    assert _bench_runs(opts, 5.0) == 3  # never fewer than 3
    assert _bench_runs(SelectOptions(bench_runs=2), 5.0) == 2  # never more than asked


def test_a_budget_scales_a_trained_network_s_epochs_from_a_probe(dataset: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import adx_runtime.bench
    from adexport.select.run import SelectOptions, run_select

    monkeypatch.setattr(adx_runtime.bench, "run_bench", _any_bench)
    tiny = {k: v for k, v in _tiny_options()["rd4ad"].items() if k != "epochs"}  # the default: 200 epochs
    opts = SelectOptions(methods=["rd4ad"], options={"rd4ad": tiny}, budget_s=6.0, bench_batches=(1,), bench_runs=1,
                         bench_warmup=0, bench_process=False)
    result = run_select(dataset, CATEGORY, tmp_path / "out", opts)
    (c,) = result.candidates
    assert c["status"] == "ok", c.get("reason")
    ep = c["epochs"]
    assert ep["rule"].startswith("budget:") and ep["default"] == 200 and 1 <= ep["used"] < 200
    assert ep["probe_seconds"] > 0 and ep["per_epoch_seconds"] > 0


def _any_bench(bundle: Path, **kwargs: Any) -> dict[str, Any]:
    results = [{"batch_size": b, "latency_ms_per_batch": {"p50": 1.0 * b, "p99": 1.0 * b},
                "throughput_images_per_s": 1000.0} for b in kwargs["batch_sizes"]]
    return {"results": results, "bundle_mb": 1.0, "peak_rss_mb": 1.0, "providers": ["CPUExecutionProvider"],
            "device": "cpu"}
