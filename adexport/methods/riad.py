"""RIAD (Zavrtanik, Kristan, Skočaj, "Reconstruction by inpainting for visual anomaly detection",
Pattern Recognition 112, 2021).

An image ``I`` is cut into square cells of side ``k``; the cells are split at random into ``n``
disjoint sets, giving masks ``M_1..M_n`` (``M_i`` is 0 on its own cells, 1 elsewhere). A U-Net
``f`` inpaints each masked copy and the removed parts are put back together (eq. 1)::

    I_r = sum_i f(I * M_i) * (1 - M_i)

Training loss (eq. 5): ``L = L_2 + lambda_G * L_MSGMS + lambda_S * L_SSIM`` with
``lambda_G = lambda_S = 1``; ``k`` is drawn per batch from ``K = {2, 4, 8, 16}``, the masks are
redrawn every batch.

Anomaly map (eq. 6): for every ``k`` in ``K`` the image is reconstructed with masks fixed at
export (drawn once from ``mask_seed``; graph buffers, so they are inside the ONNX file), the
multi-scale gradient-magnitude-similarity distance ``1 - MSGMS`` is taken, and the maps of all
``k`` are averaged. The paper then smooths the map with a 21 x 21 mean filter (at 256 px) and takes
its maximum as the image score; both happen in the runtime's post-processing, not in the graph.

Graph (exported): ``image (B, C, H, W) -> anomaly_map (B, H, W)``; C is 1 (grayscale) or 3 (RGB).
All ``|K| * n`` masked copies of a batch go through the U-Net in one call.

Paper settings (GPU): 256 x 256 images, U-Net filters 64-128-256-512, Adam with learning rate
1e-4, 300 epochs, K = {2, 4, 8, 16}, n = 3, lambda_G = lambda_S = 1, 21 x 21 mean filter on the
map, image score its maximum. The paper's batch size is not restated here (re-implementations use
4 to 8); ``--set image_size=256 --set base_width=64 --set epochs=300 --set lr=0.0001 --set
schedule=constant`` is the paper's setting.

CPU defaults (below): 64 px, ``base_width`` 16 (16-32-64-128, 0.5 M parameters), batch 8, Adam
lr 1e-3 with a cosine decay over 100 epochs; the mean filter scales with the image (3 px at 32,
5 at 64). Whole-image anomalies (a wrong digit) are scored better by the map's mean than by its
maximum: ``--set top_k=N`` with ``N = image_size ** 2`` averages the whole smoothed map.

Input contract: the network sees pixel values in ``[0, 1]`` (scale 1/255, mean 0, std 1), because
the GMS constant ``c`` and the SSIM constants are defined for a unit dynamic range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adexport.methods.base import (TOLERANCE_EXACT, ExportProperties, MapMethod, config_from_dict,
                                   graph_tensors, load_graph_tensors)
from adexport.methods.fit_report import PhaseClock
from adexport.training import EpochDataset, TrainingOptions, TrainingRun, fit_network
from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import COLOURS, PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress

CELL_SIZES: tuple[int, ...] = (2, 4, 8, 16)  # K, the paper's cell sides in pixels
NUM_MASKS = 3  # n, disjoint masks per cell size
GMS_C = 0.0026  # c of the GMS similarity: GMSD's 170 on a [0, 255] range, i.e. 170 / 255**2
GMS_SCALES = 4  # the original image and three 2x average-pooled versions
# Keeps d sqrt(g^2) / dg finite where the image is flat (a black background has g = 0 exactly).
# sqrt(1e-12) = 1e-6, negligible next to c.
GRAD_EPS = 1e-12
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
LAMBDA_GMS = 1.0  # lambda_G of eq. 5
LAMBDA_SSIM = 1.0  # lambda_S of eq. 5
PAPER_IMAGE_SIZE = 256
PAPER_SMOOTHING_SIZE = 21  # mean-filter side at 256 px


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class _DoubleConv(nn.Sequential):
    """(3x3 conv, batch norm, ReLU) twice, size-preserving."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Inpainting U-Net: ``(N, C, H, W) -> (N, C, H, W)``.

    Encoder widths ``base_width * (1, 2, 4, 8)`` (the paper: 64-128-256-512) with 2x max pooling
    between them, transposed-convolution upsampling and skip connections in the decoder, a linear
    1x1 output. H and W must be divisible by ``2 ** (depth - 1)`` (8 for the default depth 4).
    """

    def __init__(self, in_channels: int = 3, base_width: int = 64, depth: int = 4):
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"RIAD's U-Net takes 1 (grayscale) or 3 (RGB) channels, got {in_channels}")
        if base_width < 1 or depth < 2:
            raise ConfigError(f"U-Net needs base_width >= 1 and depth >= 2, got {base_width} and {depth}")
        widths = [base_width * 2**i for i in range(depth)]
        self.widths = tuple(widths)
        self.encoders = nn.ModuleList([_DoubleConv(in_channels, widths[0])]
                                      + [_DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
                                  for i in range(depth - 1, 0, -1)])
        self.decoders = nn.ModuleList([_DoubleConv(2 * widths[i - 1], widths[i - 1]) for i in range(depth - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], in_channels, 1)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------------------------
# Disjoint masks and reconstruction
# --------------------------------------------------------------------------------------------


def _check_size(size: int, cell_sizes: Sequence[int]) -> None:
    bad = [k for k in cell_sizes if k < 1 or size % k]
    if bad:
        raise ConfigError(
            f"RIAD cuts the image into square cells: image side {size} px is not divisible by cell size(s) "
            f"{bad} (cell sizes {list(cell_sizes)}). Use an image_size that is a multiple of "
            f"{math.lcm(*[max(1, k) for k in cell_sizes])}, or other cell_sizes."
        )


def disjoint_masks(size: int, k: int, n: int = NUM_MASKS, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` disjoint masks ``(n, 1, size, size)`` float32 for cell side ``k``.

    The ``(size / k) ** 2`` cells are shuffled and dealt out in turn to the ``n`` masks (so each
    removes a third of the cells, give or take one); mask ``i`` is 0 on its cells and 1 elsewhere.
    The removed regions are disjoint and together cover the image: ``sum_i (1 - M_i) == 1``.
    """
    _check_size(size, [k])
    if n < 2:
        raise ConfigError(f"RIAD needs at least 2 disjoint masks, got n={n}")
    cells = size // k
    if cells * cells < n:
        raise ConfigError(f"cell size {k} leaves {cells * cells} cell(s) in a {size} px image, fewer than n={n} masks")
    owner = torch.empty(cells * cells, dtype=torch.long)
    owner[torch.randperm(cells * cells, generator=generator)] = torch.arange(cells * cells) % n
    owner = owner.view(cells, cells).repeat_interleave(k, 0).repeat_interleave(k, 1)  # (size, size)
    removed = owner[None] == torch.arange(n)[:, None, None]  # (n, size, size)
    return (~removed).float().unsqueeze(1)


