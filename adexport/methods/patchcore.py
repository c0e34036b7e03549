"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Graph (exported): backbone -> two mid-level stages -> 3x3 local neighbourhood averaging (the
"locally aware" aggregation of eq. 2) -> deeper stage upsampled to the first one's resolution ->
concatenated -> pooled to ``target_dim`` channels -> patch features ``(B, h*w, D)``.

Fit: features of all training patches -> greedy k-center coreset (Alg. 1) on a random projection
-> memory bank ``M``. No training loop: fitting is a function.

Scoring (runtime, and :meth:`FittedPatchCore.reference` in torch): nearest-neighbour distance per
patch, the image score reweighted with eq. 7, the patch map upsampled and smoothed (sigma = 4).
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
from adexport.banks import write_faiss_bank, write_npz_bank
from adexport.coreset import select_coreset
from adexport.methods.base import (TOLERANCE_APPROXIMATE_INDEX, TOLERANCE_EXACT, ExportProperties, FittedMethod, Reference,
                                   backbone_and_preprocess, config_from_dict, graph_tensors, load_graph_tensors,
                                   run_graph)
from adexport.methods.feature_pooling import channel_pool_matrix
from adexport.methods.reference_scoring import nearest
from adexport.methods.fit_report import PhaseClock, record_fit
from adx_runtime.datasets import Sample
from adexport.methods.options import check_options
from adx_runtime.errors import ConfigError
from adx_runtime.knn import is_exact_index_type
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress


@dataclass
class PatchCoreConfig:
    backbone: str = DEFAULT_BACKBONE  # timm name; efficientnet_lite0 has offline weights
    weights: str = "auto"  # auto | offline | timm | random | path to a weights file
    layers: tuple[int | str, ...] = (2, 3)  # two mid-level stages (stride 8 and 16)
    image_size: int = 256  # square input side after resize
    interpolation: str = "bilinear"  # resize filter, recorded in the manifest
    target_dim: int | None = None  # patch feature size D; None = the stages' channels concatenated
    coreset_ratio: float = 0.1  # |coreset| / |all training patches|
    projection_dim: int = 128  # random projection used only while selecting the coreset
    coreset_presample: int = 200_000  # more patches than this: coreset chosen from a random sample of this many; 0 = all
    num_neighbors: int = 3  # b of eq. 7 (image-score reweighting); 1 disables it
    blur_sigma: float = 4.0  # Gaussian smoothing of the upsampled map, in pixels
    seed: int = 0  # random projection and coreset start; weights when weights=random

    #: Valid ranges, checked by adexport.methods.options.check_options.
    LIMITS: ClassVar[dict[str, str]] = {
        "image_size": ">= 32", "target_dim": ">= 1", "coreset_ratio": "fraction", "projection_dim": ">= 1",
        "coreset_presample": ">= 0",
        "num_neighbors": ">= 1", "blur_sigma": ">= 0", "seed": "seed"}

    def __post_init__(self) -> None:
        check_options(self)
        if len(self.layers) < 1:
            raise ConfigError("layers needs at least one feature stage")


def projection_matrix(channels: Sequence[int], target_dim: int | None) -> torch.Tensor | None:
    """Channel pooling of the concatenated stages, or None to keep them as they are.

    As in the paper, each stage is first pooled to ``target_dim`` (so every stage has an equal
    share whatever its width), then the concatenation is pooled to ``target_dim``; both steps are
    adaptive average pooling over channels, folded here into one ``(D, sum C)`` matrix.
    """
    if target_dim is None:
        return None
    per_stage = torch.block_diag(*[channel_pool_matrix(c, target_dim) for c in channels])
    return channel_pool_matrix(target_dim * len(channels), target_dim) @ per_stage


