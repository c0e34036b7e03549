"""Gaussian density of embeddings, written once for every method of scoring kind ``gaussian``.

PaDiM fits one Gaussian per map position, CutPaste one Gaussian over image (or patch) embeddings;
both store the mean ``mu`` and the Cholesky factor ``L`` of the inverse covariance
(``S^-1 = L L^T``) as a packed lower triangle in ``gaussian.npz``, and the runtime's one scorer
(``adx_runtime.scorers.gaussian``) computes ``M(x) = ||L^T (x - mu)||`` from it. A bundle whose
statistics hold one Gaussian (``P = 1``) while the graph gives ``P`` positions applies that Gaussian
at every position (CutPaste's patch-level map).

Estimators (all in float64):

- :func:`regularised_gaussians`: sample covariance plus ``eps I`` per position (PaDiM, eq. 1);
- :func:`ledoit_wolf_gaussian`: scikit-learn's ``LedoitWolf`` shrinkage (CutPaste, Li et al. 2021,
  sec. 3.3: the density estimator needs a well-conditioned covariance from few samples in high
  dimension, and Ledoit-Wolf picks the shrinkage from the data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from adx_runtime.bundle import file_entry
from adx_runtime.errors import ConfigError, DependencyError

GAUSSIAN_FILE = "gaussian.npz"
GAUSSIAN_FORM = "cholesky-of-inverse, packed lower triangle (numpy tril_indices order)"


def cholesky_of_inverse(cov: torch.Tensor) -> torch.Tensor:
    """``(P, d, d)`` covariances (float64) -> ``L (P, d, d)`` lower-triangular with ``S^-1 = L L^T``."""
    inv = torch.linalg.inv(cov.double())
    return torch.linalg.cholesky((inv + inv.transpose(-1, -2)) / 2)  # symmetrise rounding before factoring


def regularised_gaussians(embeddings: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, P, d)`` -> mean ``(P, d)`` float32 and ``L (P, d, d)`` float64 of ``cov + eps I`` per position."""
    x = embeddings.double()
    n = x.shape[0]
    if n < 2:
        raise ConfigError("a Gaussian per position needs at least 2 training images")
    mean = x.mean(0)
    xc = x - mean
    cov = torch.einsum("npd,npe->pde", xc, xc) / (n - 1)
    cov += epsilon * torch.eye(x.shape[-1], dtype=torch.float64)
    return mean.float(), cholesky_of_inverse(cov)


def ledoit_wolf_gaussian(embeddings: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(N, d)`` samples -> mean ``(1, d)`` float32, ``L (1, d, d)`` float64 and the shrinkage used."""
    try:
        from sklearn.covariance import LedoitWolf  # noqa: PLC0415
    except ImportError:
        raise DependencyError("the Ledoit-Wolf covariance needs scikit-learn: pip install 'adexport[train]'") from None
    x = np.asarray(embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings,
                   dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"a Gaussian over embeddings needs (N >= 2, d) samples, got shape {x.shape}")
    lw = LedoitWolf(assume_centered=False).fit(x)
    cov = torch.from_numpy(np.ascontiguousarray(lw.covariance_))[None]
    mean = torch.from_numpy(lw.location_.astype(np.float32))[None]
    return mean, cholesky_of_inverse(cov), float(lw.shrinkage_)


def mahalanobis(embedding: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor, *, exact: bool = True) -> torch.Tensor:
    """Torch reference of the runtime's distance: ``(B, P, d)``, mean ``(P | 1, d)``, ``L (P | 1, d, d)``
    -> ``(B, P)`` float32. ``exact`` computes in float64."""
    dtype = torch.float64 if exact else torch.float32
    diff = embedding.to(dtype) - mean.to(dtype)
    chol = chol.to(dtype)
    if chol.shape[0] == 1:  # one Gaussian for every position
        y = diff @ chol[0]
    else:
        y = torch.einsum("bpd,pde->bpe", diff, chol)
    return y.pow(2).sum(-1).sqrt().float()


def write_gaussian(bundle_dir: Path, mean: torch.Tensor, chol: torch.Tensor, store_dtype: str = "float32",
                   **details: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``gaussian.npz`` (mean float32, packed ``L`` in ``store_dtype``); returns the scoring
    section's ``gaussian`` entry (with ``details`` such as the estimator) and the ``files`` entry.
    The kind's writer: what it returns is declared by :class:`adx_runtime.kinds.GaussianSection`."""
    dtype = np.dtype(store_dtype)
    P, d = mean.shape
    rows, cols = np.tril_indices(d)
    packed = chol.numpy()[:, rows, cols].astype(dtype)  # (P, d (d + 1) / 2)
    np.savez(bundle_dir / GAUSSIAN_FILE, mean=mean.numpy().astype(np.float32), chol_packed=packed)
    entry = file_entry(bundle_dir, GAUSSIAN_FILE, "npz", arrays={
        "mean": {"shape": [P, d], "dtype": "float32"},
        "chol_packed": {"shape": list(packed.shape), "dtype": dtype.name},
    })
    section = {"file": GAUSSIAN_FILE, "form": GAUSSIAN_FORM, "dtype": dtype.name, "positions": P, "dim": d, **details}
    return section, entry
