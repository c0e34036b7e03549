"""Issue 16, training side: no silent wrong verdicts, no tracebacks, no lost files.

- a checkpoint resumes only on the data and options it was written for (item 4);
- a checkpoint with the right format tag but bad contents is refused before any training (item 9);
- a damaged fitted-model folder is refused by ``load_fitted`` / ``adx export`` (item 10);
- method options are range-checked in one place, for every registered method (item 11);
- ``tensors.safetensors`` follows the umask (item 16);
- ``--overwrite`` replaces only a folder that verifies as a fitted model (item 6, fitted half).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import stat
import typing
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import CATEGORY, TINY, TINY_TRAINED

from adexport.methods import METHODS
from adexport.methods.base import make_config
from adexport.methods.options import parse_assignments
from adexport.training import (EpochDataset, TrainingOptions, TrainingRun, checkpoint_path, run_identity,
                               train_network)
from adx_cli.app import app
from adx_runtime.datasets import load_split
from adx_runtime.errors import AdxError, ConfigError
from adx_runtime.preprocess import PreprocessConfig

PRE = PreprocessConfig.square(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
RIAD = {**TINY_TRAINED["riad"], "checkpoint_every": 1}
runner = CliRunner()


def adx(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result, *words: str) -> str:
    """A handled refusal: exit 1, one line on stderr, no traceback; returns that line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an unhandled crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------ item 4: the run's identity
def _two_categories(dataset: Path, root: Path) -> Path:
    """weave from the session dataset and a generated grid: the same file names, other pictures."""
    from adx_synth import generate_demo_dataset

    shutil.copytree(dataset / CATEGORY, root / CATEGORY)
    generate_demo_dataset(root, ["grid"], n_train=16, n_test_good=1, n_test_per_defect=1, image_size=64, seed=0)
    names = sorted(p.name for p in (root / "grid" / "train" / "good").iterdir())
    assert names == sorted(p.name for p in (root / CATEGORY / "train" / "good").iterdir())  # what fooled the check
    return root


def _riad_checkpoint(data: Path, category: str, out: Path) -> Path:
    """The checkpoint `adx train -m riad` leaves after epoch 1 of 2, beside ``out``."""
    from adexport.fit_pipeline import train

    ckpt = tmp = out.with_name("first.pt")
    train(data, category, "riad", options=RIAD, run=TrainingRun(tmp))
    assert ckpt.is_file()
    shutil.copy(ckpt, checkpoint_path(out))
    return checkpoint_path(out)


def test_checkpoint_of_another_category_with_the_same_file_names_is_refused(dataset: Path, tmp_path: Path) -> None:
    from adexport.fit_pipeline import run_training

    data = _two_categories(dataset, tmp_path / "data")
    out = tmp_path / "grid_model"
    _riad_checkpoint(data, CATEGORY, out)
    with pytest.raises(ConfigError) as exc:
        run_training(data, out, "grid", "riad", shortcuts=RIAD, resume=True)
    text = one_line(exc)
    assert "different run" in text and "'weave'" in text and "'grid'" in text and "without --resume" in text
    assert not out.exists()  # nothing written
    # The same command on the data it was written for goes on from it.
    run_training(data, out, CATEGORY, "riad", shortcuts=RIAD, resume=True)
    assert (out / "model.json").is_file()


def test_run_identity_follows_file_contents_not_names(dataset: Path, tmp_path: Path) -> None:
    from PIL import Image

    copy = tmp_path / "copy"
    shutil.copytree(dataset / CATEGORY, copy / CATEGORY)
    config = make_config(METHODS["riad"].config_cls, RIAD)
    ident = lambda root: run_identity("riad", config, load_split(root, CATEGORY, need_test=False).train)  # noqa: E731
    assert ident(dataset) == ident(copy)  # the same pictures elsewhere: the same run
    first = sorted((copy / CATEGORY / "train" / "good").iterdir())[0]
    img = Image.open(first).convert("RGB")
    img.putpixel((0, 0), tuple(255 - c for c in img.getpixel((0, 0))))
    img.save(first)
    assert ident(dataset) != ident(copy)  # one pixel of one image differs: another run
    changed = make_config(METHODS["riad"].config_cls, {**RIAD, "lr": 0.5})
    assert run_identity("riad", changed, load_split(dataset, CATEGORY, need_test=False).train) != ident(dataset)


