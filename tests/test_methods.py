"""Every registered method, end to end on the tiny setup: fit, save/load, export, parity, runtime
scores against the torch reference; and each runtime scorer against brute-force numpy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CATEGORY, TINY, list_test_images
from torchfree import edge_env, make_torch_free_venv

from adexport.export import export_bundle
from adexport.fitted import load_fitted, save_fitted
from adexport.methods import METHODS
from adexport.fit_pipeline import train
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import load_image, stack

# Every method's tiny settings come from its registry entry (MethodEntry.test_options).
OPTIONS = {name: dict(entry.test_options) for name, entry in METHODS.items()}


@pytest.fixture(scope="module", params=sorted(METHODS))
def exported(request, dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    method = request.param
    fitted = train(dataset, CATEGORY, method, options=OPTIONS[method], holdout=0.25)
    root = tmp_path_factory.mktemp(method)
    save_fitted(fitted, root / "model")
    manifest = export_bundle(root / "model", root / "bundle")
    return method, fitted, root, manifest


def test_every_method_has_tiny_test_options() -> None:
    assert set(OPTIONS) == set(METHODS) and all(OPTIONS.values())


def test_export_passes_parity_and_records_the_method(exported) -> None:
    method, _, root, manifest = exported
    assert manifest["method"] == method and manifest["parity"]["passed"]
    assert all(e["max_rel"] < 1e-4 for e in manifest["parity"]["errors"].values())
    assert manifest["calibration"]["image"]["threshold"] > 0


def test_fit_report_has_the_shared_lines(exported) -> None:
    """Written once (adexport.methods.fit_report, and training.fit_network for trained networks)."""
    method, fitted, _, _ = exported
    report, trained = fitted.report, METHODS[method].trained
    shared = ["fit_images", "skipped_images"] + (["epochs", "parameters"] if trained else [])
    assert list(report.sizes)[:len(shared)] == shared and report.sizes["fit_images"] == fitted.dataset["fit_images"]
    assert report.sizes["skipped_images"] == 0 and report.skipped == []
    assert list(report.phases)[-1] == "calibration" and all(v >= 0 for v in report.phases.values())
    if trained:
        assert len(report.loss_history) == report.sizes["epochs"] == fitted.config.epochs
        assert report.sizes["parameters"] > 0 and "training" in report.phases
    else:
        assert report.loss_history == [] and len(report.phases) > 1


def test_saved_model_reloads_to_the_same_scores(exported, dataset: Path) -> None:
    _, fitted, root, _ = exported
    x = torch.from_numpy(stack([load_image(p, fitted.preprocess) for p in list_test_images(dataset)[:4]]))
    again, first = load_fitted(root / "model").reference(x), fitted.reference(x)
    torch.testing.assert_close(again.image_scores, first.image_scores)
    torch.testing.assert_close(again.anomaly_maps, first.anomaly_maps)  # both None for image-level methods


def test_runtime_matches_the_torch_reference(exported, dataset: Path) -> None:
    _, fitted, root, manifest = exported
    images = list_test_images(dataset)
    x = stack([load_image(p, fitted.preprocess) for p in images])
    ref = fitted.reference(torch.from_numpy(x))
    pred = Predictor.load(root / "bundle").predict(images)
    tol = manifest["parity"]["tolerance"]
    scale = np.abs(ref.image_scores.numpy()).max()
    assert np.abs(pred.image_scores - ref.image_scores.numpy()).max() / scale <= tol["image_scores"]
    if ref.anomaly_maps is None:  # an image-level method: no map on either side
        assert pred.anomaly_maps is None and not manifest["postprocess"]["map"]
        return
    assert np.abs(pred.anomaly_maps - ref.anomaly_maps.numpy()).max() / np.abs(ref.anomaly_maps.numpy()).max() <= tol["maps"]


def test_every_method_scores_without_torch(exported, dataset: Path, tmp_path: Path) -> None:
    """adx infer and adx eval in an environment where torch is not installed."""
    method, _, root, _ = exported
    python = make_torch_free_venv(tmp_path / "venv")
    out = tmp_path / "eval.json"
    proc = subprocess.run([str(python), "-m", "adx_cli", "eval", str(root / "bundle"), str(dataset), "-c", CATEGORY,
                           "--json", str(out), "-q"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=edge_env())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["method"] == method and result["metrics"]["n_images"] == len(list_test_images(dataset))
    expected = Predictor.load(root / "bundle").predict([r["path"] for r in result["images"]]).image_scores
    np.testing.assert_allclose([r["score"] for r in result["images"]], expected, rtol=1e-5)


# ----------------------------------------------------------------------------------------- PaDiM
def test_padim_scorer_equals_the_mahalanobis_definition() -> None:
    from adexport.methods.padim import gaussian_fit
    from adx_runtime.scorers.gaussian import mahalanobis

    rng = np.random.default_rng(0)
    train_emb = rng.standard_normal((30, 6, 5))  # (N, P, d)
    test_emb = rng.standard_normal((3, 6, 5)).astype(np.float32)
    mean, chol = gaussian_fit(torch.from_numpy(train_emb), epsilon=0.01)
    got = mahalanobis(test_emb, mean.numpy(), chol.numpy().astype(np.float32))
    for p in range(6):  # straight from eq. 2, in float64
        mu = train_emb[:, p].mean(0)
        cov = np.cov(train_emb[:, p], rowvar=False) + 0.01 * np.eye(5)
        diff = test_emb[:, p].astype(np.float64) - mu
        expected = np.sqrt(np.einsum("bd,de,be->b", diff, np.linalg.inv(cov), diff))
        np.testing.assert_allclose(got[:, p], expected, rtol=1e-5)


@pytest.mark.parametrize("d", [1, 7, 25, 26, 100, 131])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_triangular_blocks_equal_the_full_factor(d: int, threads: int) -> None:
    """The runtime keeps L as column blocks without their zero rows, split over threads; the
    distances must be those of the full lower-triangular matrices, for any d and thread count,
    from a float32 or a float16 store."""
    from adx_runtime.scorers.gaussian import TriangularBlocks, mahalanobis

    rng = np.random.default_rng(d)
    P = 37  # not a multiple of the threads or of the load chunk below
    full = np.tril(rng.standard_normal((P, d, d))).astype(np.float32)
    rows, cols = np.tril_indices(d)
    mean = rng.standard_normal((P, d)).astype(np.float32)
    emb = rng.standard_normal((3, P, d)).astype(np.float32)
    for store in (np.float32, np.float16):
        packed = full[:, rows, cols].astype(store)
        blocks = TriangularBlocks(packed, d, threads=threads, chunk=8)
        expected = mahalanobis(emb, mean, _unpack(packed, d))
        assert blocks.nbytes <= full.nbytes
        for b in (1, 3):  # batch 1 (the bandwidth-bound case) and a batch
            np.testing.assert_allclose(mahalanobis(emb[:b], mean, blocks), expected[:b], rtol=2e-5, atol=1e-6)


def _unpack(packed: np.ndarray, d: int) -> np.ndarray:
    out = np.zeros((len(packed), d, d), np.float32)
    out[:, *np.tril_indices(d)] = packed
    return out


def test_padim_graph_selects_channels_as_from_the_full_concatenation() -> None:
    """The graph picks each stage's channels before upsampling; the embedding must be the paper's:
    all stages at the first one's resolution, concatenated, then the channel subset."""
    import torch.nn.functional as F

    from adexport.backbones import create_backbone
    from adexport.methods.padim import PadimGraph, channel_subset

    extractor = create_backbone("test_efficientnet", layers=(1, 2, 3), weights="random").eval()
    channels = channel_subset(sum(extractor.info.channels), 20, seed=3)
    graph = PadimGraph(extractor, (64, 64), channels).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = extractor(x)
        full = torch.cat([feats[0]] + [F.interpolate(f, size=graph.grid, mode="nearest") for f in feats[1:]], dim=1)
        expected = full.index_select(1, channels).flatten(2).transpose(1, 2)
        torch.testing.assert_close(graph(x), expected, rtol=0, atol=0)


