"""What every method provides, so training, saving, export and parity stay method-agnostic.

A method module defines a config dataclass, a ``fit(config, samples, *, device, feature_batch_size,
progress[, run])`` function (bank methods: one pass; trained networks: the shared loop in
:mod:`adexport.training`; ``feature_batch_size`` is images per forward pass when extracting features,
never the optimiser's batch, which is the config's own ``batch_size``) and a
:class:`FittedMethod` subclass holding the fitted state:

- ``scoring_kind``: what the runtime adds after the graph (``knn``, ``gallery``, ``gaussian``,
  ``map``); the runtime dispatches on it, never on the method name;
- ``graph()``: the plain ``nn.Module`` exported to ONNX, ``(B, C, H, W) -> outputs``;
- ``postprocess()``: the manifest's typed post-processing section (map grid or none, smoothing,
  image-score rule);
- ``reference(x)``: the full torch scoring (graph, kNN/density, map) that parity is checked against;
- ``write_scoring_data(dir, **options)``: scoring files and the kind-specific ``scoring`` section;
- ``export_properties(**options)``: parity tolerance, whether fp16 engines and int8 graphs are
  allowed (and why not), which export options the method uses (others are refused);
- ``tensors()`` / ``from_saved()``: the fitted state as safetensors (no pickle).

A fitted method need not have a backbone (RIAD's U-Net has none): ``backbone`` is then ``None``.
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
from adx_runtime.export_options import EXPORT_OPTION_FLAGS
from adexport.methods.fit_report import FitReport
from adexport.methods.reference_scoring import reference_image_scores, reference_postprocess
from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import Progress

#: Parity tolerances: max |torch - runtime| / max |torch| per quantity. Exact scoring differs from
#: torch only by float32 rounding; approximate FAISS indices or float16 stores trade accuracy.
TOLERANCE_EXACT = {"features": 1e-4, "image_scores": 1e-3, "maps": 1e-3}
TOLERANCE_APPROXIMATE = {"features": 1e-4, "image_scores": 5e-2, "maps": 5e-2}
#: An approximate FAISS index is gated by its own measurement against exact search on held-out
#: normal patches (``adexport.banks``); parity then checks the graph exactly and the scores loosely:
#: product quantization (IVF64,PQ38 on the demo) moved image scores by up to 11% with AUROC unchanged.
TOLERANCE_APPROXIMATE_INDEX = {"features": 1e-4, "image_scores": 0.2, "maps": 0.2}
TOLERANCE_FP16 = {"features": 2e-2, "image_scores": 5e-2, "maps": 5e-2}
#: An int8 graph (static QDQ quantization, stem in float32) moved the demo PatchCore's features by
#: 15% of their largest value at most over the parity images (efficientnet_lite0, weave, measured),
#: image scores by 9% and maps by 5%.
TOLERANCE_INT8 = {"features": 0.3, "image_scores": 0.1, "maps": 0.1}

#: Export options a method may use (keyword -> flag), from the one table in
#: :mod:`adx_runtime.export_options`; each method names the ones it honours, the rest are refused.
EXPORT_OPTIONS = EXPORT_OPTION_FLAGS


@dataclass(frozen=True)
class ExportProperties:
    """What a method declares about its export, instead of side effects in the export code."""

    tolerance: dict[str, float]  # parity tolerances for this configuration
    fp16: bool = True  # whether float16 TensorRT engines are allowed
    fp16_reason: str = ""  # why not, when not
    int8: bool = True  # whether an int8 (statically quantized) ONNX graph is allowed
    int8_reason: str = ""  # why not, when not
    options: frozenset[str] = frozenset()  # export options (EXPORT_OPTIONS keys) the method honours

    def __post_init__(self) -> None:
        # A misspelt name would make export refuse the option the method meant to honour.
        unknown = sorted(set(self.options) - set(EXPORT_OPTIONS))
        if unknown:
            raise TypeError(f"ExportProperties.options names no export option: {', '.join(unknown)}; "
                            f"known: {', '.join(EXPORT_OPTIONS)}")


@dataclass
class Reference:
    """Torch scores of a batch: graph outputs, raw image scores ``(B,)`` and maps ``(B, H, W)``
    (``None`` for image-level-only methods)."""

    outputs: dict[str, torch.Tensor]
    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor | None
    #: the raw ``(B, h, w)`` maps before post-processing (what a tiled model stitches); None without a map
    patch_maps: torch.Tensor | None = None


class FittedMethod(ABC):
    """Fitted state of one method plus what every method records."""

    name: ClassVar[str]
    scoring_kind: ClassVar[str]  # knn | gallery | gaussian | map: the runtime's scorer
    output_names: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any, preprocess: PreprocessConfig, backbone: BackboneInfo | None):
        self.config = config
        self.preprocess = preprocess
        self.backbone = backbone
        self.calibration: dict[str, Any] = {}
        self.dataset: dict[str, Any] = {}
        self.report = FitReport()

    @abstractmethod
    def graph(self) -> nn.Module: ...

    @abstractmethod
    def postprocess(self) -> PostprocessSpec:
        """The manifest's ``postprocess`` section: map grid (or none), smoothing, image-score rule."""

    @abstractmethod
    def reference(self, x: torch.Tensor, *, exact: bool = True, tiles: torch.Tensor | None = None) -> Reference:
        """Torch scores of ``x (B, C, H, W)``; ``exact=False`` may trade float32 rounding for speed.
        ``tiles``: the tile position ``(B,)`` of each row under a tiled contract, read only by
        statistics kept per tile position (PaDiM's ``tile_gaussians=per-tile``)."""

    @abstractmethod
    def write_scoring_data(self, bundle_dir: Path, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Write scoring files into ``bundle_dir``; return the kind-specific manifest ``scoring``
        section (without ``kind``) and the ``files`` entries of what was written."""

    def export_properties(self, **options: Any) -> ExportProperties:
        """Parity tolerance, fp16 and int8 permissions and honoured options for these export options.
        Default: exact scoring, fp16 and int8 allowed, no options."""
        return ExportProperties(TOLERANCE_EXACT)

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    @classmethod
    @abstractmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "FittedMethod": ...

    def heldout_images(self) -> list[Path]:
        """Normal images kept out of the fit (recorded at training), for measuring approximate
        indices; models saved before that was recorded fall back to the normal parity images."""
        files = self.dataset.get("holdout_files") or [p for p in self.dataset.get("parity_images", [])
                                                      if Path(p).parent.name == "good"]
        return [Path(p) for p in files if Path(p).is_file()]

    @torch.no_grad()
    def heldout_outputs(self, max_images: int = 16) -> tuple[torch.Tensor, ...]:
        """The graph's outputs on up to ``max_images`` held-out normal images, concatenated per
        output (empty tuple when none are on disk)."""
        paths = self.heldout_images()[:max_images]
        if not paths:
            return ()
        outs = [self.graph()(x) for x in image_batches(paths, self.preprocess, 8)]
        outs = [o if isinstance(o, tuple) else (o,) for o in outs]
        return tuple(torch.cat(parts) for parts in zip(*outs))

    @torch.no_grad()
    def check_consistency(self) -> None:
        """Raise ``ConfigError`` when the fitted tensors do not fit each other or the config.

        Used when a saved model is loaded: a bank with columns cut, Gaussians of another size or
        masks of another image size load without complaint and fail (or score nonsense) only at
        export. Scoring one blank image through :meth:`reference` exercises every tensor against
        the graph's outputs for every method, at the cost of one forward pass; a method may
        override this with cheaper or more precise checks.
        """
        h, w = self.preprocess.input_size
        x = torch.zeros(1, self.preprocess.channels, h, w)
        try:
            # a tiled model's reference takes each row's tile position (an untiled one need not accept it)
            at = {"tiles": torch.zeros(1, dtype=torch.long)} if self.preprocess.tiling is not None else {}
            ref = self.reference(x, exact=True, **at)
        except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AssertionError, ConfigError) as exc:
            # (FAISS's Python wrappers check dimensions with assert)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"scoring a blank {w} x {h} image fails ({type(exc).__name__}: {first})") from None
        values = [ref.image_scores, ref.anomaly_maps, *ref.outputs.values()]
        if any(v is not None and v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in values):
            raise ConfigError("scoring a blank image gives NaN or infinite values")

    def output_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes of each graph output (the batch axis by default)."""
        return {name: {0: "batch"} for name in self.output_names}

    def reference_maps(self, patch_maps: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, h, w)`` maps -> final ``(B, H, W)`` by this method's post-processing, in torch."""
        return reference_postprocess(patch_maps, self.postprocess(), self.preprocess.input_size)

    def reference_image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """The post-processing image-score rule over final maps, in torch."""
        return reference_image_scores(maps, self.postprocess())


class MapMethod(FittedMethod):
    """A method whose exported graph is the whole detector: it outputs the raw anomaly map
    ``(B, H, W)`` at the input size (scoring kind ``map``: RD4AD, RIAD, PRNet). The subclass sets
    ``self._graph`` and its ``postprocess()``; the torch reference is the graph followed by the
    torch post-processing."""

    scoring_kind = "map"
    output_names = ("anomaly_map",)
    _graph: nn.Module

    def graph(self) -> nn.Module:
        return self._graph

    @torch.no_grad()
    def reference(self, x: torch.Tensor, *, exact: bool = True, tiles: torch.Tensor | None = None) -> Reference:
        raw = self._graph(x)
        maps = self.reference_maps(raw)
        return Reference({"anomaly_map": raw}, self.reference_image_scores(maps), maps, raw if raw.dim() == 3 else raw[:, 0])


def backbone_and_preprocess(config: Any, tiling: TilingSpec | None = None) -> tuple[FeatureExtractor, PreprocessConfig]:
    """The backbone a config names and the input contract that goes with its weights (mean/std);
    with ``tiling``, images are cut into tiles of ``config.image_size`` instead of resized to it."""
    extractor = create_backbone(config.backbone, config.layers, config.weights, seed=config.seed)
    info = extractor.info
    preprocess = PreprocessConfig.square(config.image_size, interpolation=config.interpolation,
                                         mean=info.mean, std=info.std, tiling=tiling)
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


def merge_options(config_cls: type, shortcuts: dict[str, Any] | None, assignments: Sequence[str]) -> dict[str, Any]:
    """A method's overrides from a command line: the generic shortcut flags given (``None``: not
    given) and ``--set KEY=VALUE`` items parsed by the config's field types. An option given both
    ways is refused rather than one silently winning."""
    from adexport.methods.options import parse_assignments  # noqa: PLC0415

    options = {k: v for k, v in (shortcuts or {}).items() if v is not None}
    explicit = parse_assignments(config_cls, assignments)
    both = sorted(set(options) & set(explicit))
    if both:
        raise ConfigError(f"{', '.join(both)} given both as a flag and with --set; give each option once")
    return {**options, **explicit}


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_dict(config_cls: type, d: dict[str, Any]) -> Any:
    types = {f.name: f.type for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: tuple(v) if isinstance(v, list) and "tuple" in str(types.get(k)) else v
                         for k, v in d.items() if k in types})
