"""RIAD: disjoint masks, the MSGMS map and SSIM against independent numpy/scipy references, the
exported graph against ONNX Runtime, and the loss falling on generated images. Tiny U-Nets, 32 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from scipy import ndimage

from adexport.methods import riad
from adx_runtime.errors import ConfigError

from conftest import onnx_bytes

SIZE = 32


# --------------------------------------------------------------------------------------------
# numpy references, written from the paper's definitions (independent of the torch code)
# --------------------------------------------------------------------------------------------

PREWITT_X = np.array([[-1.0, 0.0, 1.0]] * 3) / 3.0
C_GMS = 0.0026


def np_gradient_magnitude(gray: np.ndarray) -> np.ndarray:
    gx = ndimage.correlate(gray, PREWITT_X, mode="nearest")
    gy = ndimage.correlate(gray, PREWITT_X.T, mode="nearest")
    return np.sqrt(gx**2 + gy**2 + 1e-12)


def np_gms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ga, gb = np_gradient_magnitude(a), np_gradient_magnitude(b)
    return (2 * ga * gb + C_GMS) / (ga**2 + gb**2 + C_GMS)


def np_halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def np_bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Half-pixel-centre linear interpolation along one axis (source clamped at the edges)."""
    A = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        A[i, i0] += 1 - frac
        A[i, i1] += frac
    return A


def np_msgms_map(x: np.ndarray, y: np.ndarray, scales: int = 4) -> np.ndarray:
    """``(C, H, W)`` twice -> ``(H, W)``: mean over scales of upsampled ``1 - GMS`` on the channel mean."""
    a, b = x.mean(axis=0), y.mean(axis=0)
    H, W = a.shape
    total = np.zeros((H, W))
    for s in range(scales):
        if s:
            a, b = np_halve(a), np_halve(b)
        d = 1 - np_gms(a, b)
        total += np_bilinear_matrix(H, d.shape[0]) @ d @ np_bilinear_matrix(W, d.shape[1]).T
    return total / scales