# ------------------------------------------------------------------ item 9: damaged checkpoints
from test_training import Toy  # noqa: E402  (the same small net the training tests resume)


@pytest.fixture(scope="module")
def toy_data(dataset: Path) -> EpochDataset:
    return EpochDataset(load_split(dataset, CATEGORY, need_test=False).train[:8], PRE)


OPTS = TrainingOptions(epochs=4, batch_size=4, lr=0.01, checkpoint_every=2)


@pytest.fixture(scope="module")
def toy_checkpoint(toy_data: EpochDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = tmp_path_factory.mktemp("ckpt") / "run.checkpoint.pt"
    torch.manual_seed(0)
    train_network(Toy(), _toy_loss, toy_data, OPTS, identity={"t": 1}, run=TrainingRun(ckpt))
    return ckpt


def _toy_loss(model: nn.Module, batch: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
    return ((model(batch["image"]) - batch["image"]) ** 2).mean()


def _damage(src: Path, dst: Path, change: typing.Callable[[dict], None]) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, dst)
    return dst


def _set(key: str, value: object) -> typing.Callable[[dict], None]:
    return lambda s: s.__setitem__(key, value)


def _bad_weight(s: dict) -> None:
    s["model"]["net.0.weight"] = torch.zeros(5, 3, 3, 3)  # 5 filters where the model has 4


def _bad_moment(s: dict) -> None:
    s["optimizer"]["state"][0]["exp_avg"] = torch.zeros(7)


DAMAGES = {
    "no identity": (lambda s: s.pop("identity"), "identity"),
    "epoch is text": (_set("epoch", "abc"), "epoch"),
    "negative epoch": (_set("epoch", -1), "epoch"),
    "state dict size mismatch": (_bad_weight, "net.0.weight"),
    "history not a list": (_set("history", "abc"), "history"),
    "history shorter than epochs": (_set("history", [0.5]), "history"),
    "NaN in the history": (_set("history", [0.5, math.nan]), "history"),
    "optimizer moment shape": (_bad_moment, "optimizer"),
    "NaN weights": (lambda s: s["model"]["net.0.weight"].fill_(math.nan), "net.0.weight"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_damaged_checkpoint_is_refused_before_training(case: str, toy_checkpoint: Path, toy_data: EpochDataset,
                                                       tmp_path: Path) -> None:
    change, word = DAMAGES[case]
    ckpt = _damage(toy_checkpoint, tmp_path / "bad.pt", change)
    calls = {"n": 0}

    def counting_loss(model, batch, g):
        calls["n"] += 1
        return _toy_loss(model, batch, g)

    with pytest.raises(ConfigError) as exc:
        train_network(Toy(), counting_loss, toy_data, OPTS, identity={"t": 1}, run=TrainingRun(ckpt, resume=True))
    text = one_line(exc)
    assert str(ckpt) in text and word in text and "delete it" in text and "--resume" in text
    assert calls["n"] == 0  # refused before any training step


def test_undamaged_checkpoint_still_resumes(toy_checkpoint: Path, toy_data: EpochDataset, tmp_path: Path) -> None:
    ckpt = shutil.copy(toy_checkpoint, tmp_path / "ok.pt")
    history = train_network(Toy(), _toy_loss, toy_data, OPTS, identity={"t": 1}, run=TrainingRun(Path(ckpt), resume=True))
    assert len(history) == 4 and all(math.isfinite(h) for h in history)


def test_checkpoint_with_a_text_history_writes_no_model_folder(dataset: Path, tmp_path: Path) -> None:
    from adexport.fit_pipeline import run_training

    out = tmp_path / "model"
    ckpt = _riad_checkpoint(dataset, CATEGORY, out)
    _damage(ckpt, ckpt, _set("history", "abc"))
    with pytest.raises(ConfigError) as exc:
        run_training(dataset, out, CATEGORY, "riad", shortcuts=RIAD, resume=True)
    assert "history" in one_line(exc) and str(ckpt) in one_line(exc)
    assert not out.exists() and ckpt.is_file()  # nothing written, the checkpoint kept for the user to judge


# ------------------------------------------------------------------ item 10: damaged fitted models
def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "tensors.safetensors"))


def _save_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))


