"""The method contract beyond any one method: image-level bundles without maps, maps brought back
to the image's own size, and the grayscale input contract.

The image-level method here is a test double of CutPaste's scoring (an embedding graph and one
Gaussian over image embeddings, kind ``gaussian`` with no map): it is a real FittedMethod, exported
by the real export code, so every command that meets a map-less bundle is exercised.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from conftest import CATEGORY, list_test_images

from adexport.export import export_bundle
from adexport.methods.base import ExportProperties, FittedMethod, Reference, TOLERANCE_EXACT
from adexport.methods.padim import gaussian_fit
from adexport.fit_pipeline import calibrate
from adx_cli.app import app
from adx_runtime.bundle import file_entry
from adx_runtime.datasets import load_split
from adx_runtime.evaluate import evaluate, format_evaluation
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import PreprocessConfig, geometric_array, load_image, map_to_original, normalise_pixels, stack


class TinyEmbedder(nn.Module):
    """``(B, C, H, W) -> (B, 8)``: a conv and global pooling, seeded."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 8, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@dataclass
class NoOptions:
    seed: int = 0  # nothing to choose in this test double


class ImageGaussian(FittedMethod):
    name = "image_gaussian_test_double"
    scoring_kind = "gaussian"
    output_names = ("embedding",)

    def __init__(self, preprocess: PreprocessConfig, net: nn.Module, mean: torch.Tensor, chol: torch.Tensor):
        super().__init__(NoOptions(), preprocess, None)  # no backbone
        self.net, self.mean, self.chol = net.eval(), mean, chol

    def graph(self) -> nn.Module:
        return self.net

    def postprocess(self) -> PostprocessSpec:
        return PostprocessSpec.image_only()

    @torch.no_grad()
    def reference(self, x: torch.Tensor, *, exact: bool = True) -> Reference:
        emb = self.net(x)
        y = torch.einsum("bd,de->be", (emb.double() - self.mean[0].double()), self.chol[0])
        return Reference({"embedding": emb}, y.pow(2).sum(-1).sqrt().float(), None)

    def write_scoring_data(self, bundle_dir: Path, **_: Any):
        d = self.mean.shape[1]
        rows, cols = np.tril_indices(d)
        np.savez(bundle_dir / "gaussian.npz", mean=self.mean.numpy().astype(np.float32),
                 chol_packed=self.chol.numpy()[:, rows, cols].astype(np.float32))
        entry = file_entry(bundle_dir, "gaussian.npz", "npz")
        return {"embedding_output": "embedding", "gaussian": {"file": "gaussian.npz"}}, [entry]

    def export_properties(self, **_: Any) -> ExportProperties:
        return ExportProperties(TOLERANCE_EXACT)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_saved(cls, meta, tensors):  # pragma: no cover - not saved in these tests
        raise NotImplementedError


