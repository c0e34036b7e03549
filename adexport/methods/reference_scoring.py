"""The torch reference of the runtime's scoring: map post-processing, the image-score rule, exact kNN.

The runtime computes the same quantities with numpy/FAISS (``adx_runtime.postprocess``,
``adx_runtime.knn``); these independent torch versions are what a method's ``reference()``
scores with and what the export parity check holds the runtime against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adx_runtime.postprocess import PostprocessSpec


def _gaussian_taps(sigma: float, size: int) -> torch.Tensor:
    """The normalised 1-D Gaussian of the smoothing contract ``(2r + 1,)``, float64: truncated at
    4 sigma as scipy does, the radius ``r`` at most ``size - 1`` so reflect padding fits the map.

    Written here from that definition, not taken from ``adx_runtime.postprocess``: the parity
    check holds the runtime's kernel against this one, and a shared kernel would compare it with
    itself."""
    radius = max(0, min(int(4.0 * sigma + 0.5), size - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _separable(m: torch.Tensor, kh: torch.Tensor | np.ndarray, kw: torch.Tensor | np.ndarray) -> torch.Tensor:
    kh, kw = torch.as_tensor(kh).float(), torch.as_tensor(kw).float()
    rh, rw = len(kh) // 2, len(kw) // 2
    m = F.conv2d(F.pad(m, (0, 0, rh, rh), mode="reflect"), kh.view(1, 1, -1, 1))
    return F.conv2d(F.pad(m, (rw, rw, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1))


def reference_postprocess(patch_maps: torch.Tensor, spec: PostprocessSpec, out_size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w) -> (B, H, W)``: bilinear upsampling (half-pixel centres), then the spec's
    smoothing as a convolution with reflect padding (the runtime folds both into matrices)."""
    m = patch_maps[:, None].float()
    if tuple(m.shape[-2:]) != tuple(out_size):
        m = F.interpolate(m, size=out_size, mode="bilinear", align_corners=False)
    H, W = out_size
    if spec.smoothing == "gaussian":
        s = float(spec.sigma)  # type: ignore[arg-type]
        m = _separable(m, _gaussian_taps(s, H), _gaussian_taps(s, W))
    elif spec.smoothing == "mean":
        rh, rw = min(int(spec.size) // 2, H - 1), min(int(spec.size) // 2, W - 1)  # type: ignore[arg-type]
        m = _separable(m, np.full(2 * rh + 1, 1.0 / (2 * rh + 1)), np.full(2 * rw + 1, 1.0 / (2 * rw + 1)))
    return m[:, 0]


def reference_image_scores(maps: torch.Tensor, spec: PostprocessSpec) -> torch.Tensor:
    """The image-score rule over final maps ``(B, H, W)`` -> ``(B,)``."""
    flat = maps.flatten(1)
    if spec.image_score == "max":
        return flat.max(dim=1).values
    if spec.image_score == "mean_top_k":
        return torch.topk(flat, min(int(spec.top_k), flat.shape[1]), dim=1).values.double().mean(dim=1).float()  # type: ignore[arg-type]
    raise ValueError("image score rule 'scorer': the method computes its own image score")


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
