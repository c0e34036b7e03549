"""Anomaly-map post-processing: bilinear upsampling to the input size, then Gaussian smoothing.

Both steps are linear and separable, so the runtime folds them into two small matrices and applies
them as ``A_h @ S @ A_w.T``: for a 32x32 patch grid and a 256x256 map that is about 2 MFLOP per
image instead of a 33-tap convolution over 65k pixels.

The semantics match PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)`` followed
by a Gaussian convolution with ``reflect`` padding; training computes it that way independently,
and the export parity check compares the two.
"""

from __future__ import annotations

import numpy as np


def gaussian_radius(sigma: float, size: int) -> int:
    """Kernel radius: 4 sigma (as scipy truncates), limited so reflect padding fits the map."""
    return max(0, min(int(4.0 * sigma + 0.5), size - 1))


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian ``(2 * radius + 1,)``, float64."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of 1-D bilinear interpolation, half-pixel centres (align_corners=False)."""
    m = np.zeros((n_out, n_in), np.float64)
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates to the first pixel
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` matrix of 1-D Gaussian smoothing with reflect padding (edge not repeated)."""
    if sigma <= 0:
        return np.eye(n)
    r = gaussian_radius(sigma, n)
    k = gaussian_kernel(sigma, r)
    m = np.zeros((n, n), np.float64)
    for offset, weight in zip(range(-r, r + 1), k):
        j = np.arange(n) + offset
        j = np.where(j < 0, -j, j)  # reflect: -1 -> 1
        j = np.where(j > n - 1, 2 * (n - 1) - j, j)  # n -> n - 2
        np.add.at(m, (np.arange(n), j), weight)
    return m


class MapPostprocessor:
    """``(B, h, w)`` patch-level map -> ``(B, H, W)`` upsampled and smoothed anomaly map."""

    def __init__(self, grid: tuple[int, int], out: tuple[int, int], sigma: float):
        (h, w), (H, W) = grid, out
        self.grid, self.out, self.sigma = (h, w), (H, W), float(sigma)
        self.rows = (blur_matrix(H, sigma) @ bilinear_matrix(H, h)).astype(np.float32)  # (H, h)
        self.cols_t = (blur_matrix(W, sigma) @ bilinear_matrix(W, w)).T.astype(np.float32).copy()  # (w, W)

    def __call__(self, patch_maps: np.ndarray) -> np.ndarray:
        if patch_maps.shape[1:] != self.grid:
            raise ValueError(f"expected patch maps (B, {self.grid[0]}, {self.grid[1]}), got {patch_maps.shape}")
        return np.matmul(np.matmul(self.rows, patch_maps.astype(np.float32, copy=False)), self.cols_t)