def inference_masks(size: int, cell_sizes: Sequence[int] = CELL_SIZES, n: int = NUM_MASKS,
                    seed: int = 0) -> torch.Tensor:
    """The fixed masks of the exported graph: ``(len(cell_sizes) * n, 1, size, size)``, grouped by
    cell size (rows ``j * n .. j * n + n - 1`` belong to ``cell_sizes[j]``), all drawn from ``seed``."""
    _check_size(size, cell_sizes)
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([disjoint_masks(size, k, n, generator) for k in cell_sizes])


def reconstruct(net: nn.Module, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for one set of disjoint masks: ``x (B, C, H, W)``, ``masks (n, 1, H, W)`` ->
    ``I_r = sum_i f(x * M_i) * (1 - M_i)``, ``(B, C, H, W)``. One batched network call."""
    B, C, H, W = x.shape
    n = masks.shape[0]
    out = net((x[:, None] * masks[None]).reshape(B * n, C, H, W)).reshape(B, n, C, H, W)
    return (out * (1.0 - masks[None])).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Similarity measures: GMS / MSGMS and SSIM
# --------------------------------------------------------------------------------------------


def _prewitt(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Prewitt kernels ``(2, 1, 3, 3)`` (x then y), divided by 3 as in GMSD."""
    gx = torch.tensor([[-1.0, 0.0, 1.0]] * 3, device=device, dtype=dtype) / 3.0
    return torch.stack([gx, gx.T]).unsqueeze(1)


def gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """``g = sqrt((I * h_x)^2 + (I * h_y)^2)`` of ``(N, 1, H, W)``, Prewitt filters, edges
    replicated (so a flat border has no gradient)."""
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), _prewitt(gray.device, gray.dtype))
    return torch.sqrt((g * g).sum(dim=1, keepdim=True) + GRAD_EPS)