def _edit_meta(folder: Path, change: typing.Callable[[dict], None]) -> None:
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))  # json writes NaN as a bare NaN token


def _append(folder: Path) -> None:
    with open(folder / "model.json", "a") as f:
        f.write("}}")


def _nan_threshold(folder: Path) -> None:
    _edit_meta(folder, lambda m: m["calibration"]["image"].__setitem__("threshold", math.nan))


def _huge_threshold(folder: Path) -> None:
    text = (folder / "model.json").read_text()
    meta = json.loads(text)
    t = meta["calibration"]["image"]["threshold"]
    (folder / "model.json").write_text(text.replace(json.dumps(t), "1e999", 1))  # parses as infinity


def _renamed(folder: Path) -> None:
    _edit_meta(folder, lambda m: m.__setitem__("method", "padim"))


def _unknown(folder: Path) -> None:
    _edit_meta(folder, lambda m: m.__setitem__("method", "patchcore2"))


def _no_config(folder: Path) -> None:
    _edit_meta(folder, lambda m: m.pop("config"))


def _bad_config(folder: Path) -> None:
    _edit_meta(folder, lambda m: m["config"].__setitem__("num_neighbors", "three"))


def _corrupt(folder: Path) -> None:
    path = folder / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16  # the JSON header
    path.write_bytes(bytes(data))


def _truncated(folder: Path) -> None:
    path = folder / "tensors.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bank_columns_cut(folder: Path) -> None:
    t = _tensors(folder)
    t["memory_bank"] = t["memory_bank"][:, :-3]
    _save_tensors(folder, t)


def _bank_nan(folder: Path) -> None:
    t = _tensors(folder)
    t["memory_bank"][0, 0] = math.nan
    _save_tensors(folder, t)


def _missing_tensor(folder: Path) -> None:
    t = _tensors(folder)
    t.pop("memory_bank")
    _save_tensors(folder, t)


FITTED_DAMAGES = {
    "}} appended to model.json": (_append, "model.json"),
    "NaN threshold": (_nan_threshold, "NaN"),
    "infinite threshold": (_huge_threshold, "model.json"),
    "method renamed to another method": (_renamed, "padim"),
    "method renamed to an unknown one": (_unknown, "patchcore2"),
    "config removed": (_no_config, "config"),
    "config value of the wrong type": (_bad_config, "num_neighbors"),
    "corrupt safetensors": (_corrupt, "tensors.safetensors"),
    "truncated safetensors": (_truncated, "tensors.safetensors"),
    "bank columns cut": (_bank_columns_cut, "tensors.safetensors"),
    "NaN in the bank": (_bank_nan, "memory_bank"),
    "bank missing": (_missing_tensor, "memory_bank"),
}


@pytest.mark.parametrize("case", sorted(FITTED_DAMAGES))
def test_damaged_fitted_model_is_refused_by_export(case: str, model_dir: Path, tmp_path: Path) -> None:
    damage, word = FITTED_DAMAGES[case]
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    damage(folder)
    line = assert_refused(adx("export", folder, "--out", tmp_path / "bundle", "-q"), word)
    assert "adx train" in line  # how to fix it
    assert not (tmp_path / "bundle").exists()


def test_a_nan_threshold_is_never_written(fitted, tmp_path: Path) -> None:
    import copy

    from adexport.fitted import save_fitted

    bad = copy.copy(fitted)
    bad.calibration = {**fitted.calibration, "image": {**fitted.calibration["image"], "threshold": math.nan}}
    with pytest.raises(ConfigError, match="NaN or infinite values.*nothing was written"):
        save_fitted(bad, tmp_path / "m")
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