def test_padim_channel_subset_is_seeded() -> None:
    from adexport.methods.padim import channel_subset

    a = channel_subset(176, 100, seed=0)
    assert torch.equal(a, channel_subset(176, 100, seed=0)) and not torch.equal(a, channel_subset(176, 100, seed=1))
    assert len(set(a.tolist())) == 100 and a.tolist() == sorted(a.tolist())


def test_padim_float16_store_halves_the_file_and_stays_close(dataset: Path, tmp_path: Path) -> None:
    sizes, scores = {}, {}
    for dtype in ("float32", "float16"):
        f = train(dataset, CATEGORY, "padim", options={**TINY, "n_features": 40, "store_dtype": dtype}, holdout=0.25)
        m = export_bundle(f, tmp_path / dtype)
        sizes[dtype] = next(e["bytes"] for e in m["files"] if e["path"] == "gaussian.npz")
        scores[dtype] = Predictor.load(tmp_path / dtype).predict(list_test_images(dataset)).image_scores
        assert m["parity"]["passed"] and m["scoring"]["gaussian"]["dtype"] == dtype
    assert sizes["float16"] < 0.55 * sizes["float32"]
    np.testing.assert_allclose(scores["float16"], scores["float32"], rtol=1e-2)


# ----------------------------------------------------------------------------------------- SPADE
def test_spade_scorer_equals_brute_force(tmp_path: Path) -> None:
    import faiss

    from adx_runtime.bundle import file_entry
    from adx_runtime.scorers.gallery import GalleryScorer

    rng = np.random.default_rng(1)
    N, HW, D, C, k = 12, 16, 8, 10, 4
    img_feats = rng.standard_normal((N, C)).astype(np.float32)
    maps = rng.standard_normal((N, HW, D)).astype(np.float32)
    index = faiss.IndexFlatL2(C)
    index.add(img_feats)
    faiss.write_index(index, str(tmp_path / "g.faiss"))
    np.savez(tmp_path / "m.npz", feature_maps=maps)
    manifest = {"scoring": {"kind": "gallery", "image_output": "i", "map_output": "m", "k": k,
                            "gallery": {"images_file": "g.faiss", "maps_file": "m.npz"}},
                "postprocess": {"patch_grid": [4, 4]},
                "files": [file_entry(tmp_path, "g.faiss", "faiss"), file_entry(tmp_path, "m.npz", "npz")]}
    scorer = GalleryScorer(tmp_path, manifest, "cpu")
    q_img = rng.standard_normal((2, C)).astype(np.float32)
    q_map = rng.standard_normal((2, HW, D)).astype(np.float32)
    out = scorer({"i": q_img, "m": q_map})
    for b in range(2):
        d_img = np.linalg.norm(img_feats - q_img[b], axis=1)
        nn = np.argsort(d_img)[:k]
        assert out.image_scores[b] == pytest.approx(d_img[nn].mean(), rel=1e-5)
        gallery = maps[nn].reshape(-1, D)
        expected = np.linalg.norm(q_map[b][:, None, :] - gallery[None], axis=-1).min(axis=1)
        np.testing.assert_allclose(out.patch_maps[b].ravel(), expected, rtol=1e-4, atol=1e-5)


