"""Torch pieces shared by methods: the reference map post-processing, exact kNN, channel pooling.

The runtime computes the same quantities with numpy/FAISS (``adx_runtime.postprocess``,
``adx_runtime.knn``); these independent torch versions are what the export parity check holds
the runtime against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from adx_runtime.postprocess import gaussian_kernel, gaussian_radius


def anomaly_map(patch_maps: torch.Tensor, out_size: tuple[int, int], sigma: float) -> torch.Tensor:
    """``(B, h, w) -> (B, H, W)``: bilinear upsampling (half-pixel centres), then a separable Gaussian
    with reflect padding."""
    m = F.interpolate(patch_maps[:, None].float(), size=out_size, mode="bilinear", align_corners=False)
    if sigma > 0:
        H, W = out_size
        rh, rw = gaussian_radius(sigma, H), gaussian_radius(sigma, W)
        kh = torch.from_numpy(gaussian_kernel(sigma, rh)).float().view(1, 1, -1, 1)
        kw = torch.from_numpy(gaussian_kernel(sigma, rw)).float().view(1, 1, 1, -1)
        m = F.conv2d(F.pad(m, (0, 0, rh, rh), mode="reflect"), kh)
        m = F.conv2d(F.pad(m, (rw, rw, 0, 0), mode="reflect"), kw)
    return m[:, 0]


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, exact: bool = True,
            chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean kNN: ``(Q, D), (M, D) -> distances (Q, k), ids (Q, k)`` ascending.

    ``exact=True`` uses ``torch.cdist`` without the matrix-multiply shortcut, so small distances
    carry no cancellation error: the reference the FAISS/numpy search is checked against.
    ``exact=False`` takes the shortcut (about 5x faster; relative error ~1e-6), for calibration.
    """
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist"
    dists, ids = [], []
    for s in range(0, len(queries), chunk):
        d = torch.cdist(queries[s : s + chunk], bank, compute_mode=mode)
        v, i = torch.topk(d, k=min(k, len(bank)), dim=1, largest=False)
        dists.append(v)
        ids.append(i)
    return torch.cat(dists), torch.cat(ids)


def channel_pool_matrix(c_in: int, c_out: int) -> torch.Tensor:
    """``(c_out, c_in)`` matrix equal to ``adaptive_avg_pool1d`` over channels (a matmul exports to
    ONNX for any sizes; adaptive pooling does not)."""
    m = torch.zeros(c_out, c_in)
    for i in range(c_out):
        start = (i * c_in) // c_out
        end = -((-(i + 1) * c_in) // c_out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


@dataclass
class FitReport:
    """Seconds per fit phase and sizes, printed by ``adx train`` and the fit benchmark."""

    phases: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) not decodable

    @property
    def total(self) -> float:
        return float(sum(self.phases.values()))
