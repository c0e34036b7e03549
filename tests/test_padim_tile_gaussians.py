"""PaDiM's Gaussians per tile position (``tile_gaussians=per-tile``, aligned parts) against the
default shared ones (textures): the statistics of tile ``t`` come from tile ``t`` of every image, the
layout is fixed in the input contract, the runtime scores each tile with its own position's
statistics (as the torch model does), and an image of another size is refused, not scored against
another place's statistics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.preprocess import TilingSpec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("data128")
    generate_demo_dataset(root, ["grid"], n_train=6, n_test_good=2, n_test_per_defect=1, image_size=128, seed=1)
    return root


def _options(**extra) -> dict:
    from adexport.methods import METHODS

    return {**METHODS["padim"].test_options, "image_size": 64, **extra}


@pytest.fixture(scope="module")
def per_tile(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train
    from adexport.fitted import save_fitted

    fitted = train(dataset, "grid", "padim", options=_options(tile_gaussians="per-tile"), holdout=0.34,
                   tiling=TilingSpec(overlap=16))
    root = tmp_path_factory.mktemp("per-tile")
    save_fitted(fitted, root / "model")
    manifest = export_bundle(root / "model", root / "bundle")
    return fitted, root, manifest


def test_the_layout_is_fixed_and_each_tile_position_has_its_own_gaussians(per_tile, dataset: Path) -> None:
    from adexport.data import image_tiles
    from adx_runtime.datasets import load_split
    from adx_runtime.tiling import tile_layout

    fitted, _, manifest = per_tile
    assert manifest["input"]["tiling"]["fixed_size"] == [128, 128]
    assert tile_layout((128, 128), fitted.preprocess).count == 9  # 64-px tiles every 48 px
    g = manifest["scoring"]["gaussian"]
    P = fitted.graph().grid[0] * fitted.graph().grid[1]
    assert g["tiles"] == 9 and g["positions"] == 9 * P and manifest["parity"]["passed"]
    assert fitted.report.sizes["tile_sets"] == 9 and fitted.report.sizes["fit_images"] == 4
    # the mean of set t is the mean embedding of tile t over the fitted images, computed here from
    # the graph on tiles cut independently of the fit's batching
    fit_files = [s.path for s in load_split(dataset, "grid").train
                 if str(s.path.resolve()) not in fitted.dataset["holdout_files"]]
    assert len(fit_files) == 4
    with torch.no_grad():
        emb = torch.stack([fitted.graph()(torch.from_numpy(np.stack(image_tiles(f, fitted.preprocess))))
                           for f in fit_files])  # (N, 9, P, d)
    torch.testing.assert_close(fitted.mean.view(9, P, -1), emb.mean(0), rtol=1e-4, atol=1e-4)
    # the sets differ, so scoring a tile at another position's statistics gives other distances
    x = torch.from_numpy(np.stack(image_tiles(fit_files[0], fitted.preprocess)[:1]))
    at0 = fitted.reference(x, tiles=torch.tensor([0])).patch_maps
    at4 = fitted.reference(x, tiles=torch.tensor([4])).patch_maps
    assert float((at0 - at4).abs().max()) > 1e-3
    with pytest.raises(ConfigError, match="per tile position"):
        fitted.reference(x)


def test_the_runtime_scores_each_tile_at_its_position_like_the_torch_model(per_tile, dataset: Path) -> None:
    from adexport.fit_pipeline import _reference_batches
    from adx_runtime.datasets import load_split
    from adx_runtime.predictor import Predictor
    from adx_runtime.progress import SILENT

    fitted, root, manifest = per_tile
    pred = Predictor.load(root / "bundle")
    samples = load_split(dataset, "grid").test[:3]
    got = list(pred.predict_files([s.path for s in samples], batch_size=3, keep_maps=True))
    assert all(r.ok for r in got)
    want = list(_reference_batches(fitted, samples, 4, progress=SILENT))  # chunks that split an image's tiles
    tol = manifest["parity"]["tolerance"]
    ref = np.concatenate([s for s, _ in want])
    assert np.abs(np.array([r.image_score for r in got]) - ref).max() / np.abs(ref).max() <= tol["image_scores"]
    for r, (_, full) in zip(got, want):
        assert r.anomaly_map.shape == (128, 128)
        assert np.abs(r.anomaly_map - full[0]).max() / np.abs(full).max() <= tol["maps"]
    # the scorer without tile positions refuses rather than guessing
    outputs = pred.runner.run(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(ConfigError, match="per tile position"):
        pred.scorer(outputs)
    with pytest.raises(ConfigError, match="tile positions must be"):
        pred.scorer(outputs, np.array([0, 9]))


def test_an_image_of_another_size_is_refused_and_the_rest_scored(per_tile, dataset: Path, tmp_path: Path) -> None:
    from adx_runtime.datasets import load_split
    from adx_runtime.predictor import Predictor

    _, root, _ = per_tile
    good = load_split(dataset, "grid").test[0].path
    other = tmp_path / "wide.png"
    Image.open(good).resize((160, 128)).save(other)
    got = list(Predictor.load(root / "bundle").predict_files([good, other], batch_size=2))
    assert got[0].ok and not got[1].ok
    assert "160 x 128" in got[1].error and "per tile position" in got[1].error


def test_training_skips_images_of_another_size_and_needs_tiles(dataset: Path, tmp_path: Path) -> None:
    from adexport.fit_pipeline import train

    data = tmp_path / "d"
    shutil.copytree(dataset, data)
    good = sorted((data / "grid" / "train" / "good").iterdir())
    Image.open(good[-1]).resize((128, 96)).save(good[-1])  # a different size, wherever the split puts it
    fitted = train(data, "grid", "padim", options=_options(tile_gaussians="per-tile"), holdout=0.34,
                   tiling=TilingSpec(overlap=16))
    skipped = fitted.report.skipped
    assert [Path(f).name for f, _ in skipped] == [good[-1].name] and "128 x 96" in skipped[0][1]
    with pytest.raises(ConfigError, match="needs --tile"):
        train(dataset, "grid", "padim", options=_options(tile_gaussians="per-tile"), holdout=0.34)
    with pytest.raises(ConfigError, match="tile_gaussians must be one of"):
        train(dataset, "grid", "padim", options=_options(tile_gaussians="each"), holdout=0.34)


def test_shared_gaussians_stay_the_default_and_leave_the_contract_open(dataset: Path) -> None:
    from adexport.fit_pipeline import train

    fitted = train(dataset, "grid", "padim", options=_options(), holdout=0.34, tiling=TilingSpec(overlap=16))
    assert fitted.config.tile_gaussians == "shared" and fitted.tile_sets == 1
    assert "fixed_size" not in fitted.preprocess.to_dict()["tiling"]
    assert fitted.mean.shape[0] == fitted.graph().grid[0] * fitted.graph().grid[1]


def test_a_bundle_whose_sets_do_not_match_its_layout_is_refused(per_tile, tmp_path: Path) -> None:
    from adx_runtime.scorers.gaussian import GaussianScorer

    _, root, _ = per_tile
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    del manifest["input"]["tiling"]["fixed_size"]
    with pytest.raises(BundleError, match="fixes no tile layout"):
        GaussianScorer(root / "bundle", manifest, "cpu")
    manifest["input"]["tiling"]["fixed_size"] = [112, 128]  # 2 x 3 tiles, not 9
    with pytest.raises(BundleError, match="has 6 tiles"):
        GaussianScorer(root / "bundle", manifest, "cpu")