def gms(x: torch.Tensor, y: torch.Tensor, c: float = GMS_C) -> torch.Tensor:
    """Gradient magnitude similarity ``(2 g_x g_y + c) / (g_x^2 + g_y^2 + c)`` of two
    ``(N, C, H, W)`` images, ``(N, 1, H, W)``. Colour images are compared on their channel mean."""
    gx = gradient_magnitude(x.mean(dim=1, keepdim=True))
    gy = gradient_magnitude(y.mean(dim=1, keepdim=True))
    return (2.0 * gx * gy + c) / (gx * gx + gy * gy + c)


def msgms_loss(x: torch.Tensor, y: torch.Tensor, scales: int = GMS_SCALES) -> torch.Tensor:
    """``L_MSGMS``: mean over scales of ``mean(1 - GMS)``, halving the images (2x2 average) between
    scales. Scalar."""
    total = x.new_zeros(())
    for s in range(scales):
        if s:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total + (1.0 - gms(x, y)).mean()
    return total / scales


def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = GMS_SCALES) -> torch.Tensor:
    """Eq. 6's distance map: mean over scales of ``1 - GMS``, each upsampled bilinearly
    (half-pixel centres) to the input size. ``(N, C, H, W)`` twice -> ``(N, H, W)``."""
    size = x.shape[-2:]
    total = 1.0 - gms(x, y)
    for _ in range(1, scales):
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total + F.interpolate(1.0 - gms(x, y), size=size, mode="bilinear", align_corners=False)
    return (total / scales).squeeze(1)


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-(t * t) / (2 * sigma * sigma))
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of ``(N, C, H, W)`` images in ``[0, 1]``: Gaussian window
    (11, sigma 1.5), per channel, over the positions where the window fits (no padding). Scalar."""
    C = x.shape[1]
    if min(x.shape[-2:]) < window:
        raise ConfigError(f"SSIM needs images of at least {window} px, got {tuple(x.shape[-2:])}")
    w = _gaussian_window(window, sigma, x.device, x.dtype)
    wy, wx = w.view(1, 1, -1, 1).repeat(C, 1, 1, 1), w.view(1, 1, 1, -1).repeat(C, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wy, groups=C), wx, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    s = num / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return s.mean()


def riad_loss(x: torch.Tensor, x_rec: torch.Tensor, lambda_gms: float = LAMBDA_GMS,
              lambda_ssim: float = LAMBDA_SSIM) -> dict[str, torch.Tensor]:
    """Eq. 5: ``L = L_2 + lambda_G L_MSGMS + lambda_S (1 - SSIM)``; returns the total as ``loss``
    and each term."""
    l2 = F.mse_loss(x_rec, x)
    l_gms = msgms_loss(x, x_rec)
    l_ssim = 1.0 - ssim(x, x_rec)
    return {"loss": l2 + lambda_gms * l_gms + lambda_ssim * l_ssim, "l2": l2, "msgms": l_gms, "ssim": l_ssim}


def training_loss(net: nn.Module, x: torch.Tensor, generator: torch.Generator,
                  cell_sizes: Sequence[int] = CELL_SIZES, n: int = NUM_MASKS, lambda_gms: float = LAMBDA_GMS,
                  lambda_ssim: float = LAMBDA_SSIM) -> dict[str, torch.Tensor]:
    """One training batch ``x (B, C, H, W)``: draw ``k`` from ``cell_sizes`` and fresh disjoint masks
    (both from ``generator``), reconstruct, and return :func:`riad_loss`."""
    k = cell_sizes[int(torch.randint(len(cell_sizes), (1,), generator=generator))]
    masks = disjoint_masks(x.shape[-1], k, n, generator).to(x.device)
    return riad_loss(x, reconstruct(net, x, masks), lambda_gms, lambda_ssim)


def paper_smoothing_size(image_size: int) -> int:
    """The paper's 21 px mean filter at 256 px, scaled to ``image_size`` and made odd (>= 3)."""
    size = round(PAPER_SMOOTHING_SIZE * image_size / PAPER_IMAGE_SIZE)
    return max(3, size + (size % 2 == 0))


# --------------------------------------------------------------------------------------------
# Exported graph
# --------------------------------------------------------------------------------------------


