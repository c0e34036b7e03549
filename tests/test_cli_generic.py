"""The CLI holds no per-method knowledge: every command that takes ``--method`` runs every registered
method, method options go through ``--set``, export options are flags built from the runtime's table,
and options shared by several commands are declared once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import pytest
import typer
import typer.main
from typer.testing import CliRunner

import adx_cli.app as cli
from adexport.methods import METHODS
from adx_cli.app import app
from adx_runtime.export_options import METHOD_EXPORT_OPTIONS, ExportOption, given_export_options
from conftest import CATEGORY

runner = CliRunner()


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _commands() -> dict:
    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


def tiny(method: str) -> dict[str, Any]:
    """The registry's test settings of ``method``, trained networks cut to one epoch."""
    options = dict(METHODS[method].test_options)
    if METHODS[method].trained:
        options["epochs"] = 1
    return options


def as_set_flags(options: dict[str, Any]) -> list[str]:
    """``{"k": 5, "layers": (2, 3)}`` -> ``["--set", "k=5", "--set", "layers=2,3"]``."""
    def text(v: Any) -> str:
        if isinstance(v, (tuple, list)):
            return ",".join(map(str, v))
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [item for k, v in options.items() for item in ("--set", f"{k}={text(v)}")]


def _saved_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "model.json").read_text())["config"]


def _config_has(config: dict[str, Any], options: dict[str, Any]) -> bool:
    return all(config[k] == (list(v) if isinstance(v, tuple) else v) for k, v in options.items())


# ------------------------------------------------------------------------- no method named
def test_the_cli_source_names_no_method() -> None:
    source = Path(cli.__file__).read_text(encoding="utf-8").lower()
    named = [name for name in METHODS if re.search(rf"\b{re.escape(name)}\b", source)]
    assert named == [], f"adx_cli/app.py names {named}; method knowledge belongs to the method"


def test_train_has_only_generic_shortcuts() -> None:
    """Every option of train that sets a method option is one that several methods share."""
    train = _commands()["train"]
    options = {p.name for p in train.params if p.param_type_name == "option"}
    shortcuts = {"backbone", "weights", "layers", "image_size", "epochs", "seed"}
    assert shortcuts <= options
    method_only = {f for e in METHODS.values() for f in e.config_cls.__dataclass_fields__} - shortcuts
    # train's own --batch-size is the feature-extraction batch; the optimiser's is --set batch_size=N
    assert options & method_only <= {"batch_size"}, "a method-specific option became a flag; use --set"


# ------------------------------------------------------------------------- shared declarations
@pytest.mark.parametrize("flag", ["--quiet", "--search-param", "--json", "--set", "--method", "--category"])
def test_an_option_shared_by_commands_reads_the_same_everywhere(flag: str) -> None:
    helps = {}
    for name, cmd in _commands().items():
        for p in cmd.params:
            # an export's --search-param is the table's row (a default recorded in the bundle), not the runtime's
            if flag in p.opts and p.name not in {o.name for o in METHOD_EXPORT_OPTIONS}:
                helps[name] = p.help
    assert len(helps) >= 2 and len(set(helps.values())) == 1, helps


def test_export_flags_are_built_from_the_table() -> None:
    for command in ("export", "bench-fit"):
        flags = {o for p in _commands()[command].params for o in p.opts}
        assert {o.flag for o in METHOD_EXPORT_OPTIONS} <= flags, command


