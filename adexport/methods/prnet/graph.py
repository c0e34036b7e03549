"""PRNet's exported graph: the frozen encoder, prototype residuals, multi-scale fusion, multi-size
attention and the decoder, ``image (B, 3, S, S) -> anomaly_map (B, S, S)``."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adexport.backbones import FeatureExtractor
from adexport.methods.prnet.prototypes import prototype_residual
from adx_runtime.errors import ConfigError


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


def check_strides(strides: Sequence[int]) -> None:
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
        check_strides(info.strides)
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