class RIADGraph(nn.Module):
    """``image (B, C, H, W) -> anomaly_map (B, H, W)`` float32, before smoothing.

    ``masks`` is a buffer ``(|K| * n, 1, H, W)`` (see :func:`inference_masks`): every image is
    masked ``|K| * n`` times, all copies are inpainted in one U-Net call, each cell size's copies
    are reassembled (eq. 1), and the ``1 - MSGMS`` maps (eq. 6) are averaged over cell sizes.
    No I/O, no device choice.
    """

    def __init__(self, net: UNet, masks: torch.Tensor, num_masks: int = NUM_MASKS):
        super().__init__()
        if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[0] % num_masks:
            raise ConfigError(f"masks must be (|K| * n, 1, H, W) with n={num_masks}, got {tuple(masks.shape)}")
        side = masks.shape[-1]
        if masks.shape[-2] != side or side % net.downsampling:
            raise ConfigError(f"RIAD needs square images with a side divisible by {net.downsampling}, "
                              f"got masks of {tuple(masks.shape[-2:])}")
        self.net = net
        self.num_masks = num_masks
        self.register_buffer("masks", masks.float(), persistent=True)

    @property
    def num_cell_sizes(self) -> int:
        return self.masks.shape[0] // self.num_masks

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, C, H, W = image.shape
        nk, n = self.num_cell_sizes, self.num_masks
        masks = self.masks  # (nk * n, 1, H, W)
        masked = (image[:, None] * masks[None]).reshape(-1, C, H, W)  # (B * nk * n, C, H, W)
        out = self.net(masked).reshape(-1, nk, n, C, H, W)
        rec = (out * (1.0 - masks).reshape(1, nk, n, 1, H, W)).sum(dim=2)  # (B, nk, C, H, W)
        target = image[:, None].expand(-1, nk, -1, -1, -1).reshape(-1, C, H, W)
        dist = msgms_map(target, rec.reshape(-1, C, H, W))  # (B * nk, H, W)
        return dist.reshape(-1, nk, H, W).mean(dim=1)


# --------------------------------------------------------------------------------------------
# Config, fitted method, fit
# --------------------------------------------------------------------------------------------