def test_undamaged_fitted_model_loads(model_dir: Path) -> None:
    from adexport.fitted import load_fitted

    fitted = load_fitted(model_dir)
    assert fitted.name == "patchcore" and math.isfinite(fitted.calibration["image"]["threshold"])


# ------------------------------------------------------------------ item 11: option ranges
def _numeric_fields(config_cls: type) -> dict[str, typing.Any]:
    """Fields whose type holds int or float (alone, optional, or in a tuple), by name -> type."""
    hints = typing.get_type_hints(config_cls)
    out = {}
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        args = set(typing.get_args(tp)) | {tp}
        for a in list(args):
            args |= set(typing.get_args(a))
        if args & {int, float}:
            out[f.name] = tp
    return out


def _refused(method: str, assignment: str) -> str:
    entry = METHODS[method]
    options = {**({} if method in TINY_TRAINED else TINY), **TINY_TRAINED.get(method, {})}
    with pytest.raises(ConfigError) as exc:
        make_config(entry.config_cls, {**options, **parse_assignments(entry.config_cls, [assignment])})
    text = one_line(exc)
    key = assignment.split("=")[0]
    assert f"{key} must be" in text, text  # names the option and says what is valid
    return text


ISSUE_CASES = [("patchcore", "blur_sigma=inf", "finite"), ("padim", "blur_sigma=inf", "finite"),
               ("spade", "blur_sigma=-inf", "finite"), ("rd4ad", "blur_sigma=nan", "finite"),
               ("padim", "epsilon=nan", "> 0"), ("rd4ad", "betas=nan,0.9", "[0, 1)"),
               ("rd4ad", "betas=0.5,1.0", "[0, 1)"), ("patchcore", "projection_dim=0", ">= 1"),
               ("riad", "mask_seed=-1", "[0, 4294967295]"), ("patchcore", "seed=-1", "[0, 4294967295]"),
               ("riad", "seed=100000000000000000000", "[0, 4294967295]"),
               ("padim", "seed=4294967296", "[0, 4294967295]"), ("cutpaste", "lr=inf", "finite"),
               ("prnet", "p_anomaly=nan", "[0, 1]"), ("riad", "lambda_gms=nan", ">= 0"),
               ("cutpaste", "momentum=-0.5", "[0, 1)"), ("riad", "cell_sizes=4,0", ">= 1"),
               ("spade", "map_stride=0", ">= 1"), ("patchcore", "coreset_ratio=nan", "(0, 1]"),
               ("rd4ad", "width=inf", "finite")]


@pytest.mark.parametrize("method,assignment,valid", ISSUE_CASES)
def test_out_of_range_options_are_refused_naming_the_range(method: str, assignment: str, valid: str) -> None:
    assert valid in _refused(method, assignment)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_refuses_non_finite_numbers_and_bad_seeds(method: str) -> None:
    fields = _numeric_fields(METHODS[method].config_cls)
    floats = [n for n, tp in fields.items() if float in {tp, *typing.get_args(tp)}]
    assert floats and "seed" in fields
    cls = METHODS[method].config_cls
    for name in floats:
        for bad in ("nan", "inf", "-inf"):
            assert f"got {bad}" in _refused(method, f"{name}={_with_first(cls, name, bad)}")
    for bad in ("-1", str(2 ** 32)):
        _refused(method, f"seed={bad}")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_numeric_option_has_a_declared_range(method: str) -> None:
    from adexport.methods.options import option_limits

    cls = METHODS[method].config_cls
    limits = option_limits(cls)
    fields = set(_numeric_fields(cls)) - {"layers"}  # stages by index (negative: from the end) or name
    assert fields <= set(limits), sorted(fields - set(limits))
    for name in sorted(fields):  # the nearest value below the range is refused
        if limits[name].lo is not None:
            _refused(method, f"{name}={_below(cls, name, limits[name])}")


def _below(cls: type, name: str, limit) -> str:
    """``--set`` text of the value just below ``limit`` for option ``name``."""
    below = limit.lo if limit.lo_open else limit.lo - 1
    tp = typing.get_type_hints(cls)[name]
    kinds = {tp, *typing.get_args(tp)}
    kinds |= {a for k in list(kinds) for a in typing.get_args(k)}
    return _with_first(cls, name, repr(float(below)) if float in kinds else str(int(below)))


