"""The adx CLI: commands call the library, print results, and fail with a message, not a traceback."""

from __future__ import annotations

import csv
import io
import json
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
    if command == "train":
        assert promised >= 10


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
    from adexport.train import train

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
               "--image-size", 64, "--coreset-ratio", 0.2, "--k", 2, "--layers", "blocks.2,blocks.3", "-q")
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
    from adexport.train import train

    from conftest import TINY_TRAINED

    fitted = train(dataset, "weave", "rd4ad", options=TINY_TRAINED["rd4ad"], holdout=0.25)
    with pytest.raises(ConfigError, match=r"rd4ad refuses float16 TensorRT engines: .*3 significant digits"):
        export_bundle(fitted, tmp_path / "b", fmt="tensorrt", fp16=True)
    assert not (tmp_path / "b").exists()
