"""The one table of methods: name -> config, fit function and fitted class.

A method whose config inherits :class:`adexport.training.TrainingOptions` is a trained network:
``adx train`` gives its fit a checkpoint file and ``--resume``. The others fit in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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

    @property
    def trained(self) -> bool:
        """A network trained by the shared loop (epochs, optimiser, checkpoints), not a one-pass fit."""
        from adexport.training import TrainingOptions  # noqa: PLC0415

        return issubclass(self.config_cls, TrainingOptions)


METHODS: dict[str, MethodEntry] = {
    "patchcore": MethodEntry(
        "patchcore", "PatchCore: coreset memory bank of locally aware patch features, kNN scoring",
        patchcore.PatchCoreConfig, patchcore.fit, patchcore.FittedPatchCore,
    ),
    "padim": MethodEntry(
        "padim", "PaDiM: per-position Gaussians of a random channel subset, Mahalanobis distance",
        padim.PadimConfig, padim.fit, padim.FittedPadim,
    ),
    "spade": MethodEntry(
        "spade", "SPADE: kNN over training images, then pixel correspondences within the k nearest",
        spade.SpadeConfig, spade.fit, spade.FittedSpade,
    ),
    "rd4ad": MethodEntry(
        "rd4ad", "RD4AD: frozen teacher, one-class bottleneck, reverse-distilled student; cosine-distance map",
        rd4ad.RD4ADConfig, rd4ad.fit, rd4ad.FittedRD4AD,
    ),
    "cutpaste": MethodEntry(
        "cutpaste", "CutPaste: encoder trained to spot pasted patches and scars; Gaussian density of its embeddings",
        cutpaste.CutPasteConfig, cutpaste.fit, cutpaste.FittedCutPaste,
    ),
    "riad": MethodEntry(
        "riad", "RIAD: U-Net inpaints disjoint random masks of the image; multi-scale gradient-similarity map",
        riad.RIADConfig, riad.fit, riad.FittedRIAD,
    ),
    "prnet": MethodEntry(
        "prnet", "PRNet: residuals to normal prototypes, multi-size attention, segmentation trained on synthetic anomalies",
        prnet.PRNetConfig, prnet.fit, prnet.FittedPRNet,
    ),
}


def get_method(name: str) -> MethodEntry:
    if name not in METHODS:
        raise ConfigError(f"method {name!r} is not known; valid: {', '.join(METHODS)}")
    return METHODS[name]


def method_names() -> list[str]:
    return list(METHODS)


__all__ = ["METHODS", "MethodEntry", "get_method", "method_names"]
