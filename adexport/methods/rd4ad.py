"""RD4AD (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022).

Graph (exported): frozen teacher encoder ``E`` (three backbone stages) -> one-class bottleneck
embedding (OCBE: multi-scale feature fusion MFF, then one residual stage OCE that downsamples
once more) -> student decoder ``D`` that mirrors the teacher's stages in reverse -> per stage
``1 - cos(f_E^k, f_D^k)`` over channels at every position (the paper's ``M^k``), each upsampled
bilinearly to the input size and summed: ``anomaly_map (B, H, W)``. Smoothing is not in the graph:
the runtime's post-processing applies the Gaussian (sigma = 4) that the manifest names.

Training: only the OCBE and the student learn, from normal images, to reproduce the teacher's
features; the loss is the cosine distance summed over the stages, either per position (the
paper's eq. 2) or over each sample's flattened stage (the authors' code, the default here: it
scored better on the demo data, see :func:`rd4ad_loss`).

Everything is derived from the backbone's ``feature_info`` (channels, strides), so any timm
``features_only`` backbone works, not just ResNets.

Scoring kind ``map``: the runtime adds only the manifest's post-processing (Gaussian smoothing,
image score = the map's maximum).

Paper settings (GPU): teacher ``wide_resnet50_2`` (ImageNet, stages 1-3; ``--set
backbone=wide_resnet50_2 --set weights=FILE``), Adam lr 0.005, betas (0.5, 0.999), batch 16,
256 px images, 200 epochs; anomaly map smoothed with a Gaussian of sigma 4; image score the map's
maximum. The paper's OCE stage has 3 blocks and its decoder 3, 4 and 6 blocks per stage.

CPU defaults (below) keep the optimiser and the 200 epochs but train a small student for 2 CPU
cores: the offline ``efficientnet_lite0`` teacher (channels 24, 40, 112), 160 px, 2 residual blocks
per decoder stage, batch 8 (50 epochs of a 48-image demo category took 25 s on 2 idle cores).
Measured on the demo's weave / grid with the per-position loss: image AUROC 0.85 / 0.97 after 200
epochs (one run), against 0.74 / 0.61 after 100: the student keeps improving after the loss
flattens. The README has the four categories with both losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adexport.backbones import DEFAULT_BACKBONE, BackboneInfo, FeatureExtractor, build_architecture
from adexport.methods.base import (TOLERANCE_EXACT, ExportProperties, MapMethod,
                                   backbone_and_preprocess, config_from_dict, graph_tensors, load_graph_tensors)
from adexport.methods.fit_report import PhaseClock
from adexport.training import EpochDataset, TrainingOptions, TrainingRun, fit_network
from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress

LOSS_MODES = ("per_position", "flatten")

# Small against any feature norm a backbone produces (>~1e-2) so it never decides a distance,
# and representable in float32 (the cosine is always computed in float32).
COSINE_EPS = 1e-8


def cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w), (B, C, h, w) -> (B, h, w)``: ``1 - cos(t, s)`` over channels (eq. 1).

    Written out (not ``F.cosine_similarity``) so the exported ONNX graph holds the same plain ops.
    """
    t, s = t.float(), s.float()
    dot = (t * s).sum(dim=1)
    norms = torch.linalg.vector_norm(t, dim=1) * torch.linalg.vector_norm(s, dim=1)
    return 1.0 - dot / norms.clamp_min(COSINE_EPS)


