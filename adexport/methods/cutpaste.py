"""CutPaste (Li, Sohn, Yoon and Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection
and Localization", CVPR 2021).

Training (sec. 3.1-3.2): an encoder and a projection head learn to tell normal images from the
same images with a CutPaste augmentation: a rectangle (2-15 % of the area, aspect 0.3-3.3
log-uniform) cut, colour-jittered and pasted elsewhere; or a scar (a thin 2-16 x 10-25 px
rectangle, rotated +-45 degrees); or both as a 3-way task. The augmentations come from
``adx_synth.anomalies`` (shared with PRNet). Every image is colour-jittered before cutting.

Scoring (sec. 3.3): a Gaussian density estimator on the encoder's L2-normalised embeddings of the
training images, covariance by Ledoit-Wolf shrinkage; the anomaly score is the Mahalanobis
distance. The bundle stores the mean and the Cholesky factor of the inverse covariance exactly as
PaDiM's, and the runtime's one ``gaussian`` scorer computes the distance (scoring kind
``gaussian``). The projection head is used in training only; it is not exported.

Localisation (sec. 4.2): ``level=patch`` trains the same network on random ``patch_size`` crops
and scores every patch of a dense grid. The paper trains on 64 x 64 patches of 256 x 256 images
and extracts patch embeddings with stride 4; the CPU default here keeps the patch at a quarter of
the image side (32 px of 128 px) with stride 8. The graph pads the image by ``(patch - stride) / 2``
(reflect) so that patch centres fall on the stride grid, cuts all patches in the graph, runs them
through the encoder in one batched call, and outputs ``(B, P, d)`` embeddings; one Gaussian over
all training patches scores every position, and the map is the distance grid upsampled and
smoothed with a Gaussian of sigma = the stride (the paper's Gaussian smoothing at the patch
stride).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adexport.backbones import DEFAULT_BACKBONE, BackboneInfo, FeatureExtractor, build_architecture
from adexport.methods.base import (TOLERANCE_EXACT, ExportProperties, FittedMethod, Reference, backbone_and_preprocess, config_from_dict, graph_tensors,
                                   load_graph_tensors, run_graph)
from adexport.methods.density import ledoit_wolf_gaussian, mahalanobis, write_gaussian
from adexport.methods.fit_report import PhaseClock
from adexport.training import Augment, EpochDataset, TrainingOptions, TrainingRun, fit_network
from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress

VARIANTS = ("normal", "scar", "3way")  # the paper's names: "normal" is plain CutPaste
LEVELS = ("image", "patch")
HEAD_WIDTH, HEAD_BOTTLENECK = 512, 128  # the seed's projection head: head_layers x 512, then 128, then classes


@dataclass
class CutPasteConfig(TrainingOptions):
    backbone: str = DEFAULT_BACKBONE  # encoder (timm name); efficientnet_lite0 has offline weights; paper: resnet18 (--weights FILE)
    weights: str = "auto"  # encoder's starting weights: auto | offline | timm | random | path to a weights file
    layers: tuple[int | str, ...] = (-1,)  # encoder stage whose global average is the embedding (the last; ResNet18: 512-d)
    image_size: int = 128  # square input side (paper: 256)
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    variant: str = "3way"  # normal (CutPaste vs original) | scar | 3way (original / CutPaste / scar; the paper's best)
    head_layers: int = 1  # projection head: this many 512-unit layers, then 128, then the classes (the seed's head_layer)
    level: str = "image"  # image: one embedding per image, no map | patch: dense patch embeddings and a map (sec. 4.2)
    patch_size: int = 32  # patch level: patch side in pixels (paper: 64 at 256 px; the same quarter of the side here)
    patch_stride: int = 8  # patch level: stride of the dense patch grid (paper: 4 at 256 px)
    patches_per_image: int = 4  # patch level: random patches cropped from each image per training step
    jitter: float = 0.1  # colour jitter (brightness, contrast, saturation, hue) of each image and of the pasted patch
    epochs: int = 40  # passes over the images; one optimiser step each for 48 images at batch 32 (134 s for a demo category on one core; the paper: 256 steps per epoch, the seed's run 10,000 steps on a GPU)
    batch_size: int = 32  # images read per step, each augmented into every class of the variant (paper: 32)
    optimizer: str = "sgd"  # paper: SGD
    lr: float = 0.03  # paper: 0.03
    momentum: float = 0.9  # paper: 0.9
    weight_decay: float = 3e-5  # paper: 3e-5
    schedule: str = "cosine"  # paper: cosine decay

    #: Valid ranges (with the training options'), checked by adexport.methods.options.check_options.
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 32", "head_layers": ">= 0", "patch_size": ">= 1", "patch_stride": ">= 1",
        "patches_per_image": ">= 1", "jitter": "in [0, 1)"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant {self.variant!r} is not known; valid: {', '.join(VARIANTS)}")
        if self.level not in LEVELS:
            raise ConfigError(f"level {self.level!r} is not known; valid: {', '.join(LEVELS)}")
        if len(self.layers) != 1:
            raise ConfigError(f"CutPaste embeds one encoder stage, got layers={list(self.layers)}")
        if self.level == "patch":
            p, s = self.patch_size, self.patch_stride
            if not (8 <= p <= self.image_size and 1 <= s <= p and (p - s) % 2 == 0 and self.image_size % s == 0):
                raise ConfigError(
                    f"patch level needs 8 <= patch_size <= image_size, 1 <= patch_stride <= patch_size, "
                    f"patch_size - patch_stride even and image_size a multiple of patch_stride; got patch_size {p}, "
                    f"patch_stride {s}, image_size {self.image_size}")

    @property
    def classes(self) -> int:
        return 3 if self.variant == "3way" else 2

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.patch_stride
        return n, n


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """``(B, C, h, w) -> (B, d)``: the chosen stage's feature map, globally averaged."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor
        self.dim = extractor.info.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)[-1].mean(dim=(2, 3))


