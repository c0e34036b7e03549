"""PRNet: stage shapes, prototypes (k-means, nearest prototype, residual) against brute-force numpy,
the multi-size attention's tokens, the loss against an independent numpy computation, ONNX export
(no Einsum, no grouped convolution outside the encoder, dynamic batch), the refusals (non-square,
other sizes, float16, a bad textures folder), real anomalies, and a short training run.
(Resume, save/load, runtime parity: the generic tests in test_methods.py and test_training.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CATEGORY, TINY_TRAINED, onnx_bytes

from adexport.backbones import create_backbone
from adexport.methods import prnet
from adexport.methods.prnet import (PRNetConfig, PRNetGraph, fit_prototypes, kmeans, nearest_prototype,
                                    patch_sizes, patchify, prnet_loss, prototype_residual, unpatchify)
from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from adx_runtime.preprocess import PreprocessConfig

SIZE = 64
WIDTH = 8


def tiny_graph(seed: int = 0, n_protos: int = 4, **kwargs) -> PRNetGraph:
    """A random ``test_efficientnet`` encoder (strides 4..32) and prototypes from random images."""
    encoder = create_backbone("test_efficientnet", (1, 2, 3, 4), "random", seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats = encoder(torch.randn(3 * n_protos, 3, SIZE, SIZE, generator=g))
    protos = fit_prototypes(feats, 1 / 3, seed)
    torch.manual_seed(seed)
    return PRNetGraph(encoder, protos, width=kwargs.pop("width", WIDTH), **kwargs)


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fitted(dataset: Path):
    from adexport.fit_pipeline import train

    return train(dataset, CATEGORY, "prnet", options=TINY_TRAINED["prnet"], holdout=0.25)


# --------------------------------------------------------------------------------------------- shapes
def test_every_stage_has_the_expected_shape() -> None:
    graph = tiny_graph().eval()
    info = graph.encoder.info
    assert info.strides == (4, 8, 16, 32)
    x = images(2)
    with torch.no_grad():
        s = graph.stages(x)
        logits = graph.logits(x)
        amap = graph(x)
    grids = [SIZE // st for st in info.strides]  # 16, 8, 4, 2
    assert [tuple(t.shape) for t in s["features"]] == [(2, c, h, h) for c, h in zip(info.channels, grids)]
    assert [t.shape for t in s["residuals"]] == [t.shape for t in s["features"]]
    assert [tuple(t.shape) for t in s["fused"]] == [(2, WIDTH, h, h) for h in grids]
    assert [t.shape for t in s["attended"]] == [t.shape for t in s["fused"]]
    assert [tuple(p.shape) for p in graph.prototypes()] == [(4, c, h, h) for c, h in zip(info.channels, grids)]
    assert logits.shape == (2, 1, SIZE, SIZE)
    assert amap.shape == (2, SIZE, SIZE) and amap.dtype == torch.float32
    torch.testing.assert_close(amap, torch.sigmoid(logits[:, 0]))
    sizes = [blocks[0].sizes for blocks in graph.attention]
    assert sizes == [[16, 8, 4, 2], [8, 4, 2, 1], [4, 2, 1], [2, 1]]


def test_patch_sizes_and_tokens() -> None:
    assert patch_sizes(32) == [32, 16, 8, 4]
    assert patch_sizes(4) == [4, 2, 1]  # the deepest level at 128 px
    assert patch_sizes(5) == [5]
    assert patch_sizes(1) == [1]
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    t = patchify(x, 2, 3, 4, 4)
    assert t.shape == (2, 4, 12)
    # token 1 is the top-right 2x2 patch; its channels are (channel, row, column) in that order
    np.testing.assert_array_equal(t[0, 1].numpy(), x[0, :, 0:2, 2:4].reshape(-1).numpy())
    torch.testing.assert_close(unpatchify(t, 2, 3, 4, 4), x)


# ---------------------------------------------------------------------------------------- prototypes
def test_nearest_prototype_equals_brute_force_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 5, 4, 4, generator=g) * 3 + 1
    protos = torch.randn(9, 5, 4, 4, generator=g) * 3 + 1
    f64, p64 = f.double().numpy(), protos.double().numpy()
    d = ((f64[:, None] - p64[None]) ** 2).reshape(6, 9, -1).sum(-1)
    want = d.argmin(1)
    assert len(set(want.tolist())) > 2  # not all the same prototype: the test can fail
    np.testing.assert_array_equal(nearest_prototype(f, protos).numpy(), want)
    np.testing.assert_allclose(prototype_residual(f, protos).numpy(), (f64 - p64[want]) ** 2, rtol=1e-5, atol=1e-5)


def test_graph_residuals_are_squared_differences_to_the_nearest_prototype() -> None:
    graph = tiny_graph(seed=2).eval()
    x = images(3, seed=4)
    with torch.no_grad():
        s = graph.stages(x)
    for f, r, p in zip(s["features"], s["residuals"], graph.prototypes()):
        f64, p64 = f.double().numpy(), p.double().numpy()
        nn_idx = ((f64[:, None] - p64[None]) ** 2).reshape(len(f64), len(p64), -1).sum(-1).argmin(1)
        np.testing.assert_allclose(r.numpy(), (f64 - p64[nn_idx]) ** 2, rtol=1e-4, atol=1e-5)


def test_kmeans_is_seeded_and_finds_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20)) * 20
    labels = rng.permutation(np.repeat(np.arange(3), 10))
    x = torch.from_numpy(centres[labels] + rng.normal(size=(30, 20)))
    got = kmeans(x, 3, seed=0)
    assert torch.equal(got, kmeans(x, 3, seed=0))
    assert got.shape == (3, 20) and got.dtype == torch.float32
    # each found centre is the mean of one true cluster
    means = np.stack([x.numpy()[labels == j].mean(0) for j in range(3)])
    order = np.linalg.norm(got.numpy()[:, None].astype(np.float64) - means[None], axis=-1).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(got.numpy(), means[order], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="1 <= k <= N"):
        kmeans(x, 31)


def test_prototype_count_is_about_ten_percent() -> None:
    assert [prnet.prototype_count(n, 0.1) for n in (3, 12, 48, 200)] == [1, 1, 5, 20]
    assert prnet.prototype_count(4, 1.0) == 4


# ------------------------------------------------------------------------------------------------ loss
def np_loss(z: np.ndarray, m: np.ndarray, alpha: float = 0.5, gamma: float = 4.0) -> float:
    p = 1.0 / (1.0 + np.exp(-z))
    d = np.abs(p - m)
    smooth_l1 = np.where(d < 1.0, 0.5 * d * d, d - 0.5).mean()
    focal = -(alpha * m * (1 - p) ** gamma * np.log(p) + (1 - alpha) * (1 - m) * p**gamma * np.log(1 - p))
    return float(smooth_l1 + 5.0 * focal.mean())


def test_loss_equals_an_independent_numpy_computation() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 5, 5, generator=g) * 3
    m = (torch.rand(2, 1, 5, 5, generator=g) > 0.6).float()
    assert float(prnet_loss(z, m)) == pytest.approx(np_loss(z.double().numpy(), m.double().numpy()), rel=1e-5)
    # one pixel by hand: z = 0 (p = 1/2) on an anomalous pixel: 0.5 * 0.25 + 5 * 0.5 * (1/2)^4 * log 2
    assert float(prnet_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))) == pytest.approx(
        0.125 + 5 * 0.5 * 0.0625 * np.log(2), rel=1e-6)
    confident = prnet_loss(torch.full((1, 1, 2, 2), -40.0), torch.zeros(1, 1, 2, 2))
    assert torch.isfinite(confident) and float(confident) < 1e-12
    with pytest.raises(ValueError, match="differ in shape"):
        prnet_loss(z, m[:, :, :4])


# ------------------------------------------------------------------------------------------------ ONNX
def test_onnx_export_has_no_einsum_nor_grouped_token_convs_and_matches_torch() -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    graph = tiny_graph(seed=5).eval()
    data = onnx_bytes(graph, torch.zeros(2, 3, SIZE, SIZE), ["anomaly_map"])
    model = onnx.load_from_string(data)
    ops = {n.op_type for n in model.graph.node}
    assert "Einsum" not in ops and {"ArgMin", "Gather", "MatMul", "Softmax"} <= ops
    grouped = [n.name for n in model.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert grouped and all(name.startswith("/encoder/") for name in grouped), grouped  # depthwise convs: encoder only
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = images(batch, seed=10 + batch)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want = graph(x).numpy()
        assert got.shape == (batch, SIZE, SIZE)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_non_square_and_other_sizes_are_refused() -> None:
    graph = tiny_graph().eval()
    with pytest.raises(ConfigError, match="square images only.*64 x 32"):
        graph(torch.zeros(1, 3, 64, 32))
    with pytest.raises(ConfigError, match="fitted at 64 px.*32 x 32"):
        graph(torch.zeros(1, 3, 32, 32))


def test_float16_is_refused(fitted, tmp_path: Path) -> None:
    from adexport.export import export_bundle

    props = fitted.export_properties()
    assert not props.fp16 and "65504" in props.fp16_reason
    with pytest.raises(ConfigError, match=r"prnet refuses float16 TensorRT engines: .*65504"):
        export_bundle(fitted, tmp_path / "b", fmt="tensorrt", fp16=True)
    assert not (tmp_path / "b").exists()


def test_image_score_is_the_mean_of_the_top_k_pixels_without_smoothing(fitted) -> None:
    assert [prnet.paper_top_k(n) for n in (256, 128, 64, 32, 8)] == [100, 25, 6, 2, 1]
    spec = fitted.postprocess()  # 32 px
    assert (spec.smoothing, spec.image_score, spec.top_k) == ("none", "mean_top_k", 2)
    maps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    want = np.sort(maps.numpy().reshape(2, -1), axis=1)[:, -2:].mean(1)
    np.testing.assert_allclose(fitted.reference_image_scores(maps).numpy(), want, rtol=1e-6)
    assert PRNetConfig(top_k=100).score_top_k == 100 and PRNetConfig().score_top_k == 25


# -------------------------------------------------------------------------------------- config, data
def test_config_refuses_bad_options_and_sizes() -> None:
    with pytest.raises(ConfigError, match="prototype_ratio"):
        PRNetConfig(prototype_ratio=0)
    with pytest.raises(ConfigError, match="p_real must be a probability"):
        PRNetConfig(p_real=1.5)
    config = PRNetConfig(backbone="test_efficientnet", weights="random", image_size=80)
    encoder = create_backbone(config.backbone, config.layers, config.weights)
    with pytest.raises(ConfigError, match="multiple of 32.*use 64 or 96"):
        prnet.build_graph(config, encoder, [])


def test_training_category_comes_from_the_path(dataset: Path) -> None:
    samples = load_split(dataset, CATEGORY, need_test=False).train
    assert prnet.training_category(samples) == CATEGORY


def test_bad_textures_folder_is_a_config_error_naming_it(dataset: Path, tmp_path: Path) -> None:
    samples = load_split(dataset, CATEGORY, need_test=False).train[:4]
    missing = tmp_path / "no_such_textures"
    config = PRNetConfig(**{**TINY_TRAINED["prnet"], "textures": str(missing)})
    with pytest.raises(ConfigError, match="no_such_textures"):
        prnet.fit(config, samples)
    (tmp_path / "empty").mkdir()
    config = PRNetConfig(**{**TINY_TRAINED["prnet"], "textures": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="empty.*no image files"):
        prnet.fit(config, samples)


def test_real_anomalies_are_loaded_at_the_model_geometry(dataset: Path) -> None:
    pre = PreprocessConfig.square(32)
    real = prnet.load_real_anomalies(dataset, CATEGORY, pre, n_per_defect=1)
    split = load_split(dataset, CATEGORY)
    assert real.per_defect == {d: 1 for d in split.defect_types}
    assert real.images.shape == (len(split.defect_types), 32, 32, 3) and real.images.dtype == np.uint8
    assert real.masks.shape == (len(real), 1, 32, 32) and set(np.unique(real.masks)) <= {0.0, 1.0}
    assert all(m.sum() > 0 for m in real.masks)
    with pytest.raises(ConfigError, match="not in the MVTec AD layout"):
        prnet.load_real_anomalies(dataset / CATEGORY / "train", None, pre)


def test_augment_replaces_images_by_real_anomalies_deterministically(dataset: Path) -> None:
    from adx_synth.anomalies import TextureSource

    pre = PreprocessConfig.square(32)
    real = prnet.load_real_anomalies(dataset, CATEGORY, pre, n_per_defect=2)
    raw = np.zeros((6, 32, 32, 3), np.uint8)  # black: whatever is not black came from somewhere
    textures = TextureSource.generated(exclude=[CATEGORY])
    always = prnet.make_augment(textures, 32, p_anomaly=0.0, real=real, p_real=1.0)
    out = always(raw, np.random.default_rng(0))
    assert out["image"].shape == raw.shape and out["mask"].shape == (6, 1, 32, 32)
    for img, mask in zip(out["image"], out["mask"]):
        hits = [i for i in range(len(real)) if np.array_equal(real.images[i], img)]
        assert hits and any(np.array_equal(real.masks[i], mask) for i in hits)
    again = always(raw, np.random.default_rng(0))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    never = prnet.make_augment(textures, 32, p_anomaly=0.0, real=real, p_real=0.0)(raw, np.random.default_rng(0))
    assert not never["image"].any() and not never["mask"].any()


def test_real_anomalies_are_off_by_default_and_reported_when_used(fitted, dataset: Path) -> None:
    assert fitted.report.sizes["real_anomalies"] == 0
    assert len(fitted.report.notes) == 1 and fitted.report.notes[0].startswith("trained on synthetic anomalies only")
    assert "no real anomalies" in fitted.report.notes[0] and CATEGORY not in fitted.report.notes[0]  # own texture left out
    assert "(--set anomalies=DIR adds some)" in fitted.report.notes[0]  # a flag adx train has, not a removed one
    samples = load_split(dataset, CATEGORY, need_test=False).train[:8]
    config = PRNetConfig(**{**TINY_TRAINED["prnet"], "epochs": 1, "anomalies": str(dataset), "n_anomalies": 1})
    with_real = prnet.fit(config, samples)
    assert with_real.report.sizes["real_anomalies"] == len(load_split(dataset, CATEGORY).defect_types) > 0
    assert f"{with_real.report.sizes['real_anomalies']} real anomalies from {dataset}" in with_real.report.notes[0]


# -------------------------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_keeps_the_encoder_frozen(dataset: Path) -> None:
    samples = load_split(dataset, CATEGORY, need_test=False).train
    config = PRNetConfig(**{**TINY_TRAINED["prnet"], "image_size": SIZE, "epochs": 8})
    fitted = prnet.fit(config, samples)
    history = fitted.report.loss_history
    # measured: 0.218 -> 0.126 over 8 epochs (16 images, random encoder)
    assert len(history) == 8 and history[-1] < 0.7 * history[0], history
    graph = fitted.graph()
    assert not graph.encoder.training and all(not p.requires_grad for p in graph.encoder.parameters())
    fresh = create_backbone("test_efficientnet", (1, 2, 3, 4), "random", seed=config.seed)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, graph.encoder.state_dict()[k]), k  # BatchNorm statistics included
    assert fitted.report.sizes["prototypes"] == prnet.prototype_count(len(samples), config.prototype_ratio)


def test_from_saved_rebuilds_from_tensors_alone(fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adexport.fitted import load_fitted, save_fitted

    folder = save_fitted(fitted, tmp_path / "model")

    def no_data(*args, **kwargs):
        raise AssertionError("from_saved read training data")

    for name in ("EpochDataset", "encode_images", "fit_prototypes"):
        monkeypatch.setattr(prnet, name, no_data)
    monkeypatch.setattr(prnet.data, "decode_image", no_data)  # where the real anomalies are read
    again = load_fitted(folder)
    for a, b in zip(fitted.graph().prototypes(), again.graph().prototypes()):
        assert torch.equal(a, b)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.reference(x).anomaly_maps, fitted.reference(x).anomaly_maps)
