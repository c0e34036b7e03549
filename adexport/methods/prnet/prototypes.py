"""PRNet's normal prototypes: encoder features of the training images, seeded k-means per stage,
and the nearest prototype and residual the graph computes."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from adexport.backbones import FeatureExtractor
from adx_runtime.errors import ConfigError
from adx_runtime.preprocess import PreprocessConfig, normalise_pixels

KMEANS_ITERATIONS = 100  # Lloyd iterations at most (stops earlier when the assignment is stable)


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


@torch.no_grad()
def encode_images(encoder: FeatureExtractor, images: np.ndarray, preprocess: PreprocessConfig, *,
                  batch_size: int = 8, device: str = "cpu") -> list[torch.Tensor]:
    """Encoder features of ``images (N, H, W, C) uint8`` (the runtime's normalisation), per stage
    ``(N, C_l, H_l, W_l)`` on the CPU."""
    encoder = encoder.to(device).eval()
    per_stage: list[list[torch.Tensor]] = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([normalise_pixels(a, preprocess) for a in images[s:s + batch_size]])).to(device)
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
