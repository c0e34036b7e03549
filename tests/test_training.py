"""The shared training loop: seeded epochs, schedules, checkpoints, resume, Ctrl-C, and every
registered trained method through it (resume equals an uninterrupted run; save, load, export)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CATEGORY

from adexport.methods import METHODS
from adexport.methods.fit_report import FitReport
from adexport.methods.fit_report import PhaseClock
from adexport.training import (EpochDataset, TrainingInterrupted, TrainingOptions, TrainingRun, checkpoint_path,
                               fit_network, learning_rate, run_identity, save_loss_curve, train_network)
from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from adx_runtime.preprocess import PreprocessConfig, load_image

TRAINED = [name for name, entry in METHODS.items() if entry.trained]
PRE = PreprocessConfig.square(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def samples(dataset: Path):
    return load_split(dataset, CATEGORY, need_test=False).train[:8]


class Toy(nn.Module):
    """A small autoencoder-ish net with batch norm (its running stats must survive a resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def toy_loss(model: nn.Module, batch: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
    x = batch["image"]
    noise = torch.randn(x.shape, generator=g)  # randomness from the loop's generator only
    return ((model(x + 0.1 * noise) - x) ** 2).mean()


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def test_epoch_dataset_caches_and_uses_the_runtime_preprocessing(samples) -> None:
    data = EpochDataset(samples, PRE)
    assert data.images.dtype == np.uint8 and data.images.shape == (8, 32, 32, 3)
    first = next(data.batches(0, 8, seed=0))
    order = np.random.default_rng([0, 0]).permutation(8)
    np.testing.assert_array_equal(first["image"][0].numpy(), load_image(samples[order[0]].path, PRE))
    a = [b["image"] for b in data.batches(3, 4, seed=1)]
    b = [b["image"] for b in data.batches(3, 4, seed=1)]
    c = [b["image"] for b in data.batches(4, 4, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))
    assert data.steps_per_epoch(3) == 2 and data.steps_per_epoch(100) == 1


def test_augmentation_sits_between_geometry_and_normalisation(samples) -> None:
    def flip_and_label(images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)  # geometric half, not yet normalised
        return {"image": np.concatenate([images, images[:, :, ::-1]]), "label": np.repeat([0, 1], len(images))}

    data = EpochDataset(samples, PRE, augment=flip_and_label)
    batch = next(data.batches(0, 4, seed=0))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].tolist() == [0] * 4 + [1] * 4
    torch.testing.assert_close(batch["image"][4], batch["image"][0].flip(-1))


def test_learning_rate_schedules() -> None:
    cos = TrainingOptions(epochs=4, lr=0.1, schedule="cosine")
    assert [round(learning_rate(cos, e), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]
    assert learning_rate(TrainingOptions(lr=0.1), 3) == 0.1
    with pytest.raises(ConfigError, match="optimizer 'rmsprop' is not known"):
        TrainingOptions(optimizer="rmsprop")


def test_loss_falls_and_history_is_per_epoch(samples) -> None:
    data = EpochDataset(samples, PRE)
    history = train_network(toy(), toy_loss, data, TrainingOptions(epochs=6, batch_size=4, lr=0.01),
                            identity={"t": 1})
    assert len(history) == 6 and history[-1] < 0.7 * history[0]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(samples, tmp_path: Path) -> None:
    data = EpochDataset(samples, PRE)
    opts = TrainingOptions(epochs=4, batch_size=4, lr=0.01, checkpoint_every=2, schedule="cosine")
    ident = {"t": 1}
    ckpt = tmp_path / "run.checkpoint.pt"
    full = toy()
    h_full = train_network(full, toy_loss, data, opts, identity=ident, run=TrainingRun(ckpt))
    assert ckpt.is_file()  # written after epoch 2 of 4
    resumed = toy(seed=123)  # different initial weights: everything must come from the checkpoint
    h_res = train_network(resumed, toy_loss, data, opts, identity=ident, run=TrainingRun(ckpt, resume=True))
    assert h_res == h_full
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="different run"):
        train_network(toy(), toy_loss, data, opts, identity={"t": 2}, run=TrainingRun(ckpt, resume=True))
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_network(toy(), toy_loss, data, opts, identity=ident, run=TrainingRun(tmp_path / "none.pt", resume=True))


def test_ctrl_c_leaves_a_resumable_checkpoint_of_the_last_finished_epoch(samples, tmp_path: Path) -> None:
    data = EpochDataset(samples, PRE)
    opts = TrainingOptions(epochs=3, batch_size=4, lr=0.01, checkpoint_every=0)
    ckpt = tmp_path / "c.pt"
    calls = {"n": 0}

    def interrupting_loss(model, batch, g):
        calls["n"] += 1
        if calls["n"] == 4:  # second step of epoch 2: the weights are mid-epoch
            raise KeyboardInterrupt
        return toy_loss(model, batch, g)

    with pytest.raises(TrainingInterrupted, match=r"epoch 2 of 3.*--resume"):
        train_network(toy(), interrupting_loss, data, opts, identity={}, run=TrainingRun(ckpt))
    resumed = toy(seed=5)
    h_res = train_network(resumed, toy_loss, data, opts, identity={}, run=TrainingRun(ckpt, resume=True))
    full = toy()
    h_full = train_network(full, toy_loss, data, opts, identity={})
    assert h_res == h_full
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


class _Fitted:
    """Stands in for a fitted method: the report helpers touch only ``report``."""

    def __init__(self) -> None:
        self.report = FitReport()


def test_fit_network_is_the_shared_loop_plus_the_shared_report_lines(samples, dataset: Path, tmp_path: Path) -> None:
    from adexport.methods.riad import RIADConfig

    config = RIADConfig(epochs=2, batch_size=4, lr=0.01, checkpoint_every=1)
    data = EpochDataset(samples, PRE)
    reference = train_network(toy(), toy_loss, data, config, identity=run_identity("toy", config, samples))
    clock = PhaseClock()
    clock.lap("setup")
    model, ckpt = toy(), tmp_path / "toy.checkpoint.pt"
    trained = fit_network("toy", model, toy_loss, data, config, samples, clock=clock, run=TrainingRun(ckpt))
    assert trained.history == reference  # the same loop, the same seeded draws
    assert list(clock.phases) == ["setup", "training"] and clock.phases["training"] > 0
    # the checkpoint carries the run's identity (method, options, data), so --resume checks it
    assert torch.load(ckpt, weights_only=True)["identity"] == run_identity("toy", config, samples)

    model.net[0].weight.requires_grad_(False)  # counted after training: frozen parameters are not "parameters"
    frozen = fit_network("toy", model, toy_loss, data, config, samples, clock=PhaseClock())
    assert frozen.parameters == sum(p.numel() for p in model.parameters()) - model.net[0].weight.numel()

    fitted = trained.record(_Fitted(), clock, sizes={"bank": 7}, notes=["a note"])
    report = fitted.report
    assert list(report.sizes.items()) == [("fit_images", 8), ("skipped_images", 0), ("epochs", 2),
                                          ("parameters", sum(p.numel() for p in toy().parameters())), ("bank", 7)]
    assert report.loss_history == reference and report.notes == ["a note"] and report.skipped == []
    assert report.phases == clock.phases


def test_record_fit_of_a_one_pass_fit_lists_skipped_files_and_no_loss() -> None:
    from adexport.methods.fit_report import record_fit

    clock = PhaseClock()
    for phase in ("backbone_setup", "feature_extraction"):
        clock.lap(phase)
    skipped = [("a.png", "file is empty (0 bytes)")]
    report = record_fit(_Fitted(), clock, fit_images=5, skipped=skipped, sizes={"memory_bank": 3}).report
    assert list(report.sizes.items()) == [("fit_images", 5), ("skipped_images", 1), ("memory_bank", 3)]
    assert report.skipped == skipped and report.loss_history == []
    assert list(report.phases) == ["backbone_setup", "feature_extraction"] and all(v >= 0 for v in report.phases.values())


def test_prnet_real_anomalies_follow_the_datasets_mask_naming_rule(dataset: Path, tmp_path: Path) -> None:
    """Masks named like their image (not <name>_mask.png): both the evaluation split and PRNet's
    real anomalies find them, by the one rule in adx_runtime.datasets."""
    from adexport.methods import prnet

    root = tmp_path / "data"
    shutil.copytree(dataset / CATEGORY, root / CATEGORY)
    for mask in (root / CATEGORY / "ground_truth").glob("*/*_mask.png"):
        mask.rename(mask.with_name(mask.name.replace("_mask", "")))
    split = load_split(root, CATEGORY)
    assert split.has_masks
    real = prnet.load_real_anomalies(root, CATEGORY, PRE, n_per_defect=1)
    defects = {s.defect for s in split.test if s.label == 1}
    assert set(real.per_defect) == defects and real.masks.shape == (len(defects), 1, 32, 32)
    assert all(m.max() == 1.0 for m in real.masks)  # the masks were read, not left blank


def test_loss_curve_png(tmp_path: Path) -> None:
    from PIL import Image

    path = save_loss_curve([1.0, 0.5, 0.3], tmp_path / "loss.png")
    assert path is not None and Image.open(path).size[0] > 100


def test_checkpoint_path_sits_beside_the_model_folder() -> None:
    assert checkpoint_path("runs/weave") == Path("runs/weave.checkpoint.pt")


# ----------------------------------------------------- every registered trained method, generically
@pytest.mark.parametrize("method", TRAINED)
def test_trained_method_resumes_exactly(method: str, dataset: Path, tmp_path: Path) -> None:
    from adexport.methods.base import make_config

    entry = METHODS[method]
    samples = load_split(dataset, CATEGORY, need_test=False).train[:8]
    options = {**entry.test_options, "epochs": 2, "checkpoint_every": 1}
    config = make_config(entry.config_cls, options)
    ckpt = tmp_path / "ckpt.pt"
    full = entry.fit(config, samples, run=TrainingRun(ckpt))
    assert len(full.report.loss_history) == 2
    saved = tmp_path / "after_epoch_1.pt"
    shutil.copy(ckpt, saved)
    resumed = entry.fit(config, samples, run=TrainingRun(saved, resume=True))
    assert resumed.report.loss_history == full.report.loss_history
    a, b = full.tensors(), resumed.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run_identity(method, config, samples)["method"] == method


@pytest.mark.parametrize("method", TRAINED)
def test_trained_method_keeps_its_loss_curve(method: str, dataset: Path, tmp_path: Path) -> None:
    """Export, parity and the torch-free runtime are tested for every method in test_methods.py."""
    from adexport.fitted import LOSS_CURVE, load_fitted, save_fitted
    from adexport.fit_pipeline import train

    fitted = train(dataset, CATEGORY, method, options=dict(METHODS[method].test_options), holdout=0.25)
    assert len(fitted.report.loss_history) == fitted.config.epochs
    folder = save_fitted(fitted, tmp_path / "model")
    assert (folder / LOSS_CURVE).is_file()
    assert load_fitted(folder).report.loss_history == fitted.report.loss_history


def test_corrupt_images_in_fit_and_holdout_are_skipped_and_reported(dataset: Path, tmp_path: Path) -> None:
    """A corrupt hold-out image used to kill training after the whole fit."""
    from adexport.data import holdout_split
    from adexport.fit_pipeline import format_fit_summary, train

    from conftest import TINY

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    split = load_split(root, CATEGORY, need_test=False)
    fit, held = holdout_split(split.train, 0.25, seed=0)
    fit[0].path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    held[0].path.write_bytes(b"")
    f = train(root, CATEGORY, "patchcore", options=TINY, holdout=0.25)
    skipped = dict(f.report.skipped)
    assert skipped == {str(fit[0].path): skipped[str(fit[0].path)], str(held[0].path): "file is empty (0 bytes)"}
    assert f.calibration["holdout_images"] == len(held) - 1 and f.dataset["holdout_images"] == len(held) - 1
    assert f.dataset["fit_images"] == len(fit) - 1
    text = format_fit_summary(f, 1.0, tmp_path / "m")
    assert "skipped 2 undecodable train/good images" in text


def test_no_decodable_holdout_image_stops_before_the_fit(dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from adexport.data import holdout_split
    from adexport.fit_pipeline import train
    from adx_runtime.errors import DatasetError

    from conftest import TINY

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    _, held = holdout_split(load_split(root, CATEGORY, need_test=False).train, 0.25, seed=0)
    for s in held:
        s.path.write_bytes(b"junk")
    import dataclasses

    import adexport.fit_pipeline as fit_pipeline

    never = dataclasses.replace(METHODS["patchcore"], fit=lambda *a, **k: pytest.fail("fitted anyway"))
    monkeypatch.setattr(fit_pipeline, "get_method", lambda name: never)
    with pytest.raises(DatasetError, match=f"none of the {len(held)} train/good images held out for calibration"):
        train(root, CATEGORY, "patchcore", options=TINY, holdout=0.25)


def test_holdout_message_suggests_only_what_can_help() -> None:
    from adexport.data import holdout_split
    from adx_runtime.datasets import Sample
    from adx_runtime.errors import DatasetError

    two = [Sample(Path(f"{i}.png"), "good") for i in range(2)]
    with pytest.raises(DatasetError, match=r"Add normal images\.$"):
        holdout_split(two, 0.2, seed=0)
    four = [Sample(Path(f"{i}.png"), "good") for i in range(4)]
    with pytest.raises(DatasetError, match=r"or lower --holdout \(at most 0.50 fits\)"):
        holdout_split(four, 0.9, seed=0)
