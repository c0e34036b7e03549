"""The one table of methods: name -> config, fit function and fitted class.

A method whose config inherits :class:`adexport.training.TrainingOptions` is a trained network:
``adx train`` gives its fit a checkpoint file and ``--resume``. The others fit in one pass.

Each entry also carries ``test_options``: the tiny settings (random weights, 32-64 px, a couple of
epochs) under which the test suite fits it in seconds. The generic tests loop over this table, so
registering a method here is what puts it under every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from adexport.methods import padim, patchcore, spade
from adexport.methods import cutpaste
from adexport.methods import rd4ad
from adexport.methods import riad
from adexport.methods import prnet
from adexport.methods.base import FittedMethod
from adx_runtime.errors import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    summary: str
    config_cls: type
    fit: Callable[..., FittedMethod]
    fitted_cls: type[FittedMethod]
    #: Config overrides that make a fit take seconds on a CPU, for tests (read-only).
    test_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    @property
    def trained(self) -> bool:
        """A network trained by the shared loop (epochs, optimiser, checkpoints), not a one-pass fit."""
        from adexport.training import TrainingOptions  # noqa: PLC0415

        return issubclass(self.config_cls, TrainingOptions)


#: timm's 82k-parameter ``test_efficientnet`` (stages of 16, 24, 32, 48, 64 channels) with random weights.
_TINY_BACKBONE = {"backbone": "test_efficientnet", "weights": "random"}


def _tiny(**options: Any) -> Mapping[str, Any]:
    return MappingProxyType(options)


METHODS: dict[str, MethodEntry] = {
    "patchcore": MethodEntry(
        "patchcore", "PatchCore: coreset memory bank of locally aware patch features, kNN scoring",
        patchcore.PatchCoreConfig, patchcore.fit, patchcore.FittedPatchCore,
        _tiny(**_TINY_BACKBONE, image_size=64),
    ),
    "padim": MethodEntry(
        "padim", "PaDiM: per-position Gaussians of a random channel subset, Mahalanobis distance",
        padim.PadimConfig, padim.fit, padim.FittedPadim,
        _tiny(**_TINY_BACKBONE, image_size=64, n_features=40),
    ),
    "spade": MethodEntry(
        "spade", "SPADE: kNN over training images, then pixel correspondences within the k nearest",
        spade.SpadeConfig, spade.fit, spade.FittedSpade,
        _tiny(**_TINY_BACKBONE, image_size=64, k=5),
    ),
    "rd4ad": MethodEntry(
        "rd4ad", "RD4AD: frozen teacher, one-class bottleneck, reverse-distilled student; cosine-distance map",
        rd4ad.RD4ADConfig, rd4ad.fit, rd4ad.FittedRD4AD,
        _tiny(**_TINY_BACKBONE, image_size=32, epochs=2, batch_size=4, width=0.5, oce_blocks=1, decoder_blocks=1),
    ),
    "cutpaste": MethodEntry(
        "cutpaste", "CutPaste: encoder trained to spot pasted patches and scars; Gaussian density of its embeddings",
        cutpaste.CutPasteConfig, cutpaste.fit, cutpaste.FittedCutPaste,
        _tiny(**_TINY_BACKBONE, image_size=32, epochs=2, batch_size=4, head_layers=0),
    ),
    "riad": MethodEntry(
        "riad", "RIAD: U-Net inpaints disjoint random masks of the image; multi-scale gradient-similarity map",
        riad.RIADConfig, riad.fit, riad.FittedRIAD,
        _tiny(image_size=32, epochs=2, batch_size=4, base_width=4),
    ),
    "prnet": MethodEntry(
        "prnet", "PRNet: residuals to normal prototypes, multi-size attention, segmentation trained on synthetic anomalies",
        prnet.PRNetConfig, prnet.fit, prnet.FittedPRNet,
        _tiny(**_TINY_BACKBONE, image_size=32, epochs=2, batch_size=4, width=8, prototype_ratio=0.25),
    ),
}


def get_method(name: str) -> MethodEntry:
    if name not in METHODS:
        raise ConfigError(f"method {name!r} is not known; valid: {', '.join(METHODS)}")
    return METHODS[name]


def method_names() -> list[str]:
    return list(METHODS)


__all__ = ["METHODS", "MethodEntry", "get_method", "method_names"]