class PatchCoreGraph(nn.Module):
    """``image (B, 3, H, W) -> patch_features (B, h * w, D)``. No I/O, no device choice."""

    def __init__(self, extractor: FeatureExtractor, image_size: tuple[int, int], projection: torch.Tensor | None):
        super().__init__()
        self.extractor = extractor
        stride = extractor.info.strides[0]
        self.grid = (image_size[0] // stride, image_size[1] // stride)
        self.register_buffer("projection", projection if projection is not None else torch.empty(0), persistent=True)

    @property
    def feature_dim(self) -> int:
        if self.projection.numel():
            return int(self.projection.shape[0])
        return int(sum(self.extractor.info.channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = [F.avg_pool2d(f, kernel_size=3, stride=1, padding=1) for f in self.extractor(image)]
        feats = [feats[0]] + [F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False) for f in feats[1:]]
        z = torch.cat(feats, dim=1).flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.projection.numel():
            z = z @ self.projection.T
        return z


def _exact_index(bank: str, index_type: str) -> bool:
    return bank == "npz" or is_exact_index_type(index_type)


class FittedPatchCore(FittedMethod):
    name = "patchcore"
    scoring_kind = "knn"
    output_names = ("patch_features",)

    def __init__(self, config: PatchCoreConfig, preprocess: PreprocessConfig, graph: PatchCoreGraph,
                 memory_bank: torch.Tensor):
        super().__init__(config, preprocess, graph.extractor.info)
        self._graph = graph.eval()
        self.memory_bank = memory_bank  # (M, D) coreset

    def graph(self) -> nn.Module:
        return self._graph

    @torch.no_grad()
    def reference(self, x: torch.Tensor, *, exact: bool = True, tiles: torch.Tensor | None = None) -> Reference:
        feats = self._graph(x)
        B, N, D = feats.shape
        bank = self.memory_bank
        dist, ids = nearest(feats.reshape(-1, D), bank, 1, exact=exact)
        patch, nn_ids = dist[:, 0].view(B, N), ids[:, 0].view(B, N)
        rows = torch.arange(B)
        star = patch.argmax(dim=1)
        s_star = patch[rows, star]
        k = self.config.num_neighbors
        if k > 1:
            m_test = feats[rows, star]  # (B, D)
            _, support_ids = nearest(bank[nn_ids[rows, star]], bank, k, exact=exact)  # (B, k), m* first
            d = torch.linalg.norm(bank[support_ids] - m_test[:, None, :], dim=-1)  # (B, k)
            image = (1.0 - torch.softmax(d, dim=1)[:, 0]) * s_star
        else:
            image = s_star
        raw = patch.view(B, *self._graph.grid)
        return Reference({"patch_features": feats}, image, self.reference_maps(raw), raw)

    def postprocess(self) -> PostprocessSpec:
        return PostprocessSpec.gaussian(self._graph.grid, self.config.blur_sigma, image_score="scorer")

    def export_properties(self, *, bank: str = "faiss", index_type: str = "Flat", **_: Any) -> ExportProperties:
        exact = _exact_index(bank, index_type)
        return ExportProperties(TOLERANCE_EXACT if exact else TOLERANCE_APPROXIMATE_INDEX,
                                options=frozenset({"bank", "index_type", "search_params", "shards", "accept_approximate"}))

    def write_scoring_data(self, bundle_dir: Path, *, bank: str = "faiss", index_type: str = "Flat",
                           search_params: dict[str, float] | None = None, shards: int | None = None,
                           accept_approximate: bool = False, **_: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        vectors = np.ascontiguousarray(self.memory_bank.numpy(), dtype=np.float32)
        D = vectors.shape[1]
        if bank == "faiss":
            queries = None
            if not is_exact_index_type(index_type):  # held-out normal patches to measure the index on
                held = self.heldout_outputs()
                queries = held[0].reshape(-1, D).numpy() if held else None
            section, files = write_faiss_bank(bundle_dir, "memory_bank", vectors, index_type=index_type,
                                              search_params=search_params, shards=shards, queries=queries,
                                              accept_approximate=accept_approximate)
            section = {"format": "faiss", **section}
        elif bank == "npz":
            if search_params or shards or not is_exact_index_type(index_type):
                raise ConfigError("--index-type, --search-param and --shards apply to the FAISS bank; the npz bank is "
                                  "searched exactly with numpy: drop them or use --bank faiss")
            section, files = write_npz_bank(bundle_dir, "memory_bank", vectors)
        else:
            raise ConfigError(f"bank format {bank!r} is not known; valid: faiss, npz")
        scoring = {
            "feature_output": "patch_features",
            "num_neighbors": self.config.num_neighbors,
            "image_score": "eq. 7 reweighted max patch distance",
            "bank": section,
        }
        return scoring, files

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**graph_tensors(self._graph), "memory_bank": self.memory_bank}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedPatchCore":
        config = config_from_dict(PatchCoreConfig, meta["config"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        extractor = build_architecture(BackboneInfo.from_dict(meta["backbone"]))
        graph = PatchCoreGraph(extractor, preprocess.input_size, tensors.get("graph.projection"))
        return cls(config, preprocess, load_graph_tensors(graph, tensors), tensors["memory_bank"])


@torch.no_grad()
def fit(config: PatchCoreConfig, samples: Sequence[Sample], *, device: str = "cpu", feature_batch_size: int = 8,
        progress: Progress = SILENT, tiling: TilingSpec | None = None) -> FittedPatchCore:
    """Fit PatchCore on normal images: features -> coreset -> memory bank."""
    clock = PhaseClock()
    extractor, preprocess = backbone_and_preprocess(config, tiling)
    projection = projection_matrix(list(extractor.info.channels), config.target_dim)
    graph = PatchCoreGraph(extractor, preprocess.input_size, projection).eval()
    clock.lap("backbone_setup")
    outputs, skipped = run_graph(graph, samples, preprocess, batch_size=feature_batch_size, device=device, progress=progress)
    features = np.concatenate([o.reshape(-1, graph.feature_dim).numpy() for o in outputs])
    clock.lap("feature_extraction")

    # Below coreset_presample patches: the exact greedy, as always; above: among a random pre-sample.
    idx = select_coreset(features, config.coreset_ratio, presample=config.coreset_presample,
                         projection_dim=config.projection_dim, seed=config.seed, progress=progress)
    bank = features if len(idx) == len(features) else features[idx]
    candidates = min(len(features), config.coreset_presample or len(features))  # patches the greedy chose from
    clock.lap("coreset_selection")

    fitted = FittedPatchCore(config, preprocess, graph, torch.from_numpy(np.ascontiguousarray(bank)))
    return record_fit(fitted, clock, fit_images=len(samples) - len(skipped.files), skipped=skipped.files,
                      sizes={"patches": len(features), "coreset_candidates": candidates, "memory_bank": len(bank),
                             "feature_dim": int(bank.shape[1])})