def projection_head(dim: int, layers: int, classes: int) -> nn.Sequential:
    """``layers`` x (Linear 512, BatchNorm, ReLU), then Linear 128 + BatchNorm + ReLU, then the class logits."""
    mods: list[nn.Module] = []
    for width in [HEAD_WIDTH] * layers + [HEAD_BOTTLENECK]:
        mods += [nn.Linear(dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        dim = width
    mods.append(nn.Linear(dim, classes))
    return nn.Sequential(*mods)


class CutPasteNet(nn.Module):
    """What is trained: ``(B, C, h, w) -> class logits (B, classes)``."""

    def __init__(self, encoder: Encoder, head_layers: int, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = projection_head(encoder.dim, head_layers, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class ImageEmbedding(nn.Module):
    """Exported graph, image level: ``image (B, C, H, W) -> embedding (B, d)``, L2-normalised."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(image), dim=1)


class PatchEmbedding(nn.Module):
    """Exported graph, patch level: ``image (B, C, H, W) -> embedding (B, P, d)``, L2-normalised, for the
    ``P = (H / s) x (W / s)`` patches of side ``p`` centred on the stride grid (row-major).

    The image is reflect-padded by ``(p - s) / 2`` so that patch ``(i, j)`` is centred on pixel
    ``(i s + s / 2, j s + s / 2)``: exactly where bilinear upsampling of the ``(H / s, W / s)`` grid puts
    its cell centres. All patches go through the encoder in one batched call.

    The patches are one gather of the flattened padded image with a fixed index ``(P * p * p,)``: ONNX
    export of ``Tensor.unfold`` needs static sizes the traced padding does not keep.
    """

    def __init__(self, encoder: Encoder, image_size: int, patch_size: int, stride: int):
        super().__init__()
        self.encoder = encoder
        self.patch, self.stride = patch_size, stride
        self.pad = (patch_size - stride) // 2
        self.grid = (image_size // stride, image_size // stride)
        side = image_size + 2 * self.pad
        starts = torch.arange(self.grid[0]) * stride
        offsets = torch.arange(patch_size)
        rows = (starts[:, None, None, None] + offsets[None, None, :, None])  # (gh, 1, p, 1)
        cols = (starts[None, :, None, None] + offsets[None, None, None, :])  # (1, gw, 1, p)
        index = (rows * side + cols).reshape(-1)  # (gh * gw * p * p,) row-major patches, row-major pixels
        self.register_buffer("index", index, persistent=False)  # rebuilt from the config, never saved
        self.side = side

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        c, p, n = image.shape[1], self.patch, self.grid[0] * self.grid[1]
        x = F.pad(image, (self.pad, self.pad, self.pad, self.pad), mode="reflect") if self.pad else image
        patches = x.reshape(-1, c, self.side * self.side).index_select(2, self.index)  # (B, C, P * p * p)
        patches = patches.reshape(-1, c, n, p, p).transpose(1, 2).reshape(-1, c, p, p)  # (B * P, C, p, p)
        emb = F.normalize(self.encoder(patches), dim=1)
        return emb.reshape(-1, n, self.encoder.dim)


def make_augment(config: CutPasteConfig) -> Augment:
    """The training augmentation: uint8 images ``(B, H, W, C)`` -> every class of the variant, with labels.

    Patch level: ``patches_per_image`` random crops per image first, then the augmentation on each crop
    (its area and scar ranges relative to the patch)."""
    from adx_synth.anomalies import cutpaste_batch, scar_sizes  # noqa: PLC0415

    side = config.patch_size if config.level == "patch" else config.image_size
    # the paper's pixel sizes at the image's resolution, kept within half the (patch) side
    scar_width, scar_height = (tuple(min(v, side // 2) for v in r) for r in scar_sizes(config.image_size))

    def augment(images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if config.level == "patch":
            n, h, w = images.shape[:3]
            p, k = config.patch_size, config.patches_per_image
            ys = rng.integers(0, h - p + 1, size=n * k)
            xs = rng.integers(0, w - p + 1, size=n * k)
            images = np.stack([images[i // k, y:y + p, x:x + p] for i, (y, x) in enumerate(zip(ys, xs))])
        out = cutpaste_batch(images, rng, config.variant, pre_jitter=config.jitter, jitter=config.jitter,
                             scar_width=scar_width, scar_height=scar_height)
        return {"image": out["image"], "label": out["label"]}

    return augment


def build_network(config: CutPasteConfig, extractor: FeatureExtractor) -> CutPasteNet:
    """Encoder and projection head; the head's initial weights are seeded by ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return CutPasteNet(Encoder(extractor), config.head_layers, config.classes)


def embedding_graph(config: CutPasteConfig, encoder: Encoder) -> nn.Module:
    if config.level == "patch":
        return PatchEmbedding(encoder, config.image_size, config.patch_size, config.patch_stride)
    return ImageEmbedding(encoder)


# --------------------------------------------------------------------------------------------
# Method contract
# --------------------------------------------------------------------------------------------


class FittedCutPaste(FittedMethod):
    name = "cutpaste"
    scoring_kind = "gaussian"
    output_names = ("embedding",)

    def __init__(self, config: CutPasteConfig, preprocess: PreprocessConfig, encoder: Encoder,
                 mean: torch.Tensor, chol: torch.Tensor, shrinkage: float):
        super().__init__(config, preprocess, encoder.extractor.info)
        self.encoder = encoder.eval()
        self._graph = embedding_graph(config, self.encoder).eval()
        self.mean = mean  # (1, d) float32
        self.chol = chol  # (1, d, d) float64, S^-1 = L L^T
        self.shrinkage = shrinkage

    def graph(self) -> nn.Module:
        return self._graph

    def export_properties(self, **_: Any) -> ExportProperties:
        return ExportProperties(TOLERANCE_EXACT, int8=False, int8_reason=(
            "the score is a Mahalanobis distance under a Ledoit-Wolf covariance of a trained embedding, which "
            "weights its low-variance directions heavily; an int8 graph moved image scores by 16% on the test "
            "setup (tolerance 10%), so export it in float32"))

    def postprocess(self) -> PostprocessSpec:
        if self.config.level == "image":
            return PostprocessSpec.image_only()
        return PostprocessSpec.gaussian(self.config.grid, float(self.config.patch_stride), image_score="max")

    @torch.no_grad()
    def reference(self, x: torch.Tensor, *, exact: bool = True, tiles: torch.Tensor | None = None) -> Reference:
        emb = self._graph(x)
        if self.config.level == "image":
            return Reference({"embedding": emb}, mahalanobis(emb[:, None], self.mean, self.chol, exact=exact)[:, 0], None)
        dist = mahalanobis(emb, self.mean, self.chol, exact=exact)  # (B, P)
        raw = dist.view(len(x), *self.config.grid)
        maps = self.reference_maps(raw)
        return Reference({"embedding": emb}, self.reference_image_scores(maps), maps, raw)

    def write_scoring_data(self, bundle_dir: Path, **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        gaussian, entry = write_gaussian(bundle_dir, self.mean, self.chol, "float32",
                                         estimator="Ledoit-Wolf shrinkage (scikit-learn)", shrinkage=self.shrinkage,
                                         shared_by_positions=self.config.level == "patch")
        scoring = {"embedding_output": "embedding", "embedding": "L2-normalised global average of the encoder's "
                   + ("last stage" if self.config.level == "image" else
                      f"last stage for every {self.config.patch_size} px patch at stride {self.config.patch_stride}"),
                   "gaussian": gaussian}
        return scoring, [entry]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**graph_tensors(self.encoder), "mean": self.mean, "chol": self.chol,
                "shrinkage": torch.tensor([self.shrinkage], dtype=torch.float64)}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedCutPaste":
        config = config_from_dict(CutPasteConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        encoder = Encoder(build_architecture(BackboneInfo.from_dict(meta["backbone"])))
        load_graph_tensors(encoder, tensors)
        return cls(config, preprocess, encoder, tensors["mean"], tensors["chol"], float(tensors["shrinkage"][0]))


def fit(config: CutPasteConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None, run: TrainingRun | None = None) -> FittedCutPaste:
    """Train encoder and head on the variant's classification task, then fit the Gaussian on the
    training images' (or patches') embeddings.

    ``feature_batch_size`` is the caller's inference batch (embedding extraction); the optimiser's batch is
    ``config.batch_size``.
    """
    clock = PhaseClock()
    extractor, preprocess = backbone_and_preprocess(config, tiling)
    net = build_network(config, extractor)
    data = EpochDataset(samples, preprocess, augment=make_augment(config), progress=progress)
    clock.lap("setup")

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(model(batch["image"]), batch["label"].long())

    trained = fit_network("cutpaste", net, loss_fn, data, config, samples, clock=clock, device=device, run=run,
                          progress=progress, description=f"Training CutPaste ({config.variant}, {config.level} level)")
    encoder = net.encoder.eval()
    graph = embedding_graph(config, encoder).eval()
    outputs, _ = run_graph(graph, samples, preprocess, batch_size=feature_batch_size, device=device, progress=progress)
    emb = torch.cat(outputs)
    emb = emb.reshape(-1, emb.shape[-1])  # every image (or every patch of every image) is one sample
    clock.lap("embedding")
    with progress.task("Fitting the Gaussian (Ledoit-Wolf)", None):
        mean, chol, shrinkage = ledoit_wolf_gaussian(emb)
    clock.lap("gaussian_fit")
    fitted = FittedCutPaste(config, preprocess, encoder, mean, chol, shrinkage)
    return trained.record(fitted, clock, sizes={"embedding_dim": int(emb.shape[1]), "gaussian_samples": int(emb.shape[0])})