def test_spade_k_is_capped_at_the_gallery_size(dataset: Path) -> None:
    f = train(dataset, CATEGORY, "spade", options={**TINY, "k": 50}, holdout=0.25)
    assert f.k == f.report.sizes["fit_images"] == 12


def test_method_specific_option_on_another_method_is_refused(dataset: Path) -> None:
    from adx_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="PadimConfig has no option.*coreset_ratio"):
        train(dataset, CATEGORY, "padim", options={**TINY, "coreset_ratio": 0.5})


def test_cli_train_each_method(dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adx_cli.app import app

    for method, extra in (("padim", ["--set", "n_features=30", "--set", "store_dtype=float16"]),
                          ("spade", ["--set", "k=3"])):
        r = CliRunner().invoke(app, ["train", str(dataset), "-c", CATEGORY, "--out", str(tmp_path / method), "-m", method,
                                     "--backbone", "test_efficientnet", "--weights", "random", "--image-size", "64",
                                     "-q", *extra])
        assert r.exit_code == 0, r.output
        config = json.loads((tmp_path / method / "model.json").read_text())["config"]
        assert config == {**config, **({"n_features": 30, "store_dtype": "float16"} if method == "padim" else {"k": 3})}



def test_int8_export_passes_parity_or_is_refused_with_the_reason(exported, tmp_path: Path) -> None:
    from adx_runtime.errors import ConfigError

    method, fitted, root, _ = exported
    props = fitted.export_properties()
    if not props.int8:
        assert len(props.int8_reason) > 40
        with pytest.raises(ConfigError, match=f"{method} refuses --quantize int8: "):
            export_bundle(root / "model", tmp_path / "b", quantize="int8")
        assert not (tmp_path / "b").exists()
        return
    m = export_bundle(root / "model", tmp_path / "b", quantize="int8", quantize_images=4)
    assert m["parity"]["passed"] and m["quantization"]["op_types_quantized"]


def test_triangular_blocks_score_in_a_forked_child() -> None:
    """Worker threads do not survive a fork: a predictor loaded before forking (serving) must
    still score in the child instead of waiting forever on threads that are not there."""
    import multiprocessing

    from adx_runtime.scorers.gaussian import TriangularBlocks

    rng = np.random.default_rng(0)
    d, P = 30, 50
    blocks = TriangularBlocks(rng.standard_normal((P, d * (d + 1) // 2)).astype(np.float32), d, threads=2)
    x = rng.standard_normal((P, 1, d)).astype(np.float32)
    expected = blocks.sum_of_squares(x)  # starts the threads in this process
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=lambda: child.send(blocks.sum_of_squares(x)))  # fork: nothing is pickled
    proc.start()
    try:
        assert parent.poll(60), "the forked child did not score within 60 s"
        np.testing.assert_allclose(parent.recv(), expected, rtol=1e-6)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
