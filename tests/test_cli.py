"""The adx CLI: commands call the library, print results, and fail with a message, not a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adx_cli.app import EXIT_SOME_FAILED, app, expand_inputs
from adx_runtime.errors import ConfigError

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


COMMANDS = ["demo-data", "synth-preview", "train", "methods", "export", "infer", "eval", "demo", "calibrate", "bench",
            "bench-fit", "triton-repo", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output and len(result.output) > 300


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default_it_promises(command: str) -> None:
    """Rich reads "[default: 256]" in a help string as markup and drops it, leaving a dangling "."
    (it happened); every default a help string names must reach the screen."""
    import typer.main

    click_cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    out = _flat(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output)
    promised = 0
    for param in click_cmd.params:
        text = (getattr(param, "help", None) or "").replace("\\[", "[")
        for default in re.findall(r"\[default: ([^\]]+)\]", text):
            promised += 1
            assert f"[default: {default}]" in out, f"{command} --{param.name}: [default: {default}] is not shown"
    assert not re.search(r" \.( |$)", out), f"{command} --help has a dangling '.' where text was dropped"
    if command == "train":  # method-specific flags went to --set; the generic shortcuts still promise theirs
        assert promised >= 4


def test_methods_lists_methods_and_options() -> None:
    out = invoke("methods").output
    assert "patchcore" in out and "padim" in out and "spade" in out and "one-pass fit" in out
    detail = invoke("methods", "padim").output
    assert "n_features" in detail and "100" in detail and "random channel subset" in detail
    assert invoke("methods", "nope").exit_code == 1


def test_every_option_of_every_method_has_help() -> None:
    from adexport.methods import METHODS
    from adexport.methods.options import describe_options

    missing = [f"{e.name}.{o.name}" for e in METHODS.values() for o in describe_options(e.config_cls) if not o.help]
    assert not missing, f"options without a trailing '# help' comment: {missing}"


def test_set_is_typed_from_the_config_and_refuses_unknown_keys(dataset: Path, tmp_path: Path) -> None:
    from adexport.methods.options import parse_assignments
    from adexport.methods.patchcore import PatchCoreConfig

    got = parse_assignments(PatchCoreConfig, ["layers=1,layer3", "target_dim=none", "coreset_ratio=0.25", "k=3"]
                            [:3] + ["num-neighbors=2"])
    assert got == {"layers": (1, "layer3"), "target_dim": None, "coreset_ratio": 0.25, "num_neighbors": 2}
    r = invoke("train", dataset, "-c", "weave", "--out", tmp_path / "m", "--set", "coreset_ratio=abc", "-q")
    assert r.exit_code == 1 and "coreset_ratio=abc: expected a number" in r.output
    r = invoke("train", dataset, "-c", "weave", "--out", tmp_path / "m", "--set", "epochs=3", "-q")
    assert r.exit_code == 1 and "no option 'epochs'" in r.output and "adx methods" in r.output
    r = invoke("train", dataset, "-c", "weave", "--out", tmp_path / "m", "--backbone", "x", "--set", "backbone=y")
    assert r.exit_code == 1 and "both as a flag and with --set" in r.output
    r = invoke("train", dataset, "-c", "weave", "--out", tmp_path / "m", "--resume", "-q")
    assert r.exit_code == 1 and "--resume applies to trained networks" in r.output


def test_export_refuses_options_the_method_ignores(tmp_path: Path, dataset: Path) -> None:
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train

    from conftest import TINY

    fitted = train(dataset, "weave", "padim", options={**TINY, "n_features": 8}, holdout=0.25)
    with pytest.raises(ConfigError, match=r"padim does not use --bank"):
        export_bundle(fitted, tmp_path / "b", bank="npz")
    with pytest.raises(ConfigError, match=r"padim does not use --index-type"):
        export_bundle(fitted, tmp_path / "b", index_type="HNSW32")


def test_demo_data_writes_the_layout(tmp_path: Path) -> None:
    result = invoke("demo-data", tmp_path, "--categories", "weave", "--n-train", 3, "--n-test-good", 1,
                    "--n-test-defect", 1, "--image-size", 48, "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "weave" / "train" / "good").glob("*.png"))) == 3
    assert "train/good 3" in result.output


def test_train_export_infer(dataset: Path, tmp_path: Path) -> None:
    model, bundle = tmp_path / "model", tmp_path / "bundle"
    r = invoke("train", dataset, "-c", "weave", "--out", model, "--backbone", "test_efficientnet", "--weights", "random",
               "--image-size", 64, "--set", "coreset_ratio=0.2", "--set", "num_neighbors=2", "--layers", "blocks.2,blocks.3",
               "-q")
    assert r.exit_code == 0, r.output
    assert "fit time" in r.output and "image threshold" in r.output and "on weave (cpu)" in r.output
    meta = json.loads((model / "model.json").read_text())
    assert meta["config"]["coreset_ratio"] == 0.2 and meta["config"]["num_neighbors"] == 2
    assert meta["config"]["layers"] == ["blocks.2", "blocks.3"]

    r = invoke("export", model, "--out", bundle, "--bank", "npz", "-q")
    assert r.exit_code == 0, r.output
    assert "parity on 8 images" in r.output and (bundle / "memory_bank.npz").is_file()

    folder = dataset / "weave" / "test" / "good"
    out = tmp_path / "scores.csv"
    r = invoke("infer", bundle, folder, "--format", "csv", "-o", out, "--threshold", 1e9, "-q")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 4 and {row["label"] for row in rows} == {"normal"}  # nothing reaches 1e9
    assert all(float(row["normalized_score"]) < 0.5 for row in rows)


def test_infer_reports_bad_files_and_exits_3(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    good = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[:2]
    (tmp_path / "bad.png").write_bytes(b"nope")
    r = invoke("infer", bundle, *good, tmp_path / "bad.png")
    assert r.exit_code == EXIT_SOME_FAILED
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [("error" in line) for line in lines] == [False, False, True]
    assert "scored 2 of 3 images" in r.stderr and "1 failed" in r.stderr


def test_errors_print_a_message_not_a_traceback(tmp_path: Path) -> None:
    r = invoke("infer", tmp_path, "x.png")
    assert r.exit_code == 1
    assert "error:" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = invoke("train", tmp_path / "missing", "--out", tmp_path / "m", "-q")
    assert r.exit_code == 1 and "does not exist" in r.stderr
    r = invoke("train", tmp_path, "--out", tmp_path / "m", "--method", "cflow", "-q")
    assert r.exit_code == 1 and "method 'cflow' is not known; valid: patchcore" in r.stderr


def test_expand_inputs_files_folders_globs(dataset: Path) -> None:
    test = dataset / "weave" / "test"
    assert len(expand_inputs([str(test / "good")])) == 4
    assert len(expand_inputs([str(test)], recursive=True)) == len(list(test.glob("*/*.png")))
    assert len(expand_inputs([str(test / "*" / "000.png")])) == len(list(test.iterdir()))
    with pytest.raises(ConfigError, match="matches no files"):
        expand_inputs([str(test / "*.gif")])


def test_a_method_that_declares_fp16_unsafe_refuses_it_before_anything_else(dataset: Path, tmp_path: Path) -> None:
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train

    from conftest import TINY_TRAINED

    fitted = train(dataset, "weave", "rd4ad", options=TINY_TRAINED["rd4ad"], holdout=0.25)
    with pytest.raises(ConfigError, match=r"rd4ad refuses float16 TensorRT engines: .*3 significant digits"):
        export_bundle(fitted, tmp_path / "b", fmt="tensorrt", fp16=True)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_threshold_is_refused(bundle: Path, dataset: Path, value: str) -> None:
    image = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[0]
    r = invoke("infer", bundle, image, "--threshold", value)
    assert r.exit_code == 1 and "--threshold must be a finite number" in r.stderr and not r.stdout.strip()


def test_json_lines_never_hold_nan() -> None:
    from adx_runtime.infer import json_line

    line = json_line({"path": "a.png", "image_score": float("nan"), "normalized_score": float("inf"), "label": None})
    assert json.loads(line) == {"path": "a.png", "image_score": None, "normalized_score": None, "label": None}
    assert "NaN" not in line and "Infinity" not in line


# ------------------------------------------------------------------ outputs are checked before scoring
def test_bad_output_targets_are_refused_before_scoring(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    import shutil

    image = tmp_path / "img.png"
    shutil.copy(sorted((dataset / "weave" / "test" / "good").glob("*.png"))[0], image)
    before = image.read_bytes()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["-o", tmp_path / "missing" / "s.jsonl"], "does not exist; create it first"),
        (["-o", tmp_path], "is a folder; give a file name"),
        (["-o", image], "is one of the input images"),
        (["--save-maps", tmp_path / "afile"], "is a file, not a folder"),
    ]
    for extra, message in cases:
        r = invoke("infer", bundle, image, *extra)
        assert r.exit_code == 1 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert not r.stdout.strip()  # nothing scored
    assert image.read_bytes() == before and (tmp_path / "afile").read_text() == "x"


def test_save_maps_without_pixel_calibration_scores_every_image(bundle_copy: Path, dataset: Path,
                                                                tmp_path: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["calibration"]["pixel"] = None
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    images = sorted((dataset / "weave" / "test" / "good").glob("*.png"))
    r = invoke("infer", bundle_copy, *images, "--save-maps", tmp_path / "maps")
    assert r.exit_code == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == len(images)
    assert len(list((tmp_path / "maps").glob("*_heatmap.png"))) == len(images)
    assert "no pixel calibration: each heatmap is scaled to its own map's range" in r.stderr


# ------------------------------------------------------------------ every named path and image-like entry gets a line
def test_folder_scan_reports_every_image_like_entry(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    import shutil

    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[0]
    shutil.copy(good, folder / "a_good.png")
    os.mkfifo(folder / "b_pipe.png")
    (folder / "c_dev.png").symlink_to("/dev/null")
    (folder / "d_dirlink.png").symlink_to(tmp_path)
    Image.new("P", (8, 8)).save(folder / "e.gif")
    (folder / "f_dir.png").mkdir()
    (folder / "notes.txt").write_text("not an image")
    r = invoke("infer", bundle, folder)
    assert r.exit_code == EXIT_SOME_FAILED
    lines = {Path(d["path"]).name: d for d in (json.loads(x) for x in r.stdout.splitlines() if x.startswith("{"))}
    assert sorted(lines) == ["a_good.png", "b_pipe.png", "c_dev.png", "d_dirlink.png", "e.gif", "f_dir.png"]
    assert "error" not in lines["a_good.png"] and "FIFO" in lines["b_pipe.png"]["error"]
    assert "character device" in lines["c_dev.png"]["error"] and "symbolic link to a folder" in lines["d_dirlink.png"]["error"]
    assert "unsupported image format 'GIF'" in lines["e.gif"]["error"] and "is a folder" in lines["f_dir.png"]["error"]


def test_a_missing_path_among_many_gets_its_own_line(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    images = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[:2]
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    r = invoke("infer", bundle, images[0], tmp_path / "nope.png", tmp_path / "dangling.png", images[1])
    assert r.exit_code == EXIT_SOME_FAILED
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [("error" in row) for row in rows] == [False, True, True, False]
    assert rows[1]["error"] == "file does not exist" and "broken symbolic link" in rows[2]["error"]


def test_multi_frame_file_gets_a_note(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "pages.tif"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(path, save_all=True, append_images=[Image.new("RGB", (64, 64))])
    r = invoke("infer", bundle, path)
    row = json.loads(r.stdout.splitlines()[0])
    assert r.exit_code == 0 and row["note"] == "the file holds 2 frames (pages); scored the first"


# ------------------------------------------------------------------ a folder of awkward and broken files
def test_infer_on_the_bad_image_corpus(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    import shutil

    from badimages import NOTES, write_corpus

    folder = tmp_path / "mixed"
    expected = write_corpus(folder)
    good = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[:2]
    for p in good:
        shutil.copy(p, folder / f"good_{p.name}")
        expected[f"good_{p.name}"] = None
    r = invoke("infer", bundle, folder, "--batch-size", 1)
    assert r.exit_code == EXIT_SOME_FAILED
    rows = {Path(d["path"]).name: d for d in (json.loads(x) for x in r.stdout.splitlines() if x.startswith("{"))}
    assert sorted(rows) == sorted(expected)
    for name, want in expected.items():
        row = rows[name]
        if want is None:
            assert "error" not in row and 0.0 <= row["normalized_score"] <= 1.0, (name, row)
            assert row.get("note") == NOTES.get(name), name
        else:
            assert want in row.get("error", ""), (name, row)
    clean = invoke("infer", bundle, *good, "--batch-size", 1)
    for line in clean.stdout.splitlines():
        row = json.loads(line)
        assert rows[f"good_{Path(row['path']).name}"]["image_score"] == row["image_score"]


def test_read_only_output_folder_is_refused_before_scoring(bundle: Path, dataset: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Root may write anywhere, so the permission answer is what os.access is made to say."""
    import adx_runtime.inputs as app_mod  # where the CLI's output checks live

    locked = tmp_path / "ro"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(app_mod.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    image = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[0]
    r = invoke("infer", bundle, image, "-o", locked / "s.jsonl")
    assert r.exit_code == 1 and "is not writable (permission denied)" in r.stderr and not r.stdout.strip()
    r = invoke("infer", bundle, image, "--save-maps", locked / "maps")
    assert r.exit_code == 1 and "is not writable" in r.stderr and not r.stdout.strip()


def test_recursive_scan_follows_folder_links_but_not_loops(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    import shutil

    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(sorted((dataset / "weave" / "test" / "good").glob("*.png"))[0], real / "x.png")
    top = tmp_path / "top"
    top.mkdir()
    (top / "linked").symlink_to(real)
    (top / "loop").symlink_to(top)
    paths = expand_inputs([str(top)], recursive=True)
    assert sorted(str(p.relative_to(top)) for p in paths) == ["linked/x.png", "loop"]
    r = invoke("infer", bundle, top, "--recursive")
    rows = {Path(d["path"]).name: d for d in (json.loads(x) for x in r.stdout.splitlines() if x.startswith("{"))}
    assert "error" not in rows["x.png"] and "symbolic link to a folder" in rows["loop"]["error"]
    assert r.exit_code == EXIT_SOME_FAILED


def test_a_non_finite_model_score_is_an_error_line_not_a_label(bundle: Path, dataset: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from adx_runtime.predictor import Predictor

    real = Predictor.predict_tensor

    def nan_first(self, x):
        pred = real(self, x)
        pred.image_scores[0] = np.nan
        return pred

    monkeypatch.setattr(Predictor, "predict_tensor", nan_first)
    images = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[:2]
    r = invoke("infer", bundle, *images, "--batch-size", 2)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == EXIT_SOME_FAILED and "NaN" not in r.stdout
    assert "non-finite score" in rows[0]["error"] and rows[1]["label"] in ("normal", "anomalous")


@pytest.mark.parametrize("method", ["padim", "patchcore"])
def test_bench_fit_runs_methods_without_a_bank_option(method: str, tmp_path: Path) -> None:
    """bench-fit once passed --bank faiss to every method, and PaDiM refuses a bank option."""
    result = invoke("bench-fit", "--method", method, "--n-train", "6", "--data-size", "64", "--image-size", "64",
                    "--backbone", "test_efficientnet", "--weights", "random", "-q", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["method"] == method
