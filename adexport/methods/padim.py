"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021).

Graph (exported): backbone -> the first three stages (strides 4, 8, 16) -> deeper stages brought to
the first one's resolution (nearest, as the paper's embedding concatenation) -> concatenated ->
a random, seeded subset of ``d`` channels -> embedding ``(B, h*w, d)``.

Fit: per position ``p`` a Gaussian ``N(mu_p, S_p)`` over the training embeddings, with
``S_p = cov(x_p) + eps I`` (eq. 1, eps = 0.01).

Tiled (``--tile``): ``tile_gaussians=shared`` (the default) fits one Gaussian per position *within* a
tile from the tiles of every image at every place, for textures, where any tile looks like any other;
``per-tile`` fits a set per tile position (Gaussian ``(t, p)`` from tile ``t`` of every image), for
aligned parts, where each tile position sees its own part of the object. Per tile position needs a
layout that is the same for every image, so the fit fixes the working size (that of most training
images) in the input contract, and an image of another size is skipped in training and refused at
scoring; its statistics are ``T`` times the shared ones (in float32 rather than float64 in the
fitted model, which stores them in full).

Scoring: the Mahalanobis distance ``M(x_p) = sqrt((x_p - mu_p)^T S_p^-1 (x_p - mu_p))`` per position
(eq. 2), upsampled and smoothed; the image score is the map's maximum. The bundle stores ``mu``
and the Cholesky factor ``L_p`` of ``S_p^-1 = L_p L_p^T`` as its packed lower triangle (float32 or
float16), and the runtime's distance is ``||L_p^T (x_p - mu_p)||``. ``benchmarks/padim_distance.py``
measured a batched matmul with the inverse or with ``L`` equally fast and an einsum 35% slower (2
cores, batch 8); ``L`` wins on storage (a triangle: half the bytes) and its sum of squares is never
negative.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from adexport.backbones import DEFAULT_BACKBONE, BackboneInfo, FeatureExtractor, build_architecture
from adexport.methods.base import (TOLERANCE_APPROXIMATE, TOLERANCE_EXACT, ExportProperties, FittedMethod, Reference,
                                   backbone_and_preprocess, config_from_dict, graph_tensors, load_graph_tensors,
                                   run_graph)
from adexport.methods.density import mahalanobis, regularised_gaussians, write_gaussian
from adexport.methods.fit_report import PhaseClock, record_fit
from adx_runtime.datasets import Sample
from adexport.methods.options import check_options
from adx_runtime.errors import ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec, working_size
from adx_runtime.tiling import tile_layout
from adx_runtime.progress import SILENT, Progress

STORE_DTYPES = ("float32", "float16")
TILE_GAUSSIANS = ("shared", "per-tile")


@dataclass
class PadimConfig:
    backbone: str = DEFAULT_BACKBONE  # timm name; efficientnet_lite0 has offline weights
    weights: str = "auto"  # auto | offline | timm | random | path to a weights file
    layers: tuple[int | str, ...] = (1, 2, 3)  # the first three stages (strides 4, 8, 16)
    image_size: int = 256  # square input side after resize
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    n_features: int = 100  # d: random channel subset (seed 001 used 250 of wide_resnet50_2's 1792)
    epsilon: float = 0.01  # covariance regularisation eps * I (the paper's value)
    blur_sigma: float = 4.0  # Gaussian smoothing of the upsampled map, in pixels
    store_dtype: str = "float32"  # precision of the Cholesky factors in the bundle
    seed: int = 0  # random channel subset; weights when weights=random
    tile_gaussians: str = "shared"  # with --tile: shared (per position within a tile, textures) | per-tile (aligned parts)

    #: Valid ranges, checked by adexport.methods.options.check_options (epsilon > 0 keeps every
    #: covariance invertible).
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 32", "n_features": ">= 1", "epsilon": "> 0", "blur_sigma": ">= 0", "seed": "seed"}

    def __post_init__(self) -> None:
        check_options(self)
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.tile_gaussians not in TILE_GAUSSIANS:
            raise ConfigError(f"tile_gaussians must be one of {', '.join(TILE_GAUSSIANS)}, got {self.tile_gaussians!r}")


def channel_subset(total: int, d: int, seed: int) -> torch.Tensor:
    """The seeded random channel indices, sorted (the paper's random dimensionality reduction)."""
    if d > total:
        raise ConfigError(f"n_features {d} is more than the {total} channels of the chosen stages")
    return torch.from_numpy(np.sort(np.random.default_rng(seed).choice(total, size=d, replace=False)))