@dataclass
class RIADConfig(TrainingOptions):
    image_size: int = 64  # square input side after resize; a multiple of the largest cell size (paper: 256)
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    colour: str = "RGB"  # RGB | L (grayscale: a 1-channel U-Net, e.g. for digits)
    base_width: int = 16  # U-Net channels of the first stage, doubled per stage (paper: 64, i.e. 64-128-256-512)
    depth: int = 4  # U-Net stages; 2**(depth-1) must divide image_size (paper: 4)
    cell_sizes: tuple[int, ...] = (2, 4, 8, 16)  # K: mask cell sides in pixels (paper: 2, 4, 8, 16)
    num_masks: int = 3  # n: disjoint masks per cell size (paper: 3)
    mask_seed: int = 0  # seed of the fixed inference masks (kept in the graph, recorded in the manifest)
    lambda_gms: float = 1.0  # lambda_G: weight of the MSGMS loss (paper: 1)
    lambda_ssim: float = 1.0  # lambda_S: weight of the SSIM loss (paper: 1)
    smoothing_size: int | None = None  # mean-filter side on the map (odd); None = paper's 21 px at 256 px, scaled
    top_k: int | None = None  # image score = mean of the k largest smoothed-map pixels; None = the maximum (paper)
    epochs: int = 100  # passes over the training images (paper: 300 at lr 1e-4 on a GPU)
    batch_size: int = 8  # images per optimiser step (each inpainted n times)
    lr: float = 1e-3  # Adam learning rate at the start of the schedule (paper: 1e-4)
    schedule: str = "cosine"  # constant | cosine (decays to 0 over the epochs)

    #: Valid ranges (with the training options'), checked by adexport.methods.options.check_options;
    #: depth is capped so that 2**(depth-1) stays a size (a U-Net of 12 stages needs 2048 px images).
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 1", "base_width": ">= 1", "depth": "in [2, 12]", "cell_sizes": ">= 1", "num_masks": ">= 2",
        "mask_seed": "seed", "lambda_gms": ">= 0", "lambda_ssim": ">= 0", "smoothing_size": ">= 1", "top_k": ">= 1"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.colour not in COLOURS:
            raise ConfigError(f"colour {self.colour!r} is not known; valid: {', '.join(COLOURS)}")
        if not self.cell_sizes:
            raise ConfigError("cell_sizes needs at least one cell size (paper: 2,4,8,16)")
        multiple = math.lcm(2 ** (self.depth - 1), *self.cell_sizes)
        if self.image_size < SSIM_WINDOW or self.image_size % multiple:
            fitting = max(multiple, -(-self.image_size // multiple) * multiple)
            raise ConfigError(
                f"image_size {self.image_size} does not fit RIAD: it must be >= {SSIM_WINDOW} and a multiple of "
                f"{multiple} (every cell size {list(self.cell_sizes)} and the U-Net's 2**(depth-1) = "
                f"{2 ** (self.depth - 1)}); use e.g. --set image_size={fitting}"
            )
        crowded = [k for k in self.cell_sizes if (self.image_size // k) ** 2 < self.num_masks]
        if crowded:
            raise ConfigError(f"cell size(s) {crowded} leave fewer than num_masks={self.num_masks} cells in a "
                              f"{self.image_size} px image; use smaller cell_sizes or a larger image_size")
        if self.smoothing_size is not None and self.smoothing_size % 2 == 0:
            raise ConfigError(f"smoothing_size must be odd and >= 1 (1 = no smoothing), got {self.smoothing_size}")

    @property
    def map_smoothing(self) -> int:
        return self.smoothing_size if self.smoothing_size is not None else paper_smoothing_size(self.image_size)


def riad_preprocess(config: RIADConfig, tiling: TilingSpec | None = None) -> PreprocessConfig:
    """Pixels scaled to [0, 1] with mean 0 / std 1: the GMS and SSIM constants assume a unit range."""
    c = COLOURS[config.colour]
    return PreprocessConfig.square(config.image_size, interpolation=config.interpolation, colour=config.colour,
                                   mean=(0.0,) * c, std=(1.0,) * c, tiling=tiling)


class FittedRIAD(MapMethod):
    name = "riad"

    def __init__(self, config: RIADConfig, preprocess: PreprocessConfig, graph: RIADGraph):
        super().__init__(config, preprocess, None)  # no backbone: the U-Net is trained from scratch
        self._graph = graph.eval()

    def postprocess(self) -> PostprocessSpec:
        size, top_k = self.config.map_smoothing, self.config.top_k
        return PostprocessSpec(self.preprocess.input_size, "mean" if size > 1 else "none", None,
                               size if size > 1 else None, "max" if top_k is None else "mean_top_k", top_k)

    def write_scoring_data(self, bundle_dir: Path, **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return {"map_output": "anomaly_map",
                "map": "mean over cell sizes of the MSGMS distance (mean over 4 scales of 1 - GMS, upsampled) "
                       "between the image and its inpainting from the fixed disjoint masks",
                "cell_sizes": [int(k) for k in self.config.cell_sizes], "num_masks": self.config.num_masks,
                "mask_seed": self.config.mask_seed, "gms_c": GMS_C, "gms_scales": GMS_SCALES,
                "gms_channels": "mean of the input channels"}, []

    def export_properties(self, **_: Any) -> ExportProperties:
        return ExportProperties(TOLERANCE_EXACT, fp16=False, fp16_reason=(
            "the map compares squared gradient magnitudes against c = 0.0026; on smooth normal regions those "
            "squares fall below float16's normal range, and float16 accuracy of the map has not been measured"),
            int8=False, int8_reason=(
            "the map measures small differences between the image and its inpainting, while int8 activations "
            "keep 256 levels per tensor; the map's int8 accuracy has not been measured, so export it in float32"))

    def tensors(self) -> dict[str, torch.Tensor]:
        return graph_tensors(self._graph)  # U-Net weights and the fixed masks

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedRIAD":
        config = config_from_dict(RIADConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        net = UNet(preprocess.channels, config.base_width, config.depth)
        graph = RIADGraph(net, tensors["graph.masks"], config.num_masks)
        return cls(config, preprocess, load_graph_tensors(graph, tensors))


def build_graph(config: RIADConfig, channels: int) -> RIADGraph:
    """The U-Net (initialised from ``config.seed``, without touching the global RNG) and the fixed masks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = UNet(channels, config.base_width, config.depth)
    masks = inference_masks(config.image_size, config.cell_sizes, config.num_masks, config.mask_seed)
    return RIADGraph(net, masks, config.num_masks)


def fit(config: RIADConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None, run: TrainingRun | None = None) -> FittedRIAD:
    """Train the inpainting U-Net on normal images (eq. 5, a random cell size and fresh masks per batch).

    ``feature_batch_size`` is unused: this network is scored by its graph alone, with no features
    extracted after training; the optimiser's batch is ``config.batch_size``.
    """
    clock = PhaseClock()
    preprocess = riad_preprocess(config, tiling)
    graph = build_graph(config, preprocess.channels)
    data = EpochDataset(samples, preprocess, progress=progress)
    clock.lap("setup")

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return training_loss(model, batch["image"], generator, config.cell_sizes, config.num_masks,
                             config.lambda_gms, config.lambda_ssim)["loss"]

    trained = fit_network("riad", graph.net, loss_fn, data, config, samples, clock=clock, device=device, run=run,
                          progress=progress, description="Training RIAD")
    return trained.record(FittedRIAD(config, preprocess, graph), clock)