def rd4ad_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
               mode: str = "flatten") -> torch.Tensor:
    """Distillation loss summed over stages; a scalar.

    ``per_position`` is the paper's eq. 2: the mean over positions of the per-position cosine
    distance ``M^k`` of eq. 1, exactly the anomaly map the model is scored on.

    ``flatten`` is what the authors' code does: each sample's whole stage is flattened into one
    vector and a single cosine taken, so positions with large feature norms weigh more. It is the
    default because it scored better on all four demo categories (same data, seed and settings,
    200 epochs): image AUROC 0.955 / 0.970 / 0.835 / 1.000 against 0.870 / 0.675 / 0.795 / 0.840
    for weave / grid / wood / tile, AUPRO better on three of the four.
    """
    if mode not in LOSS_MODES:
        raise ConfigError(f"loss_mode {mode!r} is not known; valid: {', '.join(LOSS_MODES)}")
    if len(teacher) != len(student):
        raise ValueError(f"{len(teacher)} teacher stages but {len(student)} student stages")
    loss = torch.zeros((), dtype=torch.float32, device=teacher[0].device)
    for t, s in zip(teacher, student):
        if mode == "per_position":
            loss = loss + cosine_distance(t, s).mean()
        else:
            B = t.shape[0]
            loss = loss + cosine_distance(t.reshape(B, -1, 1, 1), s.reshape(B, -1, 1, 1)).mean()
    return loss


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Bottleneck residual block (1x1, 3x3 with ``stride``, 1x1), inner width ``c_out / 2`` as in
    wide ResNets. ``relu_out=False`` leaves the output linear: the student's last block of each
    stage must be able to produce negative values (EfficientNet stages are linear bottlenecks)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, relu_out: bool = True):
        super().__init__()
        mid = max(8, c_out // 2)
        self.body = nn.Sequential(
            _conv_bn_relu(c_in, mid, 1),
            _conv_bn_relu(mid, mid, 3, stride),
            nn.Conv2d(mid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) + self.shortcut(x)
        return F.relu(y) if self.relu_out else y


def _log2_ratio(fine: int, coarse: int) -> int:
    ratio = coarse // fine
    if coarse % fine or ratio < 1 or ratio & (ratio - 1):
        raise ConfigError(f"RD4AD needs backbone stages whose strides grow by powers of two; got {fine} then {coarse}")
    return int(math.log2(ratio))


class OCBE(nn.Module):
    """One-class bottleneck embedding (sec. 3.2): ``[(B, C_k, H/s_k, W/s_k)] -> (B, D, H/2s_K, W/2s_K)``.

    MFF: each earlier stage goes through log2(s_K / s_k) stride-2 3x3 conv + BN + ReLU to the last
    stage's resolution; all are concatenated with the last stage and fused by a 1x1 conv.
    OCE: one residual stage whose first block has stride 2, giving the compact embedding ``phi``.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], *, width: float = 1.0, blocks: int = 3):
        super().__init__()
        hidden = max(8, round(channels[-1] * width))
        embed = max(8, round(2 * channels[-1] * width))
        self.align = nn.ModuleList()
        for c, s in zip(channels[:-1], strides[:-1]):
            n = _log2_ratio(s, strides[-1])
            self.align.append(nn.Sequential(*[_conv_bn_relu(c if i == 0 else hidden, hidden, 3, 2) for i in range(n)]))
        self.fuse = _conv_bn_relu(hidden * (len(channels) - 1) + channels[-1], hidden, 1)
        self.oce = nn.Sequential(*[ResidualBlock(hidden if i == 0 else embed, embed, 2 if i == 0 else 1)
                                   for i in range(blocks)])
        self.out_channels = embed

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        aligned = [m(f) for m, f in zip(self.align, feats[:-1])] + [feats[-1]]
        return self.oce(self.fuse(torch.cat(aligned, dim=1)))


class StudentDecoder(nn.Module):
    """``phi (B, D, H/2s_K, W/2s_K) -> [(B, C_k, H/s_k, W/s_k)]`` in the teacher's stage order.

    Each step, coarsest first, upsamples with a transposed conv (kernel = stride = stride ratio) to
    the next finer teacher stage's resolution and channels, then ``blocks`` residual blocks.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[int], *, blocks: int = 2):
        super().__init__()
        self.steps = nn.ModuleList()
        c_prev, s_prev = in_channels, 2 * strides[-1]
        for c, s in zip(reversed(channels), reversed(strides)):
            r = 2 ** _log2_ratio(s, s_prev)
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(c_prev, c, kernel_size=r, stride=r, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            layers += [ResidualBlock(c, c, relu_out=i < blocks - 1) for i in range(blocks)]
            self.steps.append(nn.Sequential(*layers))
            c_prev, s_prev = c, s

    def forward(self, phi: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        x = phi
        for step in self.steps:
            x = step(x)
            outs.append(x)
        return outs[::-1]


class RD4ADGraph(nn.Module):
    """``image (B, 3, H, W) -> anomaly_map (B, H, W)`` float32. No I/O, no device choice.

    ``H`` and ``W`` must be multiples of :attr:`size_multiple` (twice the last stage's stride) so
    that the student's stages come out at exactly the teacher's sizes.
    """

    def __init__(self, teacher: FeatureExtractor, *, width: float = 1.0, oce_blocks: int = 3,
                 decoder_blocks: int = 2):
        super().__init__()
        info = teacher.info
        if list(info.strides) != sorted(set(info.strides)):
            raise ConfigError(f"RD4AD needs the teacher's stages from shallow to deep with growing strides; "
                              f"got layers {list(info.layer_names)} with strides {list(info.strides)}")
        if width <= 0 or oce_blocks < 1 or decoder_blocks < 1:
            raise ConfigError(f"width must be > 0 and oce_blocks, decoder_blocks >= 1; got {width}, {oce_blocks}, "
                              f"{decoder_blocks}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.bottleneck = OCBE(info.channels, info.strides, width=width, blocks=oce_blocks)
        self.student = StudentDecoder(self.bottleneck.out_channels, info.channels, info.strides, blocks=decoder_blocks)

    @property
    def size_multiple(self) -> int:
        return 2 * self.teacher.info.strides[-1]

    def train(self, mode: bool = True) -> "RD4ADGraph":
        """Train the bottleneck and student only: the teacher's BatchNorm statistics stay fixed."""
        super().train(mode)
        self.teacher.eval()
        return self

    def features(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features ``f_E^k`` (no gradient) and student features ``f_D^k``, same shapes."""
        teacher = [f.detach() for f in self.teacher(image)]
        student = self.student(self.bottleneck(teacher))
        for k, (t, s) in enumerate(zip(teacher, student)):
            if not torch.jit.is_tracing() and t.shape != s.shape:  # export traces a size fit already checked
                raise ConfigError(
                    f"student stage {k} has shape {tuple(s.shape)} but the teacher's is {tuple(t.shape)}: the input "
                    f"{tuple(image.shape[-2:])} must be a multiple of {self.size_multiple} on both sides"
                )
        return teacher, student

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        teacher, student = self.features(image)
        size = image.shape[-2:]
        maps = [F.interpolate(cosine_distance(t, s)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                for t, s in zip(teacher, student)]
        amap = maps[0]
        for m in maps[1:]:
            amap = amap + m
        return amap


# --------------------------------------------------------------------------------------------
# Method contract: config, fitted state, fit
# --------------------------------------------------------------------------------------------


@dataclass
class RD4ADConfig(TrainingOptions):
    backbone: str = DEFAULT_BACKBONE  # teacher (timm name); efficientnet_lite0 has offline weights; paper: wide_resnet50_2
    weights: str = "auto"  # teacher weights: auto | offline | timm | random | path to a weights file
    layers: tuple[int | str, ...] = (1, 2, 3)  # teacher stages, shallow to deep (strides 4, 8, 16)
    image_size: int = 160  # square input side; a multiple of twice the last stage's stride (32); paper: 256
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    width: float = 1.0  # bottleneck width: fused = last stage's channels x width, embedding twice that
    oce_blocks: int = 3  # residual blocks of the one-class embedding stage (paper: 3)
    decoder_blocks: int = 2  # residual blocks after each student upsampling (paper: 3, 4, 6)
    loss_mode: str = "flatten"  # flatten (authors' code; measured better here) | per_position (eq. 2: mean 1 - cos per position)
    blur_sigma: float = 4.0  # Gaussian smoothing of the map in pixels, applied by the runtime (paper: 4)
    epochs: int = 200  # passes over the training images (paper: 200 on a GPU); about 3.5 min per demo category here
    batch_size: int = 8  # images per optimiser step (paper: 16)
    lr: float = 0.005  # Adam learning rate (paper: 0.005)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam's moment decay rates (paper: 0.5, 0.999)

    #: Valid ranges (with the training options'), checked by adexport.methods.options.check_options.
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 32", "width": "> 0", "oce_blocks": ">= 1", "decoder_blocks": ">= 1", "blur_sigma": ">= 0"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) < 2:
            raise ConfigError(f"RD4AD needs at least two teacher stages (paper: three), got layers={list(self.layers)}")
        if self.loss_mode not in LOSS_MODES:
            raise ConfigError(f"loss_mode {self.loss_mode!r} is not known; valid: {', '.join(LOSS_MODES)}")


def build_graph(config: RD4ADConfig, teacher: FeatureExtractor) -> RD4ADGraph:
    """The network for ``config``; the student's initial weights are seeded by ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        graph = RD4ADGraph(teacher, width=config.width, oce_blocks=config.oce_blocks,
                           decoder_blocks=config.decoder_blocks)
    if config.image_size % graph.size_multiple:
        m = graph.size_multiple
        lower = max(m, config.image_size // m * m)
        raise ConfigError(
            f"image_size {config.image_size} does not suit this teacher: RD4AD needs a multiple of {m} (twice "
            f"the stride of its last stage, {graph.teacher.info.strides[-1]}); use {lower} or {lower + m}"
        )
    return graph


class FittedRD4AD(MapMethod):
    name = "rd4ad"

    def __init__(self, config: RD4ADConfig, preprocess: PreprocessConfig, graph: RD4ADGraph):
        super().__init__(config, preprocess, graph.teacher.info)
        self._graph = graph.eval()

    def postprocess(self) -> PostprocessSpec:
        return PostprocessSpec.gaussian(self.preprocess.input_size, self.config.blur_sigma, image_score="max")

    def write_scoring_data(self, bundle_dir: Path, **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info = self._graph.teacher.info
        return {"map_output": "anomaly_map",
                "map": "sum over teacher stages of 1 - cos(teacher, student), upsampled to the input size",
                "stages": list(info.layer_names), "strides": list(info.strides)}, []

    def export_properties(self, **_: Any) -> ExportProperties:
        return ExportProperties(TOLERANCE_EXACT, fp16=False, fp16_reason=(
            "the map is 1 - cos of teacher and student features that agree closely on normal images; "
            "float16 keeps about 3 significant digits, so those small distances are lost"),
            int8=False, int8_reason=(
            "the map is 1 - cos of teacher and student features that agree closely on normal images, while int8 "
            "quantization moves backbone features by about 15% of their range (measured on efficientnet_lite0), "
            "far more than those distances; export it in float32"))

    def tensors(self) -> dict[str, torch.Tensor]:
        return graph_tensors(self._graph)

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedRD4AD":
        config = config_from_dict(RD4ADConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        teacher = build_architecture(BackboneInfo.from_dict(meta["backbone"]))
        graph = RD4ADGraph(teacher, width=config.width, oce_blocks=config.oce_blocks,
                           decoder_blocks=config.decoder_blocks)
        return cls(config, preprocess, load_graph_tensors(graph, tensors))


def fit(config: RD4ADConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None, run: TrainingRun | None = None) -> FittedRD4AD:
    """Train the OCBE bottleneck and the student decoder on normal images (the teacher stays frozen).

    ``feature_batch_size`` is unused: this network is scored by its graph alone, with no features
    extracted after training; the optimiser's batch is ``config.batch_size``.
    """
    clock = PhaseClock()
    teacher, preprocess = backbone_and_preprocess(config, tiling)
    graph = build_graph(config, teacher)
    data = EpochDataset(samples, preprocess, progress=progress)
    clock.lap("setup")

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return rd4ad_loss(*model.features(batch["image"]), mode=config.loss_mode)

    trained = fit_network("rd4ad", graph, loss_fn, data, config, samples, clock=clock, device=device, run=run,
                          progress=progress, description="Training RD4AD")
    return trained.record(FittedRD4AD(config, preprocess, graph), clock)
