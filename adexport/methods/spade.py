"""SPADE (Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020).

Graph (exported): backbone -> the last selected stage, globally average-pooled: the image feature
``(B, C)``; the other selected stages brought to one grid (average-pooled down or bilinearly up to
stride ``map_stride``) and concatenated: the feature map ``(B, h*w, D)``.

Fit: the gallery is every training image's feature and feature map. No training.

Scoring: image level, the mean distance to the ``k`` nearest training image features (a FAISS
index); pixel level, for every position the distance to the nearest feature at any position of
those ``k`` images (the paper's deep pyramid correspondence), then upsampled and smoothed. The
pixel search is most of the cost (``k`` x ``h*w`` gallery features per position); ``k_pixel``
restricts it to the nearest ``k_pixel`` of the ``k`` images.

``pixel_coreset = r`` replaces the per-image pixel search by one search in a PatchCore-style greedy
coreset (:func:`adexport.coreset.select_coreset`: the exact greedy, or above
``pixel_coreset_presample`` vectors, as a tiled gallery has, the greedy among a seeded random
pre-sample of that many) of all the training feature maps' vectors, a fraction ``r`` of them (of
the pre-sample), stored as a FAISS index: each position's score is its distance to the
nearest coreset vector of any training image, at any position. The comparison per position falls
from ``k_pixel x h*w`` features to ``r x N x h*w`` and the bundle keeps the coreset instead of every
feature map; the image score (``k`` nearest image features) is unchanged. What it costs in pixel
AUROC is measured in ``benchmarks/edge_speed.py``.
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
from adexport.banks import write_faiss_bank
from adexport.coreset import select_coreset
from adexport.methods.base import (TOLERANCE_APPROXIMATE, TOLERANCE_APPROXIMATE_INDEX, TOLERANCE_EXACT, ExportProperties, FittedMethod, Reference,
                                   backbone_and_preprocess, config_from_dict, graph_tensors, load_graph_tensors,
                                   run_graph)
from adexport.methods.fit_report import PhaseClock, record_fit
from adx_runtime.bundle import file_entry
from adx_runtime.datasets import Sample
from adexport.methods.options import check_options
from adx_runtime.errors import ConfigError
from adx_runtime.knn import is_exact_index_type
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress

STORE_DTYPES = ("float32", "float16")


@dataclass
class SpadeConfig:
    backbone: str = DEFAULT_BACKBONE  # timm name; efficientnet_lite0 has offline weights
    weights: str = "auto"  # auto | offline | timm | random | path to a weights file
    layers: tuple[int | str, ...] = (1, 2, 3, 4)  # maps from all but the last; the last gives the image feature
    image_size: int = 256  # square input side after resize
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    map_stride: int = 8  # resolution of the pixel-level feature map (32 x 32 at 256 px)
    k: int = 50  # nearest training images (seed 001: k = 50), capped at the gallery size
    k_pixel: int | None = None  # of those, the nearest whose feature maps the pixel search compares with; None: all k
    pixel_coreset: float | None = None  # pixel search in a greedy coreset of this fraction of all training map vectors instead; None: per image
    pixel_coreset_presample: int = 200_000  # more map vectors than this: the coreset is chosen from a random sample of this many; 0 = all
    blur_sigma: float = 4.0  # Gaussian smoothing of the upsampled map, in pixels
    store_dtype: str = "float32"  # precision of the stored training feature maps
    seed: int = 0  # weights when weights=random

    #: Valid ranges, checked by adexport.methods.options.check_options.
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 32", "map_stride": ">= 1", "k": ">= 1", "k_pixel": ">= 1", "pixel_coreset": "fraction",
        "pixel_coreset_presample": ">= 0", "blur_sigma": ">= 0", "seed": "seed"}

    def __post_init__(self) -> None:
        check_options(self)
        if len(self.layers) < 2:
            raise ConfigError("SPADE needs at least two stages: feature-map stages, then the image-feature stage")
        if self.pixel_coreset is not None and self.k_pixel is not None:
            raise ConfigError("pixel_coreset and k_pixel are two different pixel searches; set one of them")
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.image_size % self.map_stride:
            raise ConfigError(f"image_size ({self.image_size}) must be divisible by map_stride ({self.map_stride})")


class SpadeGraph(nn.Module):
    """``image (B, 3, H, W) -> (image_feature (B, C), feature_map (B, h * w, D))``."""

    def __init__(self, extractor: FeatureExtractor, image_size: tuple[int, int], map_stride: int):
        super().__init__()
        self.extractor = extractor
        self.grid = (image_size[0] // map_stride, image_size[1] // map_stride)
        self.pool = [map_stride // s if s < map_stride else 1 for s in extractor.info.strides[:-1]]
        if any(s < map_stride and map_stride % s for s in extractor.info.strides[:-1]):
            raise ConfigError(f"map_stride {map_stride} must be a multiple of every finer stage's stride "
                              f"{extractor.info.strides[:-1]}")

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *maps, last = self.extractor(image)
        image_feature = last.mean(dim=(2, 3))
        resized = []
        for f, k in zip(maps, self.pool):
            if k > 1:
                f = F.avg_pool2d(f, kernel_size=k)
            elif tuple(f.shape[-2:]) != self.grid:
                f = F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False)
            resized.append(f)
        return image_feature, torch.cat(resized, dim=1).flatten(2).transpose(1, 2)


class FittedSpade(FittedMethod):
    name = "spade"
    scoring_kind = "gallery"
    output_names = ("image_feature", "feature_map")

    def __init__(self, config: SpadeConfig, preprocess: PreprocessConfig, graph: SpadeGraph,
                 image_features: torch.Tensor, feature_maps: torch.Tensor, pixel_bank: torch.Tensor | None = None):
        super().__init__(config, preprocess, graph.extractor.info)
        self._graph = graph.eval()
        self.image_features = image_features  # (N, C)
        self.feature_maps = feature_maps  # (N, h*w, D)
        self.pixel_bank = pixel_bank  # (M, D): the pixel_coreset of the feature maps' vectors, or None

    @property
    def k(self) -> int:
        return min(self.config.k, len(self.image_features))

    @property
    def k_pixel(self) -> int:
        """Gallery images the pixel search compares with: the ``k_pixel`` nearest of the ``k``."""
        return min(self.config.k_pixel or self.k, self.k)

    def graph(self) -> nn.Module:
        return self._graph

    @torch.no_grad()
    def reference(self, x: torch.Tensor, *, exact: bool = True, tiles: torch.Tensor | None = None) -> Reference:
        image_feature, fmap = self._graph(x)
        dtype = torch.float64 if exact else torch.float32
        d_img = torch.cdist(image_feature.to(dtype), self.image_features.to(dtype))  # (B, N)
        top, ids = torch.topk(d_img, self.k, dim=1, largest=False)
        image_scores = top.mean(dim=1).float()
        pixel = []
        for b in range(len(x)):
            if self.pixel_bank is not None:
                gallery = self.pixel_bank.to(dtype)
            else:
                gallery = self.feature_maps[ids[b, : self.k_pixel]].reshape(-1, fmap.shape[-1]).to(dtype)  # (k_pixel * h*w, D)
            pixel.append(torch.cdist(fmap[b].to(dtype), gallery).min(dim=1).values.float())
        patch = torch.stack(pixel).view(len(x), *self._graph.grid)
        maps = self.reference_maps(patch)
        return Reference({"image_feature": image_feature, "feature_map": fmap}, image_scores, maps, patch)

    def postprocess(self) -> PostprocessSpec:
        return PostprocessSpec.gaussian(self._graph.grid, self.config.blur_sigma, image_score="scorer")

    def export_properties(self, *, index_type: str = "Flat", **_: Any) -> ExportProperties:
        exact = self.config.store_dtype == "float32"
        tolerance = TOLERANCE_EXACT if exact else TOLERANCE_APPROXIMATE
        if not is_exact_index_type(index_type):
            tolerance = {k: max(v, TOLERANCE_APPROXIMATE_INDEX[k]) for k, v in tolerance.items()}
        return ExportProperties(tolerance, options=frozenset({"index_type", "search_params", "accept_approximate"}))

    def write_scoring_data(self, bundle_dir: Path, *, index_type: str = "Flat",
                           search_params: dict[str, float] | None = None, accept_approximate: bool = False,
                           **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        feats = np.ascontiguousarray(self.image_features.numpy(), dtype=np.float32)
        N, C = feats.shape
        queries = None
        if not is_exact_index_type(index_type):  # held-out normal image features to measure the index on
            held = self.heldout_outputs()
            queries = held[0].numpy() if held else None
        images_bank, image_files = write_faiss_bank(bundle_dir, "gallery_images", feats, index_type=index_type,
                                                    search_params=search_params, queries=queries,
                                                    accept_approximate=accept_approximate)
        dtype = np.dtype(self.config.store_dtype)
        gallery: dict[str, Any] = {"images_file": "gallery_images.faiss", "images_bank": {"format": "faiss", **images_bank},
                                   "images": N, "image_dim": C, "map_dim": int(self.feature_maps.shape[-1])}
        scoring = {
            "image_output": "image_feature",
            "map_output": "feature_map",
            "k": self.k,
            "image_score": "mean distance to the k nearest training images",
        }
        if self.pixel_bank is not None:  # one exact index over the coreset of every training map vector
            pixels = np.ascontiguousarray(self.pixel_bank.numpy().astype(dtype).astype(np.float32))
            pixel_bank, pixel_files = write_faiss_bank(bundle_dir, "gallery_pixels", pixels)
            files = [*image_files, *pixel_files]
            gallery.update({"pixel_bank": {"format": "faiss", **pixel_bank}, "pixel_coreset": self.config.pixel_coreset,
                            "dtype": dtype.name})
            scoring["pixel_score"] = ("distance to the nearest vector of a greedy coreset of all training feature-map "
                                      "vectors (pixel_coreset)")
        else:
            maps = self.feature_maps.numpy().astype(dtype)
            np.savez(bundle_dir / "gallery_maps.npz", feature_maps=maps)
            files = [
                *image_files,
                file_entry(bundle_dir, "gallery_maps.npz", "npz",
                           arrays={"feature_maps": {"shape": list(maps.shape), "dtype": dtype.name}}),
            ]
            gallery.update({"maps_file": "gallery_maps.npz", "dtype": dtype.name,
                            "bytes_per_image": int(maps[0].nbytes + C * 4)})
            scoring["k_pixel"] = self.k_pixel
            scoring["pixel_score"] = "distance to the nearest feature at any position of the k_pixel nearest training images"
        scoring["gallery"] = gallery
        return scoring, files

    def tensors(self) -> dict[str, torch.Tensor]:
        extra = {} if self.pixel_bank is None else {"pixel_bank": self.pixel_bank}
        return {**graph_tensors(self._graph), "image_features": self.image_features, "feature_maps": self.feature_maps,
                **extra}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedSpade":
        config = config_from_dict(SpadeConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        extractor = build_architecture(BackboneInfo.from_dict(meta["backbone"]))
        graph = SpadeGraph(extractor, preprocess.input_size, config.map_stride)
        return cls(config, preprocess, load_graph_tensors(graph, tensors), tensors["image_features"],
                   tensors["feature_maps"], tensors.get("pixel_bank"))


@torch.no_grad()
def fit(config: SpadeConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None) -> FittedSpade:
    """Collect the gallery: image features and feature maps of the normal images."""
    clock = PhaseClock()
    extractor, preprocess = backbone_and_preprocess(config, tiling)
    graph = SpadeGraph(extractor, preprocess.input_size, config.map_stride).eval()
    clock.lap("backbone_setup")
    outputs, skipped = run_graph(graph, samples, preprocess, batch_size=feature_batch_size, device=device, progress=progress)
    fitted = FittedSpade(config, preprocess, graph, torch.cat([f for f, _ in outputs]),
                         torch.cat([m for _, m in outputs]))
    clock.lap("feature_extraction")
    N, HW, D = fitted.feature_maps.shape
    sizes: dict[str, int] = {}
    if config.pixel_coreset is not None:
        vectors = fitted.feature_maps.reshape(N * HW, D).numpy()
        # PatchCore's selection: the exact greedy up to the pre-sample cap, as before; above it (a
        # tiled gallery holds a million map vectors) among a seeded random pre-sample, so the
        # selection stays in seconds instead of growing with the square of the vectors
        keep = select_coreset(vectors, config.pixel_coreset, presample=config.pixel_coreset_presample,
                              seed=config.seed, progress=progress)
        fitted.pixel_bank = torch.from_numpy(np.ascontiguousarray(vectors[keep]))
        clock.lap("pixel_coreset_selection")
        sizes["pixel_bank"] = len(keep)
    sizes.update({"k": fitted.k, "map_positions": HW, "map_dim": D, "image_dim": fitted.image_features.shape[1],
                  "gallery_bytes": N * (HW * D * np.dtype(config.store_dtype).itemsize
                                        + fitted.image_features.shape[1] * 4)})
    return record_fit(fitted, clock, fit_images=N, skipped=skipped.files, sizes=sizes)
