"""A segmentation training batch (PRNet; DRAEM): some images get one synthetic anomaly of a kind
drawn from :data:`ANOMALY_KINDS`, with its mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adx_runtime.errors import ConfigError
from adx_synth.anomalies.arrays import Array, check_batch
from adx_synth.anomalies.cutpaste import cutpaste, scar
from adx_synth.anomalies.texture_anomaly import TextureSource, texture_anomaly

ANOMALY_KINDS = ("texture", "cutpaste", "scar")


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in ANOMALY_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"unknown anomaly kinds {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"valid kinds: {', '.join(ANOMALY_KINDS)}")
    return kinds


def _check_textures(kinds: tuple[str, ...], textures: TextureSource | None) -> None:
    if "texture" in kinds and textures is None:
        raise ConfigError("anomaly kind 'texture' needs a TextureSource (TextureSource.generated(...) or "
                          "TextureSource.from_folder(...)); pass textures=..., or leave 'texture' out of kinds")


def anomaly_batch(
    images: Array,
    rng: np.random.Generator,
    *,
    textures: TextureSource | None,
    p_anomaly: float = 0.5,
    kinds: Sequence[str] = ANOMALY_KINDS,
    scar_width: tuple[int, int] = (2, 16),
    scar_height: tuple[int, int] = (10, 25),
) -> dict[str, Array]:
    """A segmentation training batch (PRNet; DRAEM): some images get one synthetic anomaly each.

    Each image independently becomes anomalous with probability ``p_anomaly`` (DRAEM: 0.5), with one
    kind drawn uniformly from ``kinds``: ``"texture"`` (:func:`texture_anomaly`, needs ``textures``),
    ``"cutpaste"`` (:func:`cutpaste`, paper defaults) or ``"scar"`` (:func:`scar` with
    ``scar_width``/``scar_height``, to be scaled to the image size).

    Args:
        images: ``(B, H, W, C)`` uint8 normal images.

    Returns:
        ``{"image": (B, H, W, C) uint8, "mask": (B, 1, H, W) float32}`` with mask 1 on the anomaly and
        all zero for images left normal.
    """
    images = check_batch(images)
    kinds = check_kinds(kinds)
    _check_textures(kinds, textures)
    if not 0.0 <= p_anomaly <= 1.0:
        raise ConfigError(f"p_anomaly must be in [0, 1], got {p_anomaly}")
    b, h, w, _ = images.shape
    out = images.copy()
    masks = np.zeros((b, 1, h, w), dtype=np.float32)
    for i in range(b):
        if not rng.random() < p_anomaly:
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "texture":
            assert textures is not None  # checked by _check_textures
            syn = texture_anomaly(images[i], rng, textures)
        elif kind == "cutpaste":
            syn = cutpaste(images[i], rng)
        else:
            syn = scar(images[i], rng, width=scar_width, height=scar_height)
        out[i] = syn.image
        masks[i, 0] = syn.mask
    return {"image": out, "mask": masks}
