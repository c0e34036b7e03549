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

Export hazards handled here: no einsum (tokens by reshape/permute, attention by matmul); no
grouped convolution over the token channels; square inputs of the fitted size only (the
prototypes have a fixed resolution; a non-square or other-sized input is refused with a
ConfigError outside tracing); no float16 (see :meth:`FittedPRNet.export_properties`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adexport.backbones import DEFAULT_BACKBONE, BackboneInfo, FeatureExtractor, build_architecture
from adexport.methods.base import (TOLERANCE_EXACT, ExportProperties, MapMethod, backbone_and_preprocess,
                                   config_from_dict, graph_tensors, load_graph_tensors)
from adexport.training import Augment, EpochDataset, TrainingOptions, TrainingRun, run_identity, train_network
from adx_runtime.datasets import GOOD, Sample, list_images
from adx_runtime.errors import ConfigError, ImageDecodeError
from adx_runtime.images import decode_image
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, geometric, geometric_array, normalise
from adx_runtime.progress import SILENT, Progress

FOCAL_WEIGHT = 5.0  # weight of the focal term against SmoothL1 (reference)
FOCAL_ALPHA = 0.5  # focal loss alpha (reference)
FOCAL_GAMMA = 4.0  # focal loss gamma (reference)
KMEANS_ITERATIONS = 100  # Lloyd iterations at most (stops earlier when the assignment is stable)
PAPER_IMAGE_SIZE = 256  # the image side the paper's top-k image score is given for
PAPER_TOP_K = 100  # image score: mean of the k largest map pixels at 256 px


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def prnet_loss(logits: torch.Tensor, mask: torch.Tensor, *, focal_weight: float = FOCAL_WEIGHT,
               alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """``SmoothL1(P, M) + focal_weight * mean(FL(P, M))`` with ``P = sigmoid(logits)``; a scalar.

    ``logits, mask: (B, 1, H, W)``; ``mask`` in ``[0, 1]``. The focal term (Lin et al.) per pixel:
    ``FL = -alpha M (1 - P)^gamma log P - (1 - alpha) (1 - M) P^gamma log(1 - P)``, with the logs
    taken as log-sigmoids of the logits so that confident pixels stay finite.
    """
    if logits.shape != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.to(logits.dtype)
    p = torch.sigmoid(logits)
    smooth_l1 = F.smooth_l1_loss(p, mask)
    focal = -(alpha * mask * (1.0 - p) ** gamma * F.logsigmoid(logits)
              + (1.0 - alpha) * (1.0 - mask) * p**gamma * F.logsigmoid(-logits))
    return smooth_l1 + focal_weight * focal.mean()


# --------------------------------------------------------------------------------------------
# Prototypes: seeded k-means, nearest prototype, residual
# --------------------------------------------------------------------------------------------


def _squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(N, D), (K, D) -> (N, K)``: ``||x||^2 - 2 x.c + ||c||^2``, clamped at 0."""
    return ((x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None]).clamp_min(0.0)


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Seeded k-means (k-means++ seeding, then Lloyd) of ``x (N, D)``: centres ``(k, D)`` float32.

    Deterministic for a given ``seed`` (one torch generator, float64 on the CPU, no threads'
    reduction order in play beyond torch's own matmul). A cluster that loses all its points keeps
    its previous centre.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= N, got k={k} for N={n} training images")
    data = x.detach().to("cpu", torch.float64).flatten(1)
    g = torch.Generator().manual_seed(int(seed))
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = _squared_distances(data, data[chosen[0]][None])[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        probs = d2 / total if total > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        i = int(torch.multinomial(probs, 1, generator=g))
        chosen.append(i)
        d2 = torch.minimum(d2, _squared_distances(data, data[i][None])[:, 0])
    centres = data[chosen].clone()
    assign = _squared_distances(data, centres).argmin(1)
    for _ in range(iterations):
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, data)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None].to(torch.float64)
        new = _squared_distances(data, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return centres.float()


def prototype_count(n_images: int, ratio: float) -> int:
    """``K = max(1, round(ratio * N))``, at most ``N``."""
    return min(n_images, max(1, round(ratio * n_images)))


def nearest_prototype(f: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index ``(B,)`` of the nearest prototype to each map, squared L2 over the whole map.

    ``f (B, C, h, w)``, ``prototypes (K, C, h, w)``. The distance is ``||f||^2 - 2 f.p + ||p||^2``
    by one matmul; ``||f||^2`` is the same for every ``k``, so it is left out of the argmin (it
    changes no choice and would only add rounding).
    """
    flat, protos = f.flatten(1), prototypes.flatten(1)
    return ((protos * protos).sum(1)[None] - 2.0 * flat @ protos.T).argmin(dim=1)


def prototype_residual(f: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``r = (f - p*)^2 (B, C, h, w)`` with ``p*`` the nearest prototype (:func:`nearest_prototype`)."""
    idx = nearest_prototype(f, prototypes)
    matched = prototypes.flatten(1).index_select(0, idx).view(-1, *prototypes.shape[1:])
    return (f - matched) ** 2


# --------------------------------------------------------------------------------------------
# Network pieces
# --------------------------------------------------------------------------------------------


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, src: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``x`` of spatial size ``src`` to ``size``: average pooling when shrinking by a whole factor,
    bilinear otherwise. The sizes are given, not read from ``x``, so the exported graph has
    constant kernels and scales."""
    h, w = src
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h >= th and w >= tw and h % th == 0 and w % tw == 0:
        return F.avg_pool2d(x, (h // th, w // tw))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ResidualFusion(nn.Module):
    """MSFF of the residuals: ``[(B, C_l, H_l, W_l)] -> [(B, width, H_l, W_l)]``.

    Each residual is projected to ``width`` channels (1x1 Conv-BN-ReLU); level ``l`` concatenates
    every projected level resized to ``(H_l, W_l)`` and fuses them with a 3x3 Conv-BN-ReLU.
    """

    def __init__(self, channels: Sequence[int], grids: Sequence[tuple[int, int]], width: int):
        super().__init__()
        self.grids = [tuple(g) for g in grids]
        self.project = nn.ModuleList([_conv_bn_relu(c, width, 1) for c in channels])
        self.fuse = nn.ModuleList([_conv_bn_relu(width * len(channels), width, 3) for _ in channels])

    def forward(self, residuals: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = [p(r) for p, r in zip(self.project, residuals)]
        return [fuse(torch.cat([_resize(x, src, grid) for x, src in zip(projected, self.grids)], dim=1))
                for fuse, grid in zip(self.fuse, self.grids)]


def patch_sizes(side: int) -> list[int]:
    """``side, side/2, side/4, side/8``, those that are whole numbers >= 1 (duplicates dropped)."""
    out: list[int] = []
    for d in (1, 2, 4, 8):
        if side % d == 0 and side // d >= 1 and side // d not in out:
            out.append(side // d)
    return out


def patchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """``(B, c, h, w) -> (B, (h/p)(w/p), c p^2)``: non-overlapping ``p x p`` patches as tokens
    (each token holds its channels, then rows, then columns)."""
    t = x.reshape(-1, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(-1, (h // p) * (w // p), c * p * p)


def unpatchify(t: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, (h/p)(w/p), c p^2) -> (B, c, h, w)``."""
    x = t.reshape(-1, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, c, h, w)


class TokenAffine(nn.Module):
    """``t * scale + shift`` per token channel: the reference's ``Conv1d(D, D, 1, groups=D)`` over
    token channels, which is exactly a per-channel affine (exported as Mul/Add, not a grouped
    convolution with tens of thousands of groups)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.scale + self.shift


class MultiSizeAttention(nn.Module):
    """MSA of one level: ``(B, C, S, S) -> (B, C, S, S)``.

    For every patch size ``p`` (:func:`patch_sizes`): tokens ``T (B, L, C p^2)``,
    ``q, k, v = affine_q(T), affine_k(T), affine_v(T)``, ``softmax(q k^T / (C p^2)) v`` folded
    back to a map. The maps of all patch sizes are concatenated, fused by a 1x1 Conv-BN and added
    to the input, then ReLU.
    """

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.channels, self.side = channels, side
        self.sizes = patch_sizes(side)
        self.q = nn.ModuleList([TokenAffine(channels * p * p) for p in self.sizes])
        self.k = nn.ModuleList([TokenAffine(channels * p * p) for p in self.sizes])
        self.v = nn.ModuleList([TokenAffine(channels * p * p) for p in self.sizes])
        self.fuse = nn.Sequential(nn.Conv2d(channels * len(self.sizes), channels, 1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.channels, self.side
        outs = []
        for p, aq, ak, av in zip(self.sizes, self.q, self.k, self.v):
            tokens = patchify(x, p, c, s, s)
            q, k, v = aq(tokens), ak(tokens), av(tokens)
            attn = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * (1.0 / (c * p * p)), dim=-1)
            outs.append(unpatchify(torch.matmul(attn, v), p, c, s, s))
        return F.relu(x + self.fuse(torch.cat(outs, dim=1)))


class Decoder(nn.Module):
    """``attention outputs a^l, encoder features f^l -> logits (B, 1, H, W)``, deepest level first.

    Deepest: two Conv-BN-ReLU over ``[a^L, f^L]``; each finer level: upsample x2 (bilinear), two
    Conv-BN-ReLU over ``[up, a^l, f^l]``; then ``log2(s_1)`` steps of x2 upsampling and a
    Conv-BN-ReLU (channels halved each step, at least 8) and a 1x1 conv to one channel.
    """

    def __init__(self, channels: Sequence[int], grids: Sequence[tuple[int, int]], first_stride: int, width: int,
                 image_size: int):
        super().__init__()
        self.grids = [tuple(g) for g in grids]
        self.image_size = image_size
        n = len(channels)
        self.blocks = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(width + channels[i] + (width if i < n - 1 else 0), width),
                          _conv_bn_relu(width, width))
            for i in range(n)
        ])
        steps = int(round(math.log2(first_stride)))
        widths = [width] + [max(8, width // 2 ** (i + 1)) for i in range(steps)]
        self.up_sizes = [image_size // 2 ** (steps - 1 - i) for i in range(steps)]
        self.head = nn.ModuleList([_conv_bn_relu(widths[i], widths[i + 1]) for i in range(steps)])
        self.out = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, attended: Sequence[torch.Tensor], features: Sequence[torch.Tensor]) -> torch.Tensor:
        n = len(self.blocks)
        d = self.blocks[n - 1](torch.cat([attended[n - 1], features[n - 1]], dim=1))
        for i in range(n - 2, -1, -1):
            up = F.interpolate(d, size=self.grids[i], mode="bilinear", align_corners=False)
            d = self.blocks[i](torch.cat([up, attended[i], features[i]], dim=1))
        for size, conv in zip(self.up_sizes, self.head):
            d = conv(F.interpolate(d, size=(size, size), mode="bilinear", align_corners=False))
        return self.out(d)


# --------------------------------------------------------------------------------------------
# Exported graph
# --------------------------------------------------------------------------------------------


def _check_strides(strides: Sequence[int]) -> None:
    ok = all(s > 0 and s & (s - 1) == 0 for s in strides) and all(b == 2 * a for a, b in zip(strides, strides[1:]))
    if not ok or strides[0] < 2:
        raise ConfigError(f"PRNet needs encoder stages whose strides double from stage to stage, starting at >= 2 "
                          f"(e.g. 4, 8, 16, 32); got {list(strides)}. Choose other layers (--set layers=...)")


class PRNetGraph(nn.Module):
    """``image (B, 3, S, S) -> anomaly_map (B, S, S)`` float32 = ``sigmoid(logits)``.

    ``prototypes``: per encoder stage ``(K, C_l, S / s_l, S / s_l)`` (buffers ``prototype0``..);
    they fix the input side ``S``. No I/O, no device choice.
    """

    def __init__(self, encoder: FeatureExtractor, prototypes: Sequence[torch.Tensor], *, width: int = 32,
                 attention_blocks: int = 1):
        super().__init__()
        info = encoder.info
        _check_strides(info.strides)
        if len(prototypes) != len(info.channels):
            raise ConfigError(f"{len(prototypes)} prototype sets for {len(info.channels)} encoder stages")
        if width < 1 or attention_blocks < 1:
            raise ConfigError(f"width and attention_blocks must be >= 1, got {width} and {attention_blocks}")
        self.image_size = int(prototypes[0].shape[-1] * info.strides[0])
        grids = []
        for l, (p, c, s) in enumerate(zip(prototypes, info.channels, info.strides)):
            side = self.image_size // s
            if p.dim() != 4 or tuple(p.shape[1:]) != (c, side, side):
                raise ConfigError(f"prototypes of stage {l} must be (K, {c}, {side}, {side}), got {tuple(p.shape)}")
            self.register_buffer(f"prototype{l}", p.float().contiguous(), persistent=True)
            grids.append((side, side))
        self.num_stages = len(grids)
        self.encoder = encoder.eval().requires_grad_(False)
        self.fusion = ResidualFusion(info.channels, grids, width)
        self.attention = nn.ModuleList([
            nn.Sequential(*[MultiSizeAttention(width, g[0]) for _ in range(attention_blocks)]) for g in grids
        ])
        self.decoder = Decoder(info.channels, grids, info.strides[0], width, self.image_size)

    def prototypes(self) -> list[torch.Tensor]:
        return [getattr(self, f"prototype{l}") for l in range(self.num_stages)]

    def train(self, mode: bool = True) -> "PRNetGraph":
        """Train everything but the encoder, whose BatchNorm statistics stay fixed."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _check_input(self, image: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return  # export traces an input whose size the fit fixed
        if image.dim() != 4:
            raise ConfigError(f"PRNet takes images (B, C, H, W), got a tensor of shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h != w:
            raise ConfigError(f"PRNet takes square images only (its attention cuts square patches); got {h} x {w}. "
                              f"Resize to {self.image_size} x {self.image_size}")
        if h != self.image_size:
            raise ConfigError(f"this PRNet was fitted at {self.image_size} px (its prototypes have that geometry); "
                              f"got {h} x {w}")

    def stages(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Every intermediate: encoder features ``f^l``, residuals ``r^l``, fused, attended maps."""
        self._check_input(image)
        features = [f.detach() for f in self.encoder(image)]
        residuals = [prototype_residual(f, p) for f, p in zip(features, self.prototypes())]
        fused = self.fusion(residuals)
        attended = [att(x) for att, x in zip(self.attention, fused)]
        return {"features": features, "residuals": residuals, "fused": fused, "attended": attended}

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, 1, H, W)`` (training)."""
        s = self.stages(image)
        return self.decoder(s["attended"], s["features"])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))[:, 0]


# --------------------------------------------------------------------------------------------
# Training data: synthetic anomalies, real anomalies
# --------------------------------------------------------------------------------------------


@dataclass
class RealAnomalies:
    """A few real anomalous images at the model geometry with their masks."""

    images: np.ndarray  # (M, H, W, C) uint8
    masks: np.ndarray  # (M, 1, H, W) float32, 0 or 1
    per_defect: dict[str, int]  # images taken per defect type

    def __len__(self) -> int:
        return len(self.images)


def _category_folder(folder: Path, category: str | None) -> Path:
    if (folder / "test").is_dir():
        return folder
    if category and (folder / category / "test").is_dir():
        return folder / category
    raise ConfigError(f"anomalies folder {str(folder)!r} is not in the MVTec AD layout: expected test/<defect>/*.png "
                      f"and ground_truth/<defect>/<name>_mask.png in it"
                      + (f" (or in {category}/ inside it)" if category else ""))


def _mask_file(gt_dir: Path, image: Path) -> Path | None:
    # The naming rule of adx_runtime.datasets (MVTec's <name>_mask.png, or the image's own name).
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}"):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def load_real_anomalies(folder: str | Path, category: str | None, preprocess: PreprocessConfig,
                        n_per_defect: int = 10, progress: Progress = SILENT) -> RealAnomalies:
    """The first ``n_per_defect`` images (by name) of every ``test/<defect>/`` that have a mask.

    ``folder`` is a category folder in the MVTec AD layout, or a dataset root holding ``category``
    (``adx_runtime.datasets.load_split`` is not used: it insists on ``train/good``, which a folder
    of a few real anomalies need not have). Images go through the runtime's geometry; masks are
    resized with nearest neighbour and thresholded at 128. Use anomalies that are not in the test
    set you evaluate on.
    """
    root = _category_folder(Path(folder), category)
    nearest = dataclasses.replace(preprocess, interpolation="nearest")
    images, masks, per_defect = [], [], {}
    defects = sorted(p for p in (root / "test").iterdir()
                     if p.is_dir() and p.name != GOOD and not p.name.startswith("."))
    for d in defects:
        taken = 0
        for img in list_images(d):
            if taken >= n_per_defect:
                break
            mask_path = _mask_file(root / "ground_truth" / d.name, img)
            if mask_path is None:
                continue
            try:
                arr = geometric_array(decode_image(img), preprocess)
                mask = np.asarray(geometric(decode_image(mask_path).convert("L"), nearest)) >= 128
            except ImageDecodeError as exc:
                progress.note(f"skipped real anomaly {exc.path}: {exc.reason}")
                continue
            images.append(arr)
            masks.append(mask[None].astype(np.float32))
            taken += 1
        if taken:
            per_defect[d.name] = taken
    if not images:
        raise ConfigError(f"anomalies folder {str(root)!r} holds no anomalous image with a mask "
                          "(test/<defect>/<name>.png with ground_truth/<defect>/<name>_mask.png)")
    return RealAnomalies(np.stack(images), np.stack(masks), per_defect)


def training_category(samples: Sequence[Sample]) -> str | None:
    """The dataset category of the training images (``DATASET/CATEGORY/train/good/x.png``), or
    ``None`` when the paths do not have that shape."""
    parents = Path(samples[0].path).parents
    if len(parents) >= 3 and parents[0].name == GOOD and parents[1].name == "train":
        return parents[2].name
    return None


def texture_source(textures: str | None, category: str | None) -> Any:
    """``adx_synth.anomalies.TextureSource``: generated textures (not of ``category``, so a texture
    category is never pasted onto itself), or the images of the folder ``textures`` (e.g. DTD)."""
    from adx_synth.anomalies import TextureSource  # noqa: PLC0415

    if textures is None:
        return TextureSource.generated(exclude=[category] if category else [])
    return TextureSource.from_folder(textures)  # a ConfigError naming the folder when it has no images


def paper_top_k(image_size: int) -> int:
    """The paper's image score, the mean of the 100 largest pixels of a 256 px map, as the same
    fraction of the area at ``image_size`` (at least 1)."""
    return max(1, round(PAPER_TOP_K * (image_size / PAPER_IMAGE_SIZE) ** 2))


def make_augment(textures: Any, image_size: int, *, p_anomaly: float, real: RealAnomalies | None = None,
                 p_real: float = 0.0) -> Augment:
    """``augment(raw (B, H, W, C) uint8, rng) -> {"image", "mask" (B, 1, H, W) float32}``: synthetic
    anomalies (``adx_synth.anomalies.anomaly_batch``), then each image replaced by a random real
    anomaly with probability ``p_real``. Every draw comes from ``rng``."""
    from adx_synth.anomalies import anomaly_batch, scar_sizes  # noqa: PLC0415

    scar_width, scar_height = scar_sizes(image_size)

    def augment(raw: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = anomaly_batch(raw, rng, textures=textures, p_anomaly=p_anomaly, scar_width=scar_width,
                            scar_height=scar_height)
        images, masks = np.array(out["image"], dtype=np.uint8), np.array(out["mask"], dtype=np.float32)
        if real is not None and len(real):
            swap = rng.random(len(images)) < p_real
            picks = rng.integers(len(real), size=len(images))
            images[swap] = real.images[picks[swap]]
            masks[swap] = real.masks[picks[swap]]
        return {"image": images, "mask": masks}

    return augment


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
    _check_strides(info.strides)
    m = info.strides[-1]
    if config.image_size % m:
        lower = max(m, config.image_size // m * m)
        raise ConfigError(f"image_size {config.image_size} does not suit this encoder: PRNet needs a multiple of {m} "
                          f"(the stride of its last stage); use {lower} or {lower + m}")


@torch.no_grad()
def encode_images(encoder: FeatureExtractor, images: np.ndarray, preprocess: PreprocessConfig, *,
                  batch_size: int = 8, device: str = "cpu") -> list[torch.Tensor]:
    """Encoder features of ``images (N, H, W, C) uint8`` (the runtime's normalisation), per stage
    ``(N, C_l, H_l, W_l)`` on the CPU."""
    encoder = encoder.to(device).eval()
    per_stage: list[list[torch.Tensor]] = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([normalise(a, preprocess) for a in images[s:s + batch_size]])).to(device)
        for l, f in enumerate(encoder(x)):
            if l == len(per_stage):
                per_stage.append([])
            per_stage[l].append(f.cpu())
    encoder.cpu()
    return [torch.cat(fs) for fs in per_stage]


def fit_prototypes(features: Sequence[torch.Tensor], ratio: float, seed: int) -> list[torch.Tensor]:
    """Per stage, k-means of the flattened maps ``(N, C_l H_l W_l)`` into ``(K, C_l, H_l, W_l)``."""
    out = []
    for f in features:
        k = prototype_count(len(f), ratio)
        out.append(kmeans(f.flatten(1), k, seed=seed).view(k, *f.shape[1:]))
    return out


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


def fit(config: PRNetConfig, samples: Sequence[Sample], *, device: str = "cpu", batch_size: int = 8,
        progress: Progress = SILENT, run: TrainingRun | None = None) -> FittedPRNet:
    """Prototypes from the normal images, then the segmentation network on synthetic (and real)
    anomalies; the encoder stays frozen.

    ``batch_size`` is the caller's inference batch (feature extraction for the prototypes); the
    optimiser's batch is ``config.batch_size``.
    """
    t0 = time.perf_counter()
    encoder, preprocess = backbone_and_preprocess(config)
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
    t1 = time.perf_counter()
    features = encode_images(encoder, data.images, preprocess, batch_size=batch_size, device=device)
    prototypes = fit_prototypes(features, config.prototype_ratio, config.seed)
    graph = build_graph(config, encoder, prototypes)
    t2 = time.perf_counter()

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return prnet_loss(model.logits(batch["image"]), batch["mask"])

    history = train_network(graph, loss_fn, data, config, identity=run_identity("prnet", config, samples),
                            device=device, run=run, progress=progress, description="Training PRNet")
    fitted = FittedPRNet(config, preprocess, graph)
    fitted.report.loss_history = history
    fitted.report.phases.update({"setup": t1 - t0, "prototypes": t2 - t1, "training": time.perf_counter() - t2})
    fitted.report.sizes.update({
        "fit_images": len(data), "skipped_images": len(data.skipped), "epochs": config.epochs,
        "prototypes": int(prototypes[0].shape[0]), "real_anomalies": len(real) if real is not None else 0,
        "parameters": sum(p.numel() for p in graph.parameters() if p.requires_grad),
    })
    fitted.report.skipped = list(data.skipped)
    fitted.report.notes.append(
        f"trained on synthetic anomalies ({textures.description}) and {len(real)} real anomalies from "
        f"{config.anomalies} ({', '.join(f'{k} {v}' for k, v in real.per_defect.items())})" if real is not None
        else f"trained on synthetic anomalies only ({textures.description}); no real anomalies (--anomalies DIR adds some)")
    return fitted
