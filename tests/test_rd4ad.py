"""RD4AD: network shapes, the frozen teacher, the anomaly map against an independent numpy
reference, ONNX export parity, the loss definitions, a short training run, and fit -> export ->
torch-free runtime parity. (Resume, save/load: the generic tests in test_training.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CATEGORY, TINY_TRAINED, list_test_images, onnx_bytes

from adexport.backbones import create_backbone
from adexport.methods.rd4ad import RD4ADConfig, RD4ADGraph, build_graph, cosine_distance, rd4ad_loss
from adx_runtime.errors import ConfigError
from adx_runtime.preprocess import PreprocessConfig, load_image, stack

SIZE = 64


def tiny_graph(name: str = "test_efficientnet", seed: int = 0, **kwargs) -> RD4ADGraph:
    torch.manual_seed(seed)
    return RD4ADGraph(create_backbone(name, (1, 2, 3), "random", seed=seed), **kwargs)


def normal_images(dataset: Path, n: int) -> torch.Tensor:
    """``(n, 3, SIZE, SIZE)`` normal images of the generated dataset, preprocessed by the runtime."""
    paths = sorted((dataset / CATEGORY / "train" / "good").glob("*.png"))[:n]
    return torch.from_numpy(stack([load_image(p, PreprocessConfig.square(SIZE)) for p in paths]))


# --- independent numpy reference -------------------------------------------------------------

def np_resize_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``(B, h, w) -> (B, out_h, out_w)`` bilinear with half-pixel centres (source coordinate
    ``(i + 0.5) * in / out - 0.5``, clamped at the first pixel), separable, in float64."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    lo, hi, f = axis(a.shape[1], out_h)
    rows = a[:, lo, :] * (1 - f)[None, :, None] + a[:, hi, :] * f[None, :, None]
    lo, hi, f = axis(a.shape[2], out_w)
    return rows[:, :, lo] * (1 - f)[None, None, :] + rows[:, :, hi] * f[None, None, :]


def np_anomaly_map(teacher: list[np.ndarray], student: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    out = np.zeros((teacher[0].shape[0], *size))
    for t, s in zip(teacher, student):
        t, s = t.astype(np.float64), s.astype(np.float64)
        cos = (t * s).sum(1) / (np.sqrt((t * t).sum(1)) * np.sqrt((s * s).sum(1)))
        out += np_resize_bilinear(1.0 - cos, *size)
    return out


# --- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["test_efficientnet", "resnet18"])
def test_student_stages_have_the_teachers_shapes(name: str) -> None:
    graph = tiny_graph(name, width=0.25, oce_blocks=1, decoder_blocks=1).eval()
    with torch.no_grad():
        teacher, student = graph.features(torch.randn(2, 3, SIZE, SIZE))
    info = graph.teacher.info
    assert [tuple(t.shape) for t in teacher] == [(2, c, SIZE // s, SIZE // s) for c, s in zip(info.channels, info.strides)]
    assert [s.shape for s in student] == [t.shape for t in teacher]


def test_bottleneck_halves_the_last_stage_with_log2_stride_convs() -> None:
    graph = tiny_graph()
    info = graph.teacher.info  # strides (4, 8, 16): two stride-2 convs for stage 1, one for stage 2
    assert [len(m) for m in graph.bottleneck.align] == [2, 1]
    with torch.no_grad():
        phi = graph.eval().bottleneck(graph.teacher(torch.randn(1, 3, SIZE, SIZE)))
    assert phi.shape[-2:] == (SIZE // (2 * info.strides[-1]),) * 2


def test_input_size_not_a_multiple_is_refused() -> None:
    graph = tiny_graph().eval()
    assert graph.size_multiple == 32
    with pytest.raises(ConfigError, match="multiple of 32"):
        graph(torch.randn(1, 3, 48, 48))


def test_teacher_is_frozen_while_the_student_trains() -> None:
    graph = tiny_graph(width=0.5, oce_blocks=1, decoder_blocks=1).train()
    before = {k: v.clone() for k, v in graph.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in graph.student.parameters()]
    bn = graph.bottleneck.fuse[1]
    bn_before = bn.running_mean.clone()
    params = [p for p in graph.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in graph.teacher.parameters())
    opt = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))
    x = torch.randn(4, 3, SIZE, SIZE) * 2 + 0.5  # far from the BN statistics, so any update would show
    for _ in range(3):
        loss = rd4ad_loss(*graph.features(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not graph.teacher.training and graph.student.training
    assert all(p.grad is None for p in graph.teacher.parameters())
    for k, v in graph.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(bn.running_mean, bn_before)  # the bottleneck's BN does train
    assert any(not torch.equal(p, q) for p, q in zip(graph.student.parameters(), student_before))


def test_anomaly_map_equals_numpy_reference() -> None:
    graph = tiny_graph(seed=3).eval()
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        teacher, student = graph.features(x)
        amap = graph(x)
    ref = np_anomaly_map([t.numpy() for t in teacher], [s.numpy() for s in student], (SIZE, SIZE))
    assert amap.shape == (3, SIZE, SIZE) and amap.dtype == torch.float32
    assert ref.min() > 0.05  # a random student: distances are far from zero, the test is not trivial
    np.testing.assert_allclose(amap.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_onnx_export_matches_torch_and_numpy_with_dynamic_batch() -> None:
    ort = pytest.importorskip("onnxruntime")
    graph = tiny_graph(seed=5).eval()
    session = ort.InferenceSession(onnx_bytes(graph, torch.zeros(2, 3, SIZE, SIZE), ["anomaly_map"]),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))  # not the traced batch
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = graph(x).numpy()
        teacher, student = graph.features(x)
    ref = np_anomaly_map([t.numpy() for t in teacher], [s.numpy() for s in student], (SIZE, SIZE))
    assert got.shape == (3, SIZE, SIZE) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_per_position_loss_is_the_mean_map_and_flatten_the_whole_stage_cosine() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    student = [t + torch.randn(t.shape, generator=g) for t in teacher]
    per_pos = float(rd4ad_loss(teacher, student, "per_position"))
    flat = float(rd4ad_loss(teacher, student, "flatten"))
    t64 = [t.double().numpy() for t in teacher]
    s64 = [s.double().numpy() for s in student]
    want_pos = sum(np.mean(1 - (t * s).sum(1) / np.linalg.norm(t, axis=1) / np.linalg.norm(s, axis=1))
                   for t, s in zip(t64, s64))
    want_flat = sum(np.mean([1 - a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(t, s)])
                    for t, s in zip(t64, s64))
    assert per_pos == pytest.approx(want_pos, rel=1e-5)
    assert flat == pytest.approx(want_flat, rel=1e-5)
    assert abs(per_pos - flat) > 1e-3  # the two modes really differ
    assert float(cosine_distance(teacher[0], 3.0 * teacher[0]).abs().max()) < 1e-6  # scale-invariant
    with pytest.raises(ConfigError, match="per_position, flatten"):
        rd4ad_loss(teacher, student, "mse")


@pytest.mark.parametrize("mode", ["per_position", "flatten"])
def test_loss_falls_with_the_papers_optimiser(mode: str, dataset: Path) -> None:
    x = normal_images(dataset, 8)
    graph = tiny_graph(seed=0, width=0.5, oce_blocks=1, decoder_blocks=1).train()
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in graph.parameters() if p.requires_grad], lr=0.005, betas=(0.5, 0.999))
    losses = []
    for _ in range(15):
        loss = rd4ad_loss(*graph.features(x), mode=mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # measured: 2.94 -> 1.01 (per_position), 2.95 -> 1.04 (flatten) after 15 steps
    assert max(losses[-3:]) < 0.5 * losses[0], losses


def test_config_refuses_bad_options_and_sizes_the_teacher_cannot_mirror() -> None:
    with pytest.raises(ConfigError, match="per_position, flatten"):
        RD4ADConfig(loss_mode="l2")
    with pytest.raises(ConfigError, match="at least two teacher stages"):
        RD4ADConfig(layers=(3,))
    config = RD4ADConfig(backbone="test_efficientnet", weights="random", image_size=80)
    with pytest.raises(ConfigError, match="multiple of 32.*use 64 or 96"):
        build_graph(config, create_backbone(config.backbone, config.layers, config.weights))
    paper = RD4ADConfig()
    assert (paper.lr, paper.betas, paper.optimizer, paper.blur_sigma) == (0.005, (0.5, 0.999), "adam", 4.0)


def test_fit_export_and_the_torch_free_runtime_agree(dataset: Path, tmp_path: Path) -> None:
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train
    from adx_runtime.predictor import Predictor

    options = {**TINY_TRAINED["rd4ad"], "image_size": SIZE, "epochs": 4}
    fitted = train(dataset, CATEGORY, "rd4ad", options=options, holdout=0.25)
    history = fitted.report.loss_history
    assert len(history) == 4 and history[-1] < 0.8 * history[0], history
    assert not fitted.graph().teacher.training and all(not p.requires_grad for p in fitted.graph().teacher.parameters())

    manifest = export_bundle(fitted, tmp_path / "bundle")
    assert manifest["parity"]["passed"] and manifest["scoring"]["kind"] == "map"
    assert manifest["postprocess"]["smoothing"] == {"type": "gaussian", "sigma": 4.0}
    files = list_test_images(dataset)[:6]
    pred = Predictor.load(tmp_path / "bundle").predict(files)
    ref = fitted.reference(torch.from_numpy(np.stack([load_image(f, fitted.preprocess) for f in files])))
    assert pred.anomaly_maps.shape == (6, SIZE, SIZE)
    np.testing.assert_allclose(pred.image_scores, ref.image_scores.numpy(), rtol=1e-4)
    np.testing.assert_allclose(pred.anomaly_maps, ref.anomaly_maps.numpy(), rtol=1e-4, atol=1e-5)
    assert not fitted.export_properties().fp16  # cosines near 1 need float32