def np_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of ``(C, H, W)`` images in [0, 1], 11-tap Gaussian (sigma 1.5), valid positions."""
    def blur(t: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(t, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]

    vals = []
    for a, b in zip(x, y):
        ma, mb = blur(a), blur(b)
        va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        c1, c2 = 0.01**2, 0.03**2
        vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def smooth_pair(channels: int, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related images in [0, 1] with structure at several scales (not white noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, channels, SIZE // 4, SIZE // 4, generator=g)
    x = torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = (x + 0.15 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    return x, y


def tiny_graph(channels: int, seed: int = 0) -> riad.RIADGraph:
    torch.manual_seed(seed)
    net = riad.UNet(channels, base_width=4)
    return riad.RIADGraph(net, riad.inference_masks(SIZE, seed=seed)).eval()


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", riad.CELL_SIZES)
def test_masks_are_disjoint_cover_the_image_and_follow_the_cells(k: int) -> None:
    masks = riad.disjoint_masks(SIZE, k, 3, torch.Generator().manual_seed(1))
    assert masks.shape == (3, 1, SIZE, SIZE) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    removed = 1 - masks[:, 0]
    assert torch.equal(removed.sum(0), torch.ones(SIZE, SIZE))  # disjoint and covering
    cells = removed.reshape(3, SIZE // k, k, SIZE // k, k)
    assert torch.equal(cells.amin(dim=(2, 4)), cells.amax(dim=(2, 4)))  # constant on each k x k cell
    per_mask = cells.amax(dim=(2, 4)).sum(dim=(1, 2))
    assert per_mask.sum() == (SIZE // k) ** 2 and per_mask.max() - per_mask.min() <= 1  # a third each


def test_masks_are_random_but_reproducible() -> None:
    a = riad.disjoint_masks(SIZE, 2, 3, torch.Generator().manual_seed(3))
    b = riad.disjoint_masks(SIZE, 2, 3, torch.Generator().manual_seed(3))
    c = riad.disjoint_masks(SIZE, 2, 3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fixed = riad.inference_masks(SIZE, seed=7)
    assert fixed.shape == (len(riad.CELL_SIZES) * 3, 1, SIZE, SIZE)
    assert torch.equal(fixed, riad.inference_masks(SIZE, seed=7))
    for j, k in enumerate(riad.CELL_SIZES):  # grouped by cell size
        group = 1 - fixed[3 * j:3 * j + 3, 0]
        assert torch.equal(group.sum(0), torch.ones(SIZE, SIZE))
        assert torch.equal(group, group[:, ::k, ::k].repeat_interleave(k, 1).repeat_interleave(k, 2))


def test_image_size_not_divisible_by_a_cell_size_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"28 px is not divisible by cell size\(s\) \[8, 16\].*multiple of 16"):
        riad.inference_masks(28)


# --------------------------------------------------------------------------------------------
# MSGMS and SSIM against numpy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_msgms_map_matches_numpy(channels: int) -> None:
    x, y = smooth_pair(channels, seed=channels)
    got = riad.msgms_map(x, y).numpy()
    ref = np.stack([np_msgms_map(a, b) for a, b in zip(x.double().numpy(), y.double().numpy())])
    assert ref.max() > 0.05  # the pair really differs
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    got64 = riad.msgms_map(x.double(), y.double()).numpy()
    np.testing.assert_allclose(got64, ref, atol=1e-12, rtol=0)
    # the loss is the same quantity, averaged per scale before upsampling
    per_image = [np.mean([np.mean(1 - np_gms(np_halve_n(a.mean(0), s), np_halve_n(b.mean(0), s))) for s in range(4)])
                 for a, b in zip(x.double().numpy(), y.double().numpy())]
    assert abs(riad.msgms_loss(x.double(), y.double()).item() - np.mean(per_image)) < 1e-12


def np_halve_n(a: np.ndarray, times: int) -> np.ndarray:
    for _ in range(times):
        a = np_halve(a)
    return a


def test_gms_of_identical_images_is_one_also_on_flat_regions() -> None:
    x = torch.zeros(1, 1, SIZE, SIZE)
    x[..., 8:20, 8:20] = 1.0
    assert torch.equal(riad.gms(x, x), torch.ones(1, 1, SIZE, SIZE))
    assert riad.msgms_map(x, x).abs().max() == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_numpy_and_is_one_for_identical_images(channels: int) -> None:
    x, y = smooth_pair(channels, seed=10 + channels)
    ref = np.mean([np_ssim(a, b) for a, b in zip(x.double().numpy(), y.double().numpy())])
    assert ref < 0.95
    assert abs(riad.ssim(x.double(), y.double()).item() - ref) < 1e-10
    assert abs(riad.ssim(x, y).item() - ref) < 1e-5
    assert riad.ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    terms = riad.riad_loss(x, x)
    assert all(abs(v.item()) < 1e-6 for v in terms.values())


def test_loss_weights_follow_eq5() -> None:
    x, y = smooth_pair(1, seed=5)
    t = riad.riad_loss(x, y, lambda_gms=2.0, lambda_ssim=0.5)
    expected = torch.mean((x - y) ** 2) + 2.0 * riad.msgms_loss(x, y) + 0.5 * (1 - riad.ssim(x, y))
    torch.testing.assert_close(t["loss"], expected)


# --------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_graph_map_is_the_msgms_of_the_reassembled_inpainting(channels: int) -> None:
    graph = tiny_graph(channels)
    x, _ = smooth_pair(channels, seed=20)
    with torch.no_grad():
        got = graph(x)
        recs = [riad.reconstruct(graph.net, x, graph.masks[3 * j:3 * j + 3]) for j in range(len(riad.CELL_SIZES))]
    assert got.shape == (2, SIZE, SIZE) and got.dtype == torch.float32
    xs = x.double().numpy()
    ref = np.stack([np.mean([np_msgms_map(xs[b], r[b].double().numpy()) for r in recs], axis=0) for b in range(2)])
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-6, rtol=0)
    # each image's map depends on that image only
    torch.testing.assert_close(graph(x[1:]), got[1:])


class _AddOne(torch.nn.Module):
    """A stand-in inpainter, ``f(z) = z + 1``: then ``sum_i f(x M_i)(1 - M_i) = sum_i (1 - M_i) = 1``
    exactly when the masks are applied before ``f``, are disjoint and cover the image."""

    downsampling = 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + 1.0


class _Oracle(torch.nn.Module):
    """A perfect inpainter for one known image."""

    downsampling = 1

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.image = image

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image.expand(z.shape[0], -1, -1, -1)


def test_graph_masks_before_inpainting_and_a_perfect_inpainter_scores_zero() -> None:
    x, _ = smooth_pair(3, seed=30, batch=1)
    masks = riad.inference_masks(SIZE, seed=0)
    got = riad.RIADGraph(_AddOne(), masks)(x)
    ref = np_msgms_map(x[0].double().numpy(), np.ones((3, SIZE, SIZE)))
    np.testing.assert_allclose(got[0].numpy(), ref, atol=2e-6, rtol=0)
    assert got.max() > 0.1
    perfect = riad.RIADGraph(_Oracle(x), masks)(x)
    assert perfect.abs().max() < 1e-6


def test_graph_refuses_masks_of_the_wrong_shape() -> None:
    with pytest.raises(ConfigError, match="divisible by 8"):
        riad.RIADGraph(riad.UNet(1, 4), riad.inference_masks(20, cell_sizes=(2, 4)))


@pytest.mark.parametrize("channels", [1, 3])
def test_onnx_export_matches_pytorch(channels: int) -> None:
    graph = tiny_graph(channels, seed=channels)
    data = onnx_bytes(graph, torch.zeros(2, channels, SIZE, SIZE), ["anomaly_map"])
    x = torch.rand(3, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(40))  # batch 3 != 2
    with torch.no_grad():
        ref = graph(x).numpy()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(["anomaly_map"], {"image": x.numpy()})[0]
    assert got.shape == (3, SIZE, SIZE)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _generated_images(root: Path, channels: int, n: int = 8) -> torch.Tensor:
    """Normal training images from the synthetic generator: digits (grayscale) or a texture (RGB)."""
    try:
        from adx_synth import generate_demo_dataset  # type: ignore[import-not-found]
    except ImportError:  # the generator's earlier home
        from adx_runtime.synthetic import generate_demo_dataset  # type: ignore[import-not-found,no-redef]
    category = "digits" if channels == 1 else "weave"
    try:
        generate_demo_dataset(root, [category], n_train=n, n_test_good=1, n_test_per_defect=1, image_size=SIZE, seed=0)
    except ConfigError:  # a generator without digits
        category = "weave"
        generate_demo_dataset(root, [category], n_train=n, n_test_good=1, n_test_per_defect=1, image_size=SIZE, seed=0)
    mode = "L" if channels == 1 else "RGB"
    files = sorted((root / category / "train" / "good").glob("*.png"))[:n]
    arrays = [np.asarray(Image.open(f).convert(mode).resize((SIZE, SIZE)), dtype=np.float32) / 255.0 for f in files]
    x = torch.from_numpy(np.stack(arrays))
    return x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("channels", [1, 3])
def test_loss_falls_over_a_few_adam_steps(channels: int, tmp_path: Path) -> None:
    x = _generated_images(tmp_path, channels, n=4)
    torch.manual_seed(0)
    net = riad.UNet(channels, base_width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        terms = riad.training_loss(net, x, gen)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        losses.append(terms["loss"].item())
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses


# --------------------------------------------------------------------------------------------
# the method: config, fit through the shared loop, bundle, runtime
# --------------------------------------------------------------------------------------------


def test_config_refuses_sizes_and_options_that_do_not_fit() -> None:
    with pytest.raises(ConfigError, match=r"image_size 40 .* multiple of 16 .*image_size=48"):
        riad.RIADConfig(image_size=40)
    with pytest.raises(ConfigError, match="colour 'BGR' is not known; valid: RGB, L"):
        riad.RIADConfig(colour="BGR")
    with pytest.raises(ConfigError, match="smoothing_size must be odd"):
        riad.RIADConfig(smoothing_size=4)
    cfg = riad.RIADConfig(image_size=32, cell_sizes=(2, 4, 8))
    assert cfg.map_smoothing == 3 and riad.RIADConfig(image_size=256).map_smoothing == 21


def _end_to_end(dataset: Path, category: str, options: dict, tmp_path: Path):
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train
    from adx_runtime.predictor import Predictor
    from adx_runtime.preprocess import load_image, stack

    fitted = train(dataset, category, "riad", options=options, holdout=0.25)
    manifest = export_bundle(fitted, tmp_path / "bundle")
    files = sorted((dataset / category / "test").glob("*/*.png"))[::3][:6]
    x = stack([load_image(p, fitted.preprocess) for p in files])
    ref = fitted.reference(torch.from_numpy(x))
    got = Predictor.load(tmp_path / "bundle").predict(files)
    scale = float(ref.anomaly_maps.max())
    np.testing.assert_allclose(got.anomaly_maps, ref.anomaly_maps.numpy(), rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(got.image_scores, ref.image_scores.numpy(), rtol=1e-4)
    return fitted, manifest


def test_rgb_riad_trains_exports_and_the_runtime_agrees(dataset: Path, tmp_path: Path) -> None:
    from conftest import CATEGORY, TINY_TRAINED

    fitted, manifest = _end_to_end(dataset, CATEGORY, {**TINY_TRAINED["riad"], "epochs": 5, "lr": 3e-3}, tmp_path)
    h = fitted.report.loss_history
    assert len(h) == 5 and h[-1] < 0.9 * h[0], h
    assert manifest["method"] == "riad" and manifest["parity"]["passed"]
    assert manifest["scoring"]["kind"] == "map" and manifest["scoring"]["mask_seed"] == 0
    assert manifest["scoring"]["cell_sizes"] == [2, 4, 8, 16]
    assert manifest["postprocess"]["smoothing"] == {"type": "mean", "size": 3}
    assert manifest["postprocess"]["image_score"] == {"rule": "max"}
    pre = manifest["input"]
    assert pre["colour"] == "RGB" and pre["mean"] == [0.0] * 3 and pre["std"] == [1.0] * 3
    assert fitted.backbone is None and fitted.tensors()["graph.masks"].shape == (12, 1, 32, 32)


def test_grayscale_riad_on_digits(tmp_path: Path) -> None:
    from adx_synth import generate_demo_dataset

    root = tmp_path / "data"
    generate_demo_dataset(root, ["digits"], n_train=12, n_test_good=2, n_test_per_defect=1, image_size=28, seed=0)
    options = {"image_size": 32, "colour": "L", "epochs": 2, "batch_size": 4, "base_width": 4, "top_k": 10}
    fitted, manifest = _end_to_end(root, "digits", options, tmp_path)
    assert manifest["input"]["colour"] == "L" and manifest["input"]["channels"] == 1
    assert manifest["postprocess"]["image_score"] == {"rule": "mean_top_k", "k": 10}
    assert manifest["graph"]["inputs"][0]["shape"][1:] == [1, 32, 32]
