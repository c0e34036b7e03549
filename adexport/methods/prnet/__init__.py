"""PRNet (Zhang et al., "Prototypical Residual Networks for Anomaly Detection and Localization",
CVPR 2023).

A segmentation network trained on normal images with synthetic (and optionally a few real)
anomalies, that sees *residuals* against normal prototypes rather than raw features alone.

Graph (exported): ``image (B, 3, H, W) -> anomaly_map (B, H, W)`` = ``sigmoid(logits)``:

1. frozen encoder ``E``: backbone stages ``l = 1..L`` (default four, strides 4, 8, 16, 32), feature
   maps ``f^l (B, C_l, H_l, W_l)``;
2. multi-scale prototypes ``P^l = {p^l_k}`` (``(K, C_l, H_l, W_l)`` graph buffers): k-means centres
   of the flattened normal training maps, ``K = max(1, round(prototype_ratio * N))`` (the paper:
   about 10 % of the training set). Per image and stage, the nearest prototype over the whole map
   ``p* = argmin_k ||f^l - p^l_k||^2`` (a matmul, ONNX ArgMin + Gather), and the residual
   ``r^l = (f^l - p*)^2`` element-wise;
3. multi-scale fusion (MSFF): each residual is projected to ``width`` channels; level ``l`` gets the
   other levels resized to its resolution (average pooling down, bilinear up), concatenated, fused
   by a 3x3 conv;
4. multi-size self-attention (MSA) per level: non-overlapping ``p x p`` patches for ``p`` in
   ``H_l, H_l/2, H_l/4, H_l/8`` (those that are whole and >= 1) are the tokens, flattened to
   ``C p^2`` channels; q, k, v are a per-channel affine of the tokens (the reference's depthwise
   Conv1d with kernel 1 is exactly that, written as Mul/Add); ``softmax(q k^T / (C p^2)) v`` (the
   reference's 1/d scale: with tokens of tens of thousands of channels a 1/sqrt(d) scale saturates
   the softmax); the patch sizes' outputs are folded back, concatenated, fused by a 1x1 conv and
   added to the input (residual connection);
5. decoder, U-Net style, deepest level first: upsample x2 (bilinear), concatenate the next finer
   level's attention output and the encoder feature ``f^l``, two Conv-BN-ReLU; after the finest
   stage (stride ``s_1``) log2(s_1) x2 upsampling steps with a conv each, then a 1x1 conv to
   one-channel logits ``(B, 1, H, W)``.

Training (:func:`prnet_loss`): ``SmoothL1(sigmoid(z), M) + 5 * Focal(sigmoid(z), M)`` with focal
``alpha = 0.5``, ``gamma = 4``, averaged over pixels; ``M`` is the anomaly mask of the synthetic
anomaly (``adx_synth.anomalies``: textures, CutPaste, scars) or of a real one.

Training data: each epoch, every image gets one synthetic anomaly with probability ``p_anomaly``
(scar sizes scaled from 256 px to ``image_size``). Texture anomalies take generated textures other
than the training category's own (the category is read from the training paths,
``DATASET/CATEGORY/train/good/x.png``), or the images of the ``textures`` folder (DTD in the
paper). With ``anomalies`` set (off by default), a few real anomalies with masks (``n_anomalies``
per defect type) replace training images with probability ``p_real``; the fit report's
``real_anomalies`` size says how many were used (0 when none).

Scoring kind ``map``: the runtime adds no smoothing; the image score is the mean of the ``k``
largest map pixels, ``k = 100`` at 256 px and the same fraction of the map at other sizes (25 at
the default 128 px; ``top_k`` sets it).

Differences from the reference code (pntrungbk15/TNVision, ResNet18): prototypes, residuals and
attention on all selected stages (the reference: stages 1-3, stage 4 only feeds the decoder); one
sigmoid channel instead of a two-class softmax; ``width`` channels after the fusion instead of the
encoder's own (a CPU budget); the fused residuals, not their concatenation with the fused
features, go into the attention (the decoder gets ``f^l`` directly).

CPU defaults (below): the offline ``efficientnet_lite0`` encoder (stages 1-4: channels 24, 40, 112,
320), 128 px, ``width`` 32, one attention block per level, Adam lr 1e-3, batch 8, 100 epochs:
about 1.9 s per epoch for a 48-image demo category on one idle CPU thread (0.78 M trained
parameters, mostly the attention's token affines). Measured on the demo data (one run each, seed
0, 100 epochs, the default top-25 rule; image / pixel AUROC): weave 1.000 / 0.992, wood 0.970 /
0.956, grid 0.750 / 0.973. With the paper's k = 100 unscaled at 128 px: weave 0.995, grid 0.700.

Reference setting: ``--set backbone=resnet18 --set weights=FILE --set image_size=256
--set attention_blocks=3 --set width=64``.

Modules: ``graph`` (the exported network), ``prototypes`` (features, k-means, residuals), ``data``
(synthetic and real training anomalies), ``loss``; this one holds the config, the fitted method and
``fit``, and re-exports the others' public names.

Export hazards handled here: no einsum (tokens by reshape/permute, attention by matmul); no
grouped convolution over the token channels; square inputs of the fitted size only (the
prototypes have a fixed resolution; a non-square or other-sized input is refused with a
ConfigError outside tracing); no float16 (see :meth:`FittedPRNet.export_properties`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from adexport.backbones import DEFAULT_BACKBONE, BackboneInfo, FeatureExtractor, build_architecture
from adexport.methods.base import (TOLERANCE_EXACT, ExportProperties, MapMethod, backbone_and_preprocess,
                                   config_from_dict, graph_tensors, load_graph_tensors)
from adexport.methods.fit_report import PhaseClock
from adexport.methods.prnet.data import (RealAnomalies, load_real_anomalies, make_augment, texture_source,
                                         training_category)
from adexport.methods.prnet.graph import (Decoder, MultiSizeAttention, PRNetGraph, ResidualFusion, TokenAffine,
                                          check_strides, patch_sizes, patchify, unpatchify)
from adexport.methods.prnet.loss import FOCAL_ALPHA, FOCAL_GAMMA, FOCAL_WEIGHT, prnet_loss
from adexport.methods.prnet.prototypes import (KMEANS_ITERATIONS, encode_images, fit_prototypes, kmeans,
                                               nearest_prototype, prototype_count, prototype_residual)
from adexport.training import EpochDataset, TrainingOptions, TrainingRun, fit_network
from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress

PAPER_IMAGE_SIZE = 256  # the image side the paper's top-k image score is given for
PAPER_TOP_K = 100  # image score: mean of the k largest map pixels at 256 px


def paper_top_k(image_size: int) -> int:
    """The paper's image score, the mean of the 100 largest pixels of a 256 px map, as the same
    fraction of the area at ``image_size`` (at least 1)."""
    return max(1, round(PAPER_TOP_K * (image_size / PAPER_IMAGE_SIZE) ** 2))


# --------------------------------------------------------------------------------------------
# Config, fitted method, fit
# --------------------------------------------------------------------------------------------


@dataclass
class PRNetConfig(TrainingOptions):
    backbone: str = DEFAULT_BACKBONE  # frozen encoder (timm name); efficientnet_lite0 has offline weights; reference: resnet18 (--set weights=FILE)
    weights: str = "auto"  # encoder weights: auto | offline | timm | random | path to a weights file
    layers: tuple[int | str, ...] = (1, 2, 3, 4)  # encoder stages, shallow to deep, strides doubling (4, 8, 16, 32)
    image_size: int = 128  # square input side; a multiple of the last stage's stride (reference: 256)
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    prototype_ratio: float = 0.1  # K = round(ratio * N) k-means prototypes per stage (paper: about 10% of the training set)
    width: int = 32  # channels of the fusion, attention and decoder (reference: the encoder's channels, 64-256 for ResNet18)
    attention_blocks: int = 1  # multi-size attention blocks per level (reference: 3)
    p_anomaly: float = 0.5  # probability that a training image gets a synthetic anomaly
    textures: str | None = None  # folder of texture images for texture anomalies (e.g. DTD); None = generated textures
    anomalies: str | None = None  # folder in the MVTec AD layout with a few real anomalies and masks (the paper mixes a few per class); None = none
    n_anomalies: int = 10  # real anomalies taken per defect type at most (the first by file name)
    p_real: float = 0.2  # probability that a training image is replaced by a real anomaly (when anomalies is set)
    top_k: int | None = None  # image score = mean of the k largest map pixels; None = the paper's 100 at 256 px, scaled by area (25 at 128 px)
    epochs: int = 100  # passes over the training images; about 3.5 min for a 48-image demo category on one CPU thread
    batch_size: int = 8  # images per optimiser step
    lr: float = 1e-3  # Adam learning rate

    #: Valid ranges (with the training options'), checked by adexport.methods.options.check_options.
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 32", "prototype_ratio": "fraction", "width": ">= 1", "attention_blocks": ">= 1",
        "p_anomaly": "probability", "n_anomalies": ">= 1", "p_real": "probability", "top_k": ">= 1"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) < 2:
            raise ConfigError(f"PRNet needs at least two encoder stages (paper: four), got layers={list(self.layers)}")

    @property
    def score_top_k(self) -> int:
        return self.top_k if self.top_k is not None else paper_top_k(self.image_size)


def _check_size(config: PRNetConfig, info: BackboneInfo) -> None:
    check_strides(info.strides)
    m = info.strides[-1]
    if config.image_size % m:
        lower = max(m, config.image_size // m * m)
        raise ConfigError(f"image_size {config.image_size} does not suit this encoder: PRNet needs a multiple of {m} "
                          f"(the stride of its last stage); use {lower} or {lower + m}")


def build_graph(config: PRNetConfig, encoder: FeatureExtractor, prototypes: Sequence[torch.Tensor]) -> PRNetGraph:
    """The network for ``config``; initial weights seeded by ``config.seed`` (global RNG untouched)."""
    _check_size(config, encoder.info)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return PRNetGraph(encoder, prototypes, width=config.width, attention_blocks=config.attention_blocks)


class FittedPRNet(MapMethod):
    name = "prnet"

    def __init__(self, config: PRNetConfig, preprocess: PreprocessConfig, graph: PRNetGraph):
        super().__init__(config, preprocess, graph.encoder.info)
        self._graph = graph.eval()

    def postprocess(self) -> PostprocessSpec:
        return PostprocessSpec(self.preprocess.input_size, "none", None, None, "mean_top_k", self.config.score_top_k)

    def write_scoring_data(self, bundle_dir: Path, **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info = self._graph.encoder.info
        return {"map_output": "anomaly_map",
                "map": "sigmoid of the segmentation logits (encoder, prototype residuals, multi-size attention, "
                       "decoder)",
                "stages": list(info.layer_names), "strides": list(info.strides),
                "prototypes": [int(p.shape[0]) for p in self._graph.prototypes()]}, []

    def export_properties(self, **_: Any) -> ExportProperties:
        return ExportProperties(TOLERANCE_EXACT, fp16=False, fp16_reason=(
            "the nearest-prototype search sums the squares of a whole feature map (tens to hundreds of thousands "
            "of terms): the distances overflow float16's maximum of 65504"))

    def tensors(self) -> dict[str, torch.Tensor]:
        return graph_tensors(self._graph)  # network weights and the prototypes

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedPRNet":
        config = config_from_dict(PRNetConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        info = BackboneInfo.from_dict(meta["backbone"])
        prototypes = [tensors[f"graph.prototype{l}"] for l in range(len(info.channels))]
        graph = PRNetGraph(build_architecture(info), prototypes, width=config.width,
                           attention_blocks=config.attention_blocks)
        return cls(config, preprocess, load_graph_tensors(graph, tensors))


def fit(config: PRNetConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None, run: TrainingRun | None = None) -> FittedPRNet:
    """Prototypes from the normal images, then the segmentation network on synthetic (and real)
    anomalies; the encoder stays frozen.

    ``feature_batch_size`` is the caller's inference batch (feature extraction for the prototypes); the
    optimiser's batch is ``config.batch_size``.
    """
    clock = PhaseClock()
    encoder, preprocess = backbone_and_preprocess(config, tiling)
    _check_size(config, encoder.info)
    category = training_category(samples)
    textures = texture_source(config.textures, category)
    real = None
    if config.anomalies is not None:
        real = load_real_anomalies(config.anomalies, category, preprocess, config.n_anomalies, progress)
        counts = ", ".join(f"{k} {v}" for k, v in real.per_defect.items())
        progress.note(f"real anomalies mixed into training (p_real {config.p_real}): {counts}")
    augment = make_augment(textures, config.image_size, p_anomaly=config.p_anomaly, real=real, p_real=config.p_real)
    data = EpochDataset(samples, preprocess, augment=augment, progress=progress)
    clock.lap("setup")
    features = encode_images(encoder, data.raw(np.arange(len(data))), preprocess, batch_size=feature_batch_size, device=device)
    prototypes = fit_prototypes(features, config.prototype_ratio, config.seed)
    graph = build_graph(config, encoder, prototypes)
    clock.lap("prototypes")

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return prnet_loss(model.logits(batch["image"]), batch["mask"])

    trained = fit_network("prnet", graph, loss_fn, data, config, samples, clock=clock, device=device, run=run,
                          progress=progress, description="Training PRNet")
    note = (f"trained on synthetic anomalies ({textures.description}) and {len(real)} real anomalies from "
            f"{config.anomalies} ({', '.join(f'{k} {v}' for k, v in real.per_defect.items())})" if real is not None
            else f"trained on synthetic anomalies only ({textures.description}); no real anomalies (--set anomalies=DIR adds some)")
    return trained.record(FittedPRNet(config, preprocess, graph), clock, notes=[note], sizes={
        "prototypes": int(prototypes[0].shape[0]), "real_anomalies": len(real) if real is not None else 0})


__all__ = [
    "FOCAL_ALPHA", "FOCAL_GAMMA", "FOCAL_WEIGHT", "KMEANS_ITERATIONS", "PAPER_IMAGE_SIZE", "PAPER_TOP_K", "Decoder",
    "FittedPRNet", "MultiSizeAttention", "PRNetConfig", "PRNetGraph", "RealAnomalies", "ResidualFusion", "TokenAffine",
    "build_graph", "encode_images", "fit", "fit_prototypes", "kmeans", "load_real_anomalies", "make_augment",
    "nearest_prototype", "paper_top_k", "patch_sizes", "patchify", "prnet_loss", "prototype_count",
    "prototype_residual", "texture_source", "training_category", "unpatchify",
]