def test_a_new_export_option_is_one_table_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row added to the table becomes a flag whose value reaches the command as the library takes it,
    with no edit to the command."""
    row = ExportOption("ring_size", "--ring-size", "int", "A made-up option.")
    monkeypatch.setattr(cli, "METHOD_EXPORT_OPTIONS", (*METHOD_EXPORT_OPTIONS, row))
    received: list[dict[str, Any]] = []
    toy = typer.Typer()

    @toy.command()
    @cli.with_export_options
    def run(name: str, export_options: Optional[dict[str, Any]] = None, loud: bool = False) -> None:
        received.append({"name": name, "loud": loud, **(export_options or {})})

    @toy.command()
    def other() -> None: ...

    r = runner.invoke(toy, ["run", "x", "--ring-size", "3", "--search-param", "nprobe=4", "--accept-approximate"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert received == [{"name": "x", "loud": False, "ring_size": 3, "search_params": {"nprobe": 4},
                         "accept_approximate": True}]
    r = runner.invoke(toy, ["run", "y"], catch_exceptions=False)  # nothing given, nothing sent
    assert r.exit_code == 0 and received[-1] == {"name": "y", "loud": False}


def test_given_export_options_drops_what_was_not_given_and_refuses_unknown_names() -> None:
    assert given_export_options(bank="npz", index_type=None, search_params={}, shards=2) == {"bank": "npz", "shards": 2}
    with pytest.raises(TypeError, match="ring_size"):
        given_export_options(ring_size=3)


def test_a_method_cannot_declare_an_export_option_the_table_lacks() -> None:
    from adexport.methods.base import TOLERANCE_EXACT, ExportProperties

    with pytest.raises(TypeError, match="bnak"):
        ExportProperties(TOLERANCE_EXACT, options=frozenset({"bnak"}))


def test_an_unknown_method_is_refused_with_the_registry_s_names(tmp_path: Path) -> None:
    r = invoke("train", tmp_path, "--out", tmp_path / "m", "-m", "nope")
    assert r.exit_code == 1 and "nope" in r.output and "patchcore" in r.output  # the registry lists the valid ones


# ------------------------------------------------------------------------- --set and shortcuts
def test_a_flag_and_set_for_the_same_option_are_refused(tmp_path: Path) -> None:
    r = invoke("bench-fit", "--n-train", 4, "--data-size", 32, "--image-size", 32, "--set", "image_size=64")
    assert r.exit_code == 1 and "image_size given both as a flag and with --set" in r.output
    # train merges through the same merge_options, before reading the dataset or fitting
    trained = next(name for name, e in METHODS.items() if e.trained)
    r = invoke("train", tmp_path, "--out", tmp_path / "m", "--epochs", 1, "--set", "epochs=2", "-m", trained)
    assert r.exit_code == 1 and "epochs given both as a flag and with --set" in r.output


def test_a_removed_method_flag_is_an_unknown_option(dataset: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(dataset), "-c", CATEGORY, "--out", str(tmp_path / "m"), "--coreset-ratio", "0.2"])
    assert r.exit_code == 2 and "--coreset-ratio" in r.output  # click: no such option


# ------------------------------------------------------------------------- every method, every command
@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six normal training images of 32 px: every method fits on it in seconds."""
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("small")
    generate_demo_dataset(root, [CATEGORY], n_train=6, n_test_good=2, n_test_per_defect=1, image_size=32, seed=0)
    return root


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_runs_every_method_through_set(method: str, small_data: Path, tmp_path: Path) -> None:
    options = tiny(method)
    r = invoke("train", small_data, "-c", CATEGORY, "--out", tmp_path / "m", "-m", method, "-q",
               *as_set_flags(options))
    assert r.exit_code == 0, r.output
    assert _config_has(_saved_config(tmp_path / "m"), options)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bench_fit_runs_every_method(method: str, tmp_path: Path) -> None:
    """bench-fit once read the backbone's name of a method that has none (RIAD) after training."""
    options = tiny(method)
    r = invoke("bench-fit", "-m", method, "--n-train", 6, "--data-size", 32, "-q", *as_set_flags(options),
               "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["method"] == method and _config_has(result["setup"]["config"], options)
    assert (result["setup"]["backbone"] is None) == ("backbone" not in METHODS[method].config_cls.__dataclass_fields__)
    assert f"{method} fit benchmark" in r.output


@pytest.mark.parametrize("method", sorted(METHODS))
def test_demo_hands_every_method_and_its_options_to_the_library(method: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What the demo command passes on; the demo itself (train, export, evaluate) is method-agnostic
    library code, run for real below and per method by the tests of each step."""
    import adexport.demo

    received: dict[str, Any] = {}

    def record(out: Path, categories: Any, **kwargs: Any) -> list:
        received.update(kwargs, categories=categories)
        return []

    monkeypatch.setattr(adexport.demo, "run_demo", record)
    monkeypatch.setattr(adexport.demo, "format_demo", lambda results, out: "done")
    options = tiny(method)
    r = invoke("demo", "--out", tmp_path / "d", "-m", method, "--categories", CATEGORY, "-q", *as_set_flags(options))
    assert r.exit_code == 0, r.output
    assert received["method"] == method and received["categories"] == [CATEGORY]
    assert received["options"] == options


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    method = "spade"
    r = invoke("demo", "--out", tmp_path / "d", "-m", method, "--categories", CATEGORY, "--n-train", 6,
               "--image-size", 32, "-q", *as_set_flags(tiny(method)))
    assert r.exit_code == 0, r.output
    assert re.search(rf"^{CATEGORY}\s", r.output, re.M) and (tmp_path / "d" / "bundles" / method / CATEGORY).is_dir()


def test_bench_fit_passes_export_options_to_the_export(tmp_path: Path) -> None:
    r = invoke("bench-fit", "-m", "padim", "--n-train", 4, "--data-size", 32, "-q", "--bank", "npz",
               *as_set_flags(tiny("padim")))
    assert r.exit_code == 1 and "--bank" in r.output  # padim has no memory bank: refused by its flag


def test_export_quantize_images_and_its_old_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--quantize-images (int8 activation ranges) reaches export_bundle; the old --calibration-images
    still works with a one-line note, is hidden from --help and is refused next to the new name."""
    import adexport.export

    received: dict[str, Any] = {}
    monkeypatch.setattr(adexport.export, "export_bundle", lambda model, out, **kw: received.update(kw) or {})
    monkeypatch.setattr(adexport.export, "format_export_summary", lambda manifest, out: "done")
    args = ("export", tmp_path / "model", "--out", tmp_path / "b", "--quantize", "int8")
    r = invoke(*args, "--quantize-images", 5)
    assert r.exit_code == 0, r.output
    assert received["quantize_images"] == 5 and "note:" not in r.output
    received.clear()
    r = invoke(*args)
    assert r.exit_code == 0 and "quantize_images" not in received  # export_bundle's own default applies
    r = invoke(*args, "--calibration-images", 7)
    assert r.exit_code == 0, r.output
    assert received["quantize_images"] == 7
    assert [line for line in r.output.splitlines() if "--calibration-images is now --quantize-images" in line]
    r = invoke(*args, "--calibration-images", 7, "--quantize-images", 5)
    assert r.exit_code == 1 and "give only --quantize-images" in r.output
    helptext = invoke("export", "--help").output
    assert "--quantize-images" in helptext and "--calibration-images" not in helptext
