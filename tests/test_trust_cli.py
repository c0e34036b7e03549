"""Issue 16, the CLI surface: no silent overwrite of a user's folder, one-line errors for a missing
extra before any work, file names that survive JSON, readable help at 80 columns, and heatmap names
that do not depend on the rest of the batch."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adx_cli.app import app
from adx_runtime.errors import ConfigError
from adx_runtime.triton_repo import write_repository

runner = CliRunner()


def invoke(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------------------ item 7: triton-repo
def test_triton_repo_refuses_an_ordinary_folder_and_keeps_its_readme(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my own notes\n")
    r = invoke("triton-repo", bundle, "--out", out)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "not a Triton model repository written by adx" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (out / "README.md").read_text() == "my own notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]  # nothing written next to it
    r = invoke("export", bundle, "--format", "triton", "--out", out)
    assert r.exit_code == 1 and (out / "README.md").read_text() == "my own notes\n"


def test_triton_repo_keeps_a_readme_the_user_changed_in_its_repository(bundle: Path, npz_bundle: Path,
                                                                       tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_repository(bundle, root)
    assert (root / "adexport-repository.json").is_file()
    (root / "README.md").write_text("deployment notes\n")
    with pytest.raises(ConfigError, match="README.md"):
        write_repository(npz_bundle, root)
    assert (root / "README.md").read_text() == "deployment notes\n"
    assert not (root / "patchcore_weave" / "2").exists()


def test_triton_repo_adds_versions_to_its_own_and_to_an_older_repository(bundle: Path, npz_bundle: Path,
                                                                         tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_repository(bundle, root)
    (root / "adexport-repository.json").unlink()  # as written by adexport 0.1.0, which had no marker
    second = write_repository(npz_bundle, root)
    assert second.version == 2
    marker = json.loads((root / "adexport-repository.json").read_text())
    assert "README.md" in marker["files"] and "patchcore_weave/config.pbtxt" in marker["files"]


def test_triton_repo_refuses_a_model_folder_it_did_not_write(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_repository(bundle, root, name="first")
    (root / "mine_graph").mkdir()
    (root / "mine_graph" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="mine_graph"):
        write_repository(bundle, root, name="mine")
    assert [p.name for p in (root / "mine_graph").iterdir()] == ["notes.txt"]


def test_an_empty_folder_is_fine(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert write_repository(bundle, tmp_path / "empty").version == 1


# --------------------------------------------------------------- item 13: missing extras, up front
def test_train_without_torch_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch, dataset: Path,
                                                          tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec and import both see "not installed"
    for name in [m for m in sys.modules if m == "adexport" or m.startswith("adexport.")]:
        monkeypatch.delitem(sys.modules, name)
    for args in (["train", dataset, "-c", "weave", "--out", tmp_path / "m"], ["methods"],
                 ["export", tmp_path, "--out", tmp_path / "b"], ["demo", "--out", tmp_path / "d"],
                 ["bench-fit"]):
        r = invoke(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs PyTorch" in lines[0] and "pip install 'adexport[train" in lines[0], lines
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()


def test_eval_and_calibrate_check_scikit_learn_before_scoring(monkeypatch: pytest.MonkeyPatch, bundle_copy: Path,
                                                              dataset: Path) -> None:
    from adx_runtime import predictor

    monkeypatch.setitem(sys.modules, "sklearn", None)

    def no_scoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored before checking the eval extra")

    monkeypatch.setattr(predictor.Predictor, "load", no_scoring)
    monkeypatch.setattr(predictor.Predictor, "predict_files", no_scoring)
    for command in ("eval", "calibrate"):
        r = invoke(command, bundle_copy, dataset, "-c", "weave", "-q")
        assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.exception
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "scikit-learn" in lines[0] and "pip install 'adexport[eval]'" in lines[0], lines


def test_eval_report_checks_matplotlib_before_scoring(monkeypatch: pytest.MonkeyPatch, bundle: Path,
                                                      dataset: Path, tmp_path: Path) -> None:
    from adx_runtime import predictor

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(predictor.Predictor, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored")))
    r = invoke("eval", bundle, dataset, "-c", "weave", "--report", tmp_path / "rep", "-q")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert "matplotlib" in r.stderr and "'adexport[eval]'" in r.stderr


# ------------------------------------------------------------------ item 17b: non-UTF-8 file names
def _strict_strings(value: object) -> None:
    """Every string must be valid Unicode text (no lone surrogates), as I-JSON, jq and node require."""
    if isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, dict):
        for k, v in value.items():
            _strict_strings(k)
            _strict_strings(v)
    elif isinstance(value, list):
        for v in value:
            _strict_strings(v)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores arbitrary bytes")
def test_a_non_utf8_file_name_round_trips_through_json_and_csv(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/bad\xff.png"
    good = sorted((dataset / "weave" / "test" / "good").glob("*.png"))[0]
    shutil.copy(good, os.fsdecode(raw))
    shutil.copy(good, folder / "plain.png")
    out = tmp_path / "s.jsonl"
    r = invoke("infer", bundle, folder, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    text = out.read_bytes().decode("utf-8")  # strict
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        _strict_strings(row)
    bad = next(row for row in rows if "path_bytes" in row)
    assert base64.b64decode(bad["path_bytes"]) == raw
    assert bad["image_score"] is not None and "\ufffd" in bad["path"]
    plain = next(row for row in rows if row["path"].endswith("plain.png"))
    assert "path_bytes" not in plain  # only where the name is not UTF-8
    assert bad["image_score"] == pytest.approx(plain["image_score"])

    out_csv = tmp_path / "s.csv"
    r = invoke("infer", bundle, folder, "-o", out_csv, "--format", "csv", "-q")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out_csv.read_bytes().decode("utf-8"))))
    assert [base64.b64decode(row["path_bytes"]) for row in rows if row["path_bytes"]] == [raw]


# --------------------------------------------------------------------------- friction: --help at 80
def _commands() -> dict:
    import typer.main

    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", [None, *sorted(_commands())])
def test_help_is_readable_at_80_columns(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    r = runner.invoke(app, args, env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    out = r.output
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" not in out and "<bool>" not in out and "\\[" not in out
    if command is None:
        flat = re.sub(r"\s+", " ", out)
        for name, cmd in _commands().items():
            assert re.search(rf"^\s+{re.escape(name)}\b", out, re.M), name
            first = " ".join((cmd.help or "").split("\n\n")[0].split())
            assert first and first in flat, (name, first)  # the summary in full, not cut with "..."
        return
    cmd = _commands()[command]
    usage = next(line for line in lines if line.startswith("Usage:"))
    for param in cmd.params:
        if param.param_type_name == "argument":
            assert param.name.upper() in usage, (usage, param.name)
            assert "{" not in usage
        elif not getattr(param, "hidden", False):  # a deprecated old name is left out of --help on purpose
            for opt in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"(^|[\s,/]){re.escape(opt)}([\s,=]|$)", out, re.M), f"{command}: {opt} cut"
    flat = re.sub(r"\s+", " ", out)
    defaults = [p for p in cmd.params if p.param_type_name == "option" and not p.is_flag
                and p.default not in (None, ()) and p.show_default is not False]
    for p in defaults:
        shown = p.default if not isinstance(p.default, Path) else str(p.default)
        assert f"[default: {shown}]" in flat or f"default: {shown};" in flat, (command, p.name, shown)


# ------------------------------------------------------------------------- friction: heatmap names
def test_heatmap_name_does_not_depend_on_the_rest_of_the_batch(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    test = dataset / "weave" / "test"
    good = test / "good" / "000.png"
    others = [good, test / "good" / "001.png", *sorted(test.glob("[!g]*/001.png"))]  # 001.png twice: a collision
    alone = _records(invoke("infer", bundle, good, "--save-maps", tmp_path / "a").stdout)
    batch = _records(invoke("infer", bundle, *others, "--save-maps", tmp_path / "b").stdout)
    folders = _records(invoke("infer", bundle, test / "good", test / "hole", "--save-maps", tmp_path / "c").stdout)
    names = []
    for recs, root in ((alone, "a"), (batch, "b"), (folders, "c")):
        rec = next(rec for rec in recs if rec["path"] == str(good))
        names.append(Path(rec["heatmap"]).relative_to(tmp_path / root))
        for rec in recs:
            assert Path(rec["heatmap"]).is_file()
        assert len({rec["heatmap"] for rec in recs}) == len(recs)  # collisions resolved, none overwritten
        assert len(list((tmp_path / root).rglob("*_heatmap.png"))) == len(recs)
    assert names == [Path("000_heatmap.png")] * 3
    # the later of two files with one name gets a number, in command-line order
    assert [Path(rec["heatmap"]).name for rec in batch[1:3]] == ["001_heatmap.png", "001_2_heatmap.png"]


def test_heatmap_names_follow_the_folder_given(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    test = dataset / "weave" / "test"
    recs = _records(invoke("infer", bundle, test, "--recursive", "--save-maps", tmp_path / "m",
                           "--raw-maps", "npy").stdout)
    assert recs
    for rec in recs:
        rel = Path(rec["path"]).relative_to(test).with_suffix("")
        assert rec["heatmap"] == str(tmp_path / "m" / f"{rel}_heatmap.png") and Path(rec["heatmap"]).is_file()
        assert rec["raw_map"] == str(tmp_path / "m" / f"{rel}_map.npy") and Path(rec["raw_map"]).is_file()


def test_a_map_is_never_written_over_an_input_image(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = sorted((dataset / "weave" / "test" / "good").glob("*.png"))
    shutil.copy(images[0], folder / "a.png")
    shutil.copy(images[1], folder / "a_heatmap.png")  # an input named like a.png's heatmap
    before = (folder / "a_heatmap.png").read_bytes()
    r = invoke("infer", bundle, folder, "--save-maps", folder)
    assert r.exit_code == 1 and "over the input image" in r.stderr and "Traceback" not in r.output, r.output
    assert (folder / "a_heatmap.png").read_bytes() == before
    assert not r.stdout.strip()  # refused before anything was scored