@pytest.fixture(scope="module")
def image_level_bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = load_split(dataset, CATEGORY, need_test=True)
    pre = PreprocessConfig.square(48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    net = TinyEmbedder()
    with torch.no_grad():
        emb = net(torch.from_numpy(stack([load_image(s.path, pre) for s in split.train[:12]])))
    mean, chol = gaussian_fit(emb[:, None, :], epsilon=0.01)
    fitted = ImageGaussian(pre, net, mean, chol)
    fitted.calibration = calibrate(fitted, split.train[12:])
    assert "pixel" in fitted.calibration and fitted.calibration["pixel"] is None
    out = tmp_path_factory.mktemp("image_level") / "bundle"
    manifest = export_bundle(fitted, out, parity_images=[s.path for s in split.test[:4]])
    assert manifest["backbone"] is None and manifest["postprocess"]["map"] is False
    assert "maps" not in manifest["parity"]["errors"] and manifest["parity"]["passed"]
    return out


def test_image_level_bundle_scores_without_maps(image_level_bundle: Path, dataset: Path) -> None:
    pred = Predictor.load(image_level_bundle)
    assert not pred.has_map
    out = pred.predict(list_test_images(dataset)[:5])
    assert out.anomaly_maps is None and out.image_scores.shape == (5,) and np.isfinite(out.image_scores).all()
    results = list(pred.predict_files(list_test_images(dataset)[:3], keep_maps=True))
    assert all(r.ok and r.anomaly_map is None for r in results)


def test_eval_report_calibrate_and_bench_handle_an_image_level_bundle(image_level_bundle: Path, dataset: Path,
                                                                    tmp_path: Path) -> None:
    ev = evaluate(image_level_bundle, dataset, CATEGORY)
    assert ev.maps is None and not ev.has_masks and ev.metrics["image_auroc"] is not None
    assert "pixel_auroc" not in ev.metrics
    text = format_evaluation(ev)
    assert "has no anomaly map" in text and "pixel AUROC" not in text
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(image_level_bundle), str(dataset), "-c", CATEGORY, "--report",
                            str(tmp_path / "report"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report" / "index.html").is_file() and not (tmp_path / "report" / "pro.png").exists()
    copy = tmp_path / "copy"
    shutil.copytree(image_level_bundle, copy)
    r = runner.invoke(app, ["calibrate", str(copy), str(dataset), "-c", CATEGORY, "-q", "--force"])  # tiny model: F1 flags all
    assert r.exit_code == 0 and "pixel threshold" not in r.output, r.output
    assert json.loads((copy / "manifest.json").read_text())["calibration"]["history"][-1]["pixel_threshold"] is None
    r = runner.invoke(app, ["bench", str(image_level_bundle), "--batch-sizes", "2", "--runs", "2", "--warmup", "1",
                            "--images", str(list_test_images(dataset)[0]), "-q"])
    assert r.exit_code == 0, r.output


def test_infer_save_maps_on_an_image_level_bundle_says_there_are_none(image_level_bundle: Path, dataset: Path,
                                                                     tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["infer", str(image_level_bundle), str(list_test_images(dataset)[0]),
                                 "--save-maps", str(tmp_path / "maps")])
    assert r.exit_code == 0 and "no maps written" in r.output and not (tmp_path / "maps").exists()


# ------------------------------------------------------------------------------ original size
def test_map_to_original_undoes_resize_and_crop() -> None:
    cfg = PreprocessConfig(resize=(40, 40), center_crop=(32, 32))
    m = np.zeros((32, 32), np.float32)
    m[:, 16:] = 1.0  # right half of the crop
    full = map_to_original(m, (120, 80), cfg)  # a 120 x 80 (w x h) photo
    assert full.shape == (80, 120)
    # The crop starts 4 px into the 40 px resize: 4/40 of the width on each side is padding (edge values).
    assert full[:, :6].max() == 0.0 and full[:, -6:].min() == 1.0
    assert abs(full[:, 60].mean() - 0.5) < 0.2  # the step sits at the centre of the photo


def test_infer_writes_overlays_and_raw_maps_at_the_image_size(bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)).save(photo)  # not square, not 64 px
    for fmt, name in (("npy", "photo_map.npy"), ("png16", "photo_map.png")):
        out = tmp_path / fmt
        r = CliRunner().invoke(app, ["infer", str(bundle), str(photo), "--save-maps", str(out), "--raw-maps", fmt])
        assert r.exit_code == 0, r.output
        assert Image.open(out / "photo_heatmap.png").size == (130, 90)
        if fmt == "npy":
            raw = np.load(out / name)
            assert raw.shape == (90, 130) and raw.dtype == np.float32
            pred = Predictor.load(bundle)
            at_input = pred.predict([photo]).anomaly_maps[0]
            np.testing.assert_allclose(raw, map_to_original(at_input, (130, 90), pred.preprocess), rtol=1e-6)
            assert abs(float(raw.max()) - float(at_input.max())) / float(at_input.max()) < 0.05
        else:
            img = Image.open(out / name)
            assert img.size == (130, 90) and np.asarray(img).dtype == np.uint16
    r = CliRunner().invoke(app, ["infer", str(bundle), str(photo), "--raw-maps", "npy"])
    assert r.exit_code == 1 and "give --save-maps" in r.output


# ---------------------------------------------------------------------------------- grayscale
def test_grayscale_input_contract_uses_the_same_preprocessing(dataset: Path) -> None:
    from adx_runtime.images import decode_image

    path = list_test_images(dataset)[0]
    grey = PreprocessConfig.square(32, colour="L", mean=(0.5,), std=(0.25,))
    rgb = PreprocessConfig.square(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    g = load_image(path, grey)
    assert g.shape == (1, 32, 32) and grey.channels == 1 and grey.to_dict()["channels"] == 1
    img = decode_image(path)
    expected = (np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR).convert("L"), np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(g[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(normalise_pixels(geometric_array(img, grey), grey), g)
    assert load_image(path, rgb).shape == (3, 32, 32)
    assert PreprocessConfig.from_dict(grey.to_dict()) == grey
    from adx_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="colour L needs 1 mean"):
        PreprocessConfig.square(32, colour="L")
    with pytest.raises(ConfigError, match="RGB or L"):
        PreprocessConfig.square(32, colour="BGR")
