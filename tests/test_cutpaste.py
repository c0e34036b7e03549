"""CutPaste: the Ledoit-Wolf Gaussian against scikit-learn, the shared-Gaussian runtime scorer against
numpy, the patch-level graph (patch positions, ONNX parity), training and its options.

Image-level CutPaste also runs through every generic test (tests/test_methods.py: parity, save/load,
runtime vs torch, torch-free eval; tests/test_training.py: exact resume, loss curve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CATEGORY, TINY_TRAINED, list_test_images, onnx_bytes

from adexport.export import export_bundle
from adexport.fitted import load_fitted, save_fitted
from adexport.methods.base import make_config
from adexport.methods.cutpaste import CutPasteConfig, CutPasteNet, Encoder, PatchEmbedding, fit, make_augment
from adexport.methods.density import ledoit_wolf_gaussian, mahalanobis as torch_mahalanobis
from adexport.fit_pipeline import train
from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import load_image, stack

TINY = TINY_TRAINED["cutpaste"]
PATCH = {**TINY, "level": "patch", "patch_size": 16, "patch_stride": 8}


# ------------------------------------------------------------------------------------------- density
def test_ledoit_wolf_distance_equals_scikit_learn() -> None:
    from sklearn.covariance import LedoitWolf

    from adx_runtime.scorers.gaussian import mahalanobis

    rng = np.random.default_rng(0)
    train_emb = rng.standard_normal((40, 12)) @ rng.standard_normal((12, 12))  # correlated, few samples
    test_emb = rng.standard_normal((5, 12))
    mean, chol, shrinkage = ledoit_wolf_gaussian(train_emb)
    lw = LedoitWolf().fit(train_emb)
    expected = np.sqrt(lw.mahalanobis(test_emb))  # scikit-learn returns squared distances
    got = mahalanobis(test_emb[:, None, :].astype(np.float32), mean.numpy(), chol.numpy().astype(np.float32))[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert shrinkage == pytest.approx(lw.shrinkage_)
    torch_got = torch_mahalanobis(torch.from_numpy(test_emb)[:, None], mean, chol)[:, 0].numpy()
    np.testing.assert_allclose(torch_got, expected, rtol=1e-5)


def test_one_gaussian_scores_every_position_of_a_grid(tmp_path: Path) -> None:
    """Statistics with P = 1 and a 3 x 4 patch grid: every position is scored against that one Gaussian."""
    from adexport.methods.density import write_gaussian
    from adx_runtime.scorers.gaussian import GaussianScorer

    rng = np.random.default_rng(1)
    samples = rng.standard_normal((200, 6))
    mean, chol, _ = ledoit_wolf_gaussian(samples)
    section, entry = write_gaussian(tmp_path, mean, chol)
    manifest = {"scoring": {"kind": "gaussian", "embedding_output": "e", "gaussian": section},
                "postprocess": {"patch_grid": [3, 4]}, "files": [entry]}  # scorers open listed files only
    scorer = GaussianScorer(tmp_path, manifest, "cpu")
    emb = rng.standard_normal((2, 12, 6)).astype(np.float32)
    out = scorer({"e": emb})
    cov = np.linalg.inv(chol[0].numpy() @ chol[0].numpy().T)
    diff = emb.astype(np.float64) - mean.numpy()[0]
    expected = np.sqrt(np.einsum("bpd,de,bpe->bp", diff, np.linalg.inv(cov), diff)).reshape(2, 3, 4)
    assert out.image_scores is None
    np.testing.assert_allclose(out.patch_maps, expected, rtol=1e-5)
    with pytest.raises(Exception, match=r"expect \(B, 12, 6\)"):
        scorer({"e": emb[:, :5]})


# ------------------------------------------------------------------------------------------ patches
def test_patch_embedding_cuts_the_patches_centred_on_the_stride_grid() -> None:
    """Each patch the graph cuts equals the slice of the reflect-padded image that a loop cuts."""

    class Flatten(torch.nn.Module):  # an "encoder" that returns the patch itself, to see what was cut
        dim = 3 * 8 * 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    graph = PatchEmbedding(Encoder.__new__(Encoder), 16, 8, 4)
    graph.encoder = Flatten()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = graph(x)  # L2-normalised patches (B, P, d)
    assert graph.grid == (4, 4) and got.shape == (2, 16, 192)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):
        for i in range(4):
            for j in range(4):
                patch = padded[b, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8].flatten()
                torch.testing.assert_close(got[b, 4 * i + j], patch / patch.norm())
    # patch (i, j) is centred on pixel (4 i + 2, 4 j + 2): its centre 2 x 2 is the image's own pixels there
    centre = padded[0, :, 4 + 3:4 + 5, 8 + 3:8 + 5]
    torch.testing.assert_close(centre, x[0, :, 5:7, 9:11])


def test_patch_level_bundle_parity_maps_and_save_load(dataset: Path, tmp_path: Path) -> None:
    fitted = train(dataset, CATEGORY, "cutpaste", options=PATCH, holdout=0.25)
    assert fitted.postprocess().patch_grid == (4, 4) and fitted.report.sizes["gaussian_samples"] == 12 * 16
    save_fitted(fitted, tmp_path / "model")
    manifest = export_bundle(tmp_path / "model", tmp_path / "bundle")
    assert manifest["parity"]["passed"] and manifest["scoring"]["kind"] == "gaussian"
    assert manifest["postprocess"]["smoothing"] == {"type": "gaussian", "sigma": 8.0}
    assert manifest["scoring"]["gaussian"]["positions"] == 1 and manifest["scoring"]["gaussian"]["shared_by_positions"]
    assert manifest["parity"]["errors"]["maps"]["max_rel"] < 1e-4
    images = list_test_images(dataset)
    x = torch.from_numpy(stack([load_image(p, fitted.preprocess) for p in images]))
    ref = load_fitted(tmp_path / "model").reference(x)
    pred = Predictor.load(tmp_path / "bundle").predict(images)
    assert pred.anomaly_maps.shape == (len(images), 32, 32)
    np.testing.assert_allclose(pred.anomaly_maps, ref.anomaly_maps.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pred.image_scores, ref.anomaly_maps.numpy().reshape(len(images), -1).max(1), rtol=1e-5)


def test_patch_graph_exports_with_a_dynamic_batch() -> None:
    import onnxruntime as ort

    config = make_config(CutPasteConfig, PATCH)
    from adexport.methods.base import backbone_and_preprocess

    extractor, _ = backbone_and_preprocess(config)
    graph = PatchEmbedding(Encoder(extractor), 32, 16, 8).eval()
    session = ort.InferenceSession(onnx_bytes(graph, torch.zeros(2, 3, 32, 32), ["embedding"]),
                                   providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = graph(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------- training
def test_augmentation_gives_every_class_of_the_variant_with_labels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(4, 32, 32, 3), dtype=np.uint8)
    for variant, classes in (("normal", 2), ("scar", 2), ("3way", 3)):
        out = make_augment(make_config(CutPasteConfig, {**TINY, "variant": variant}))(images, np.random.default_rng(1))
        assert out["image"].shape == (4 * classes, 32, 32, 3)
        assert out["label"].tolist() == [c for c in range(classes) for _ in range(4)]
    out = make_augment(make_config(CutPasteConfig, {**PATCH, "patches_per_image": 3}))(images, np.random.default_rng(1))
    assert out["image"].shape == (4 * 3 * 3, 16, 16, 3)


def test_training_smoke_loss_falls(dataset: Path) -> None:
    """Tiny network, 3-way task, enough steps for the classifier to learn: the loss goes down."""
    samples = load_split(dataset, CATEGORY, need_test=False).train
    config = make_config(CutPasteConfig, {**TINY, "epochs": 8, "batch_size": 8, "lr": 0.05})
    fitted = fit(config, samples)
    history = fitted.report.loss_history
    assert len(history) == 8 and np.mean(history[-3:]) < np.mean(history[:3])
    assert fitted.report.sizes["embedding_dim"] == 64 and fitted.report.sizes["gaussian_samples"] == len(samples)


def test_projection_head_depth_and_classes() -> None:
    from adexport.methods.base import backbone_and_preprocess

    for variant, head_layers in (("3way", 2), ("scar", 0)):
        config = make_config(CutPasteConfig, {**TINY, "variant": variant, "head_layers": head_layers})
        extractor, _ = backbone_and_preprocess(config)
        net = CutPasteNet(Encoder(extractor), config.head_layers, config.classes).eval()
        linears = [m for m in net.head if isinstance(m, torch.nn.Linear)]
        assert [m.out_features for m in linears] == [512] * head_layers + [128, config.classes]
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, config.classes)


@pytest.mark.parametrize("options,message", [
    ({"variant": "4way"}, "variant '4way' is not known; valid: normal, scar, 3way"),
    ({"level": "pixel"}, "level 'pixel' is not known; valid: image, patch"),
    ({"level": "patch", "patch_size": 16, "patch_stride": 5}, "patch_size - patch_stride even"),
    ({"layers": (2, 3)}, "CutPaste embeds one encoder stage"),
])
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config(CutPasteConfig, {**TINY, **options})
