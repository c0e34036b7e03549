"""What every method provides, so training, saving, export and parity stay method-agnostic.

A method module defines a config dataclass, a ``fit(config, samples, ...)`` function and a
:class:`FittedMethod` subclass holding the fitted state:

- ``graph()``: the plain ``nn.Module`` exported to ONNX, ``(B, 3, H, W) -> outputs``;
- ``reference(x)``: the full torch scoring (graph, kNN/density, map) that parity is checked against;
- ``write_scoring_data(dir)``: the bank or statistics files and the manifest's ``scoring`` section;
- ``tensors()`` / ``from_saved()``: the fitted state as safetensors (no pickle).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from adexport.backbones import BackboneInfo, FeatureExtractor, create_backbone
from adexport.data import Skipped, image_batches
from adexport.methods.common import FitReport
from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError
from adx_runtime.preprocess import PreprocessConfig
from adx_runtime.progress import Progress


@dataclass
class Reference:
    """Torch scores of a batch: graph outputs, raw image scores ``(B,)`` and maps ``(B, H, W)``."""

    outputs: dict[str, torch.Tensor]
    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor


class FittedMethod(ABC):
    """Fitted state of one method plus what every method records."""

    name: ClassVar[str]
    output_names: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any, preprocess: PreprocessConfig, backbone: BackboneInfo):
        self.config = config
        self.preprocess = preprocess
        self.backbone = backbone
        self.calibration: dict[str, Any] = {}
        self.dataset: dict[str, Any] = {}
        self.report = FitReport()

    @abstractmethod
    def graph(self) -> nn.Module: ...

    @abstractmethod
    def reference(self, x: torch.Tensor, *, exact: bool = True) -> Reference:
        """Torch scores of ``x (B, 3, H, W)``; ``exact=False`` may trade float32 rounding for speed."""

    @abstractmethod
    def write_scoring_data(self, bundle_dir: Path, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Write scoring files into ``bundle_dir``; return the manifest ``scoring`` section and
        the ``files`` entries of what was written."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    @classmethod
    @abstractmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedMethod": ...

    def output_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes of each graph output (the batch axis by default)."""
        return {name: {0: "batch"} for name in self.output_names}

    @property
    def exact_scoring(self) -> bool:
        """Whether the runtime's scoring is exact (sets the default parity tolerance)."""
        return True


def backbone_and_preprocess(config: Any) -> tuple[FeatureExtractor, PreprocessConfig]:
    """The backbone a config names and the input contract that goes with its weights (mean/std)."""
    extractor = create_backbone(config.backbone, config.layers, config.weights, seed=config.seed)
    info = extractor.info
    preprocess = PreprocessConfig.square(config.image_size, interpolation=config.interpolation,
                                         mean=info.mean, std=info.std)
    return extractor, preprocess


@torch.no_grad()
def run_graph(graph: nn.Module, samples: Sequence[Sample], preprocess: PreprocessConfig, *, batch_size: int,
              device: str, progress: Progress) -> tuple[list[Any], Skipped]:
    """The graph's outputs (on the CPU) for every decodable training image, batch by batch, and the
    files that could not be decoded (reported, not fatal)."""
    model = graph.to(device)
    skipped = Skipped()
    outputs: list[Any] = []
    for x in image_batches([s.path for s in samples], preprocess, batch_size, progress=progress, skipped=skipped):
        y = model(x.to(device))
        outputs.append(tuple(t.cpu() for t in y) if isinstance(y, tuple) else y.cpu())
    graph.cpu()
    if not outputs:
        raise ConfigError("none of the training images could be decoded; see the messages above")
    return outputs, skipped


def graph_tensors(graph: nn.Module) -> dict[str, torch.Tensor]:
    """The graph's state, prefixed ``graph.`` for the fitted model's safetensors file."""
    return {f"graph.{k}": v for k, v in graph.state_dict().items()}


def load_graph_tensors(graph: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    graph.load_state_dict({k[len("graph."):]: v for k, v in tensors.items() if k.startswith("graph.")})
    return graph


def make_config(config_cls: type, overrides: dict[str, Any]) -> Any:
    """Build a method config from CLI/library overrides, refusing options the method lacks."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise ConfigError(
            f"{config_cls.__name__} has no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(fields))}"
        )
    return config_cls(**{k: v for k, v in overrides.items() if v is not None})


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_dict(config_cls: type, d: dict[str, Any]) -> Any:
    types = {f.name: f.type for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: tuple(v) if isinstance(v, list) and "tuple" in str(types.get(k)) else v
                         for k, v in d.items() if k in types})