class PadimGraph(nn.Module):
    """``image (B, 3, H, W) -> embedding (B, h * w, d)``."""

    def __init__(self, extractor: FeatureExtractor, image_size: tuple[int, int], channels: torch.Tensor):
        super().__init__()
        self.extractor = extractor
        stride = extractor.info.strides[0]
        self.grid = (image_size[0] // stride, image_size[1] // stride)
        self.register_buffer("channels", channels.long(), persistent=True)
        # The subset split by stage (offsets into each stage's channels): each stage keeps its own
        # channels before the deeper ones are upsampled, so only d channels are resized and
        # concatenated, not all of them. The subset is sorted, so the order is the same as selecting
        # from the full concatenation.
        bounds = np.cumsum([0, *extractor.info.channels])
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            picked = channels[(channels >= int(lo)) & (channels < int(hi))].long() - int(lo)
            self.register_buffer(f"stage{i}_channels", picked, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = self.extractor(image)
        kept = []
        for i, f in enumerate(feats):
            idx = getattr(self, f"stage{i}_channels")
            if len(idx) == 0:
                continue
            f = f.index_select(1, idx)
            kept.append(f if i == 0 else F.interpolate(f, size=self.grid, mode="nearest"))
        return torch.cat(kept, dim=1).flatten(2).transpose(1, 2)


def gaussian_fit(embeddings: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, P, d)`` -> mean ``(P, d)`` and the Cholesky factor ``L (P, d, d)`` of the regularised
    inverse covariance, ``S^-1 = L L^T``, computed in float64 (eq. 1: ``cov + eps I``)."""
    if embeddings.shape[0] < 2:
        raise ConfigError("PaDiM needs at least 2 training images to estimate covariances")
    return regularised_gaussians(embeddings, epsilon)


class FittedPadim(FittedMethod):
    name = "padim"
    scoring_kind = "gaussian"
    output_names = ("embedding",)

    def __init__(self, config: PadimConfig, preprocess: PreprocessConfig, graph: PadimGraph,
                 mean: torch.Tensor, chol: torch.Tensor):
        super().__init__(config, preprocess, graph.extractor.info)
        self._graph = graph.eval()
        self.mean = mean  # (T * P, d): T = 1, or a set per tile position (tile-major)
        self.chol = chol  # (T * P, d, d) lower-triangular, S^-1 = L L^T (float64; float32 when T > 1)
        P = graph.grid[0] * graph.grid[1]
        #: Gaussian sets, one per tile position (1: shared by every tile, or untiled)
        self.tile_sets = mean.shape[0] // P if mean.shape[0] % P == 0 and mean.shape[0] > P else 1

    def graph(self) -> nn.Module:
        return self._graph

    @torch.no_grad()
    def reference(self, x: torch.Tensor, *, exact: bool = True, tiles: torch.Tensor | None = None) -> Reference:
        emb = self._graph(x)  # (B, P, d)
        if self.tile_sets > 1:
            dist = self._per_tile(emb, tiles, exact)
        else:
            dist = mahalanobis(emb, self.mean, self.chol, exact=exact)  # (B, P)
        raw = dist.view(len(x), *self._graph.grid)
        maps = self.reference_maps(raw)
        return Reference({"embedding": emb}, self.reference_image_scores(maps), maps, raw)

    def _per_tile(self, emb: torch.Tensor, tiles: torch.Tensor | None, exact: bool) -> torch.Tensor:
        if tiles is None or tiles.shape != (len(emb),):
            raise ConfigError(f"this PaDiM keeps its Gaussians per tile position ({self.tile_sets} tiles): score whole "
                              "images, or give each row's tile position")
        P = emb.shape[1]
        dist = torch.empty(emb.shape[:2])
        for t in torch.unique(tiles).tolist():
            if not 0 <= t < self.tile_sets:
                raise ConfigError(f"tile position {t} is outside 0..{self.tile_sets - 1}")
            rows = (tiles == t).nonzero().flatten()
            lo = t * P
            dist[rows] = mahalanobis(emb[rows], self.mean[lo:lo + P], self.chol[lo:lo + P], exact=exact)
        return dist

    def postprocess(self) -> PostprocessSpec:
        return PostprocessSpec.gaussian(self._graph.grid, self.config.blur_sigma, image_score="max")

    def export_properties(self, **_: Any) -> ExportProperties:
        return ExportProperties(TOLERANCE_EXACT if self.config.store_dtype == "float32" else TOLERANCE_APPROXIMATE)

    def write_scoring_data(self, bundle_dir: Path, **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        per_tile = {"tiles": self.tile_sets} if self.tile_sets > 1 else {}
        gaussian, entry = write_gaussian(bundle_dir, self.mean, self.chol, self.config.store_dtype,
                                         epsilon=self.config.epsilon, **per_tile)
        return {"embedding_output": "embedding", "gaussian": gaussian}, [entry]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**graph_tensors(self._graph), "mean": self.mean, "chol": self.chol}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedPadim":
        config = config_from_dict(PadimConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        extractor = build_architecture(BackboneInfo.from_dict(meta["backbone"]))
        graph = PadimGraph(extractor, preprocess.input_size, tensors["graph.channels"])
        fitted = cls(config, preprocess, load_graph_tensors(graph, tensors), tensors["mean"], tensors["chol"])
        if fitted.tile_sets > 1:
            fixed = preprocess.tiling.fixed_size if preprocess.tiling is not None else None
            count = tile_layout(fixed, preprocess).count if fixed is not None else None
            if count != fitted.tile_sets:
                raise ConfigError(f"the saved Gaussians are kept for {fitted.tile_sets} tile positions but the input "
                                  f"contract gives {count or 'no fixed number of'} tiles")
        return fitted


def common_working_size(samples: Sequence[Sample], preprocess: PreprocessConfig) -> tuple[int, int]:
    """``(H, W)`` most training images have at the tiled contract's working size (read from the
    files' headers; the first such size on a tie), so one odd image cannot fix the layout."""
    counts: dict[tuple[int, int], int] = {}
    for s in samples:
        try:
            with Image.open(s.path) as im:
                w, h = working_size(im.size, preprocess)
        except (OSError, ValueError, ConfigError):
            continue  # unreadable or too small: the fit skips and reports it
        counts[(h, w)] = counts.get((h, w), 0) + 1
    if counts:
        return max(counts, key=counts.__getitem__)
    raise ConfigError("none of the training images could be decoded")


@torch.no_grad()
def fit(config: PadimConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None) -> FittedPadim:
    """Fit per-position Gaussians on normal images."""
    clock = PhaseClock()
    per_tile = config.tile_gaussians == "per-tile"
    if per_tile and tiling is None:
        raise ConfigError("tile_gaussians=per-tile keeps a set of Gaussians per tile position: it needs --tile")
    extractor, preprocess = backbone_and_preprocess(config, tiling)
    if per_tile:
        assert preprocess.tiling is not None
        fixed = common_working_size(samples, preprocess)
        preprocess = replace(preprocess, tiling=replace(preprocess.tiling, fixed_size=fixed))
        progress.note(f"Gaussians per tile position: every image must be {fixed[1]} x {fixed[0]} at the working size "
                      "(that of most training images); others are skipped, and refused when scored")
    channels = channel_subset(sum(extractor.info.channels), config.n_features, config.seed)
    graph = PadimGraph(extractor, preprocess.input_size, channels).eval()
    clock.lap("backbone_setup")
    outputs, skipped = run_graph(graph, samples, preprocess, batch_size=feature_batch_size, device=device, progress=progress)
    embeddings = torch.cat(outputs)
    clock.lap("feature_extraction")
    sets = tile_layout(preprocess.tiling.fixed_size, preprocess).count if per_tile else 1  # type: ignore[union-attr,arg-type]
    if per_tile:
        n = len(embeddings) // sets  # every fitted image gave the same tiles, in layout order
        grouped = embeddings.view(n, sets, *embeddings.shape[1:])
        means, chols = [], []
        with progress.task("Fitting Gaussians per tile position", sets) as advance:
            for t in range(sets):
                m, c = gaussian_fit(grouped[:, t], config.epsilon)
                means.append(m)
                chols.append(c.float())  # T times the shared statistics: float32 halves what is held
                advance(1)
        mean, chol = torch.cat(means), torch.cat(chols)
    else:
        with progress.task("Fitting per-position Gaussians", None):
            mean, chol = gaussian_fit(embeddings, config.epsilon)
    clock.lap("gaussian_fit")
    P, d = mean.shape
    sizes = {"positions": P // sets, "feature_dim": d,
             "store_bytes": P * d * 4 + P * d * (d + 1) // 2 * np.dtype(config.store_dtype).itemsize}
    if per_tile:
        sizes["tile_sets"] = sets
    return record_fit(FittedPadim(config, preprocess, graph, mean, chol), clock,
                      fit_images=len(embeddings) // sets if per_tile else len(embeddings), skipped=skipped.files,
                      sizes=sizes)