def _with_first(cls: type, name: str, text: str) -> str:
    """``text`` as the value of ``name``; a fixed-size tuple keeps the rest of its default."""
    tp = typing.get_type_hints(cls)[name]
    if typing.get_origin(tp) is tuple and typing.get_args(tp)[-1] is not Ellipsis:
        default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        text = ",".join([text, *[str(v) for v in default[1:]]])
    return text


def test_defaults_and_tiny_settings_of_every_method_are_valid() -> None:
    for name, entry in METHODS.items():
        entry.config_cls()
        make_config(entry.config_cls, {**({} if name in TINY_TRAINED else TINY), **TINY_TRAINED.get(name, {})})


def test_cli_refuses_bad_values_in_one_line(dataset: Path, tmp_path: Path) -> None:
    base = ("train", dataset, "-c", CATEGORY, "-q", "--backbone", "test_efficientnet", "--weights", "random",
            "--image-size", "64")
    for extra, words in [(("--set", "blur_sigma=inf"), ("blur_sigma", "finite")),
                         (("-m", "padim", "--set", "epsilon=nan"), ("epsilon", "> 0")),
                         (("--set", "seed=100000000000000000000"), ("seed", "4294967295")),
                         (("--seed", "-1"), ("seed", "4294967295")),
                         (("--set", "projection_dim=0"), ("projection_dim", ">= 1")),
                         (("--batch-size", "0"), ("--batch-size", ">= 1"))]:
        out = tmp_path / "m"
        assert_refused(adx(*base, "--out", out, *extra), *words)
        assert not out.exists()


# ------------------------------------------------------------------ item 16: file modes
def test_fitted_model_files_follow_the_umask(fitted, tmp_path: Path) -> None:
    from adexport.fitted import save_fitted

    old = os.umask(0o022)
    try:
        folder = save_fitted(fitted, tmp_path / "m022")
        os.umask(0o077)
        private = save_fitted(fitted, tmp_path / "m077")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == {"model.json": 0o644, "tensors.safetensors": 0o644}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in private.iterdir()} == {0o600}


# ------------------------------------------------------------------ item 6: --overwrite
def _fake_model(folder: Path) -> None:
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"format": "adexport-fitted-model", "version": 1}))


@pytest.mark.parametrize("case", ["user folder named like a model file", "user folder beside", "symlink",
                                  "tensors not safetensors", "no tensors", "loss curve not a PNG"])
def test_overwrite_keeps_a_folder_that_is_not_a_fitted_model(case: str, fitted, model_dir: Path,
                                                             tmp_path: Path) -> None:
    from adexport.fitted import check_replaceable, save_fitted

    out = tmp_path / "out"
    if case == "user folder named like a model file":
        _fake_model(out)
        (out / "tensors.safetensors").mkdir()
        (out / "tensors.safetensors" / "thesis.txt").write_text("mine")
    elif case == "user folder beside":
        shutil.copytree(model_dir, out)
        (out / "photos").mkdir()
        (out / "photos" / "a.jpg").write_bytes(b"x")
    elif case == "symlink":
        shutil.copytree(model_dir, out)
        (tmp_path / "precious.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (out / "loss_curve.png").symlink_to(tmp_path / "precious.png")
    elif case == "tensors not safetensors":
        _fake_model(out)
        (out / "tensors.safetensors").write_text("my notes")
    elif case == "no tensors":
        _fake_model(out)
    else:
        shutil.copytree(model_dir, out)
        (out / "loss_curve.png").write_text("my notes")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        check_replaceable(out, overwrite=True)
    with pytest.raises(AdxError):
        save_fitted(fitted, out, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_overwrite_replaces_a_fitted_model(fitted, tmp_path: Path) -> None:
    from adexport.fitted import save_fitted

    out = save_fitted(fitted, tmp_path / "m")
    first = json.loads((out / "model.json").read_text())["created_at"]
    save_fitted(fitted, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "tensors.safetensors"] and first
    assert json.loads((out / "model.json").read_text())["method"] == "patchcore"
