"""Previews of synthetic anomalies (``adx synth-preview``): grids of images with mask outlines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError
from adx_runtime.images import decode_image
from adx_synth.anomalies.arrays import Array
from adx_synth.anomalies.cutpaste import cutpaste, scar, scar_sizes
from adx_synth.anomalies.segmentation import ANOMALY_KINDS, check_kinds
from adx_synth.anomalies.texture_anomaly import TextureSource, texture_anomaly

_PAD = 2  # px between tiles
_BACKGROUND = (32, 32, 32)


def _outline(mask: Array) -> Array:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def preview_grid(images: Sequence[Array], masks: Sequence[Array], *, columns: int = 8) -> Image.Image:
    """A grid of synthetic anomalies: RGB :class:`PIL.Image.Image`.

    Rows come in pairs: the anomalous images, then the same images with the mask's outline in red.
    With ``n`` images of ``H`` x ``W`` and ``k = min(columns, n)`` columns, ``r = ceil(n / k)`` pairs of
    rows, and 2 px gaps, the grid is ``k*W + (k+1)*2`` wide and ``2*r*H + (2*r+1)*2`` high.
    """
    if len(images) != len(masks) or not images:
        raise ConfigError(f"preview_grid needs as many masks as images, and at least one; "
                          f"got {len(images)} images and {len(masks)} masks")
    if columns < 1:
        raise ConfigError(f"preview_grid columns must be >= 1, got {columns}")
    h, w = np.asarray(images[0]).shape[:2]
    n = len(images)
    k = min(columns, n)
    rows = -(-n // k)
    canvas = Image.new("RGB", (k * w + (k + 1) * _PAD, 2 * rows * h + (2 * rows + 1) * _PAD), _BACKGROUND)
    for j, (img, mask) in enumerate(zip(images, masks)):
        img = np.asarray(img)
        mask = np.asarray(mask, dtype=bool)
        if img.shape[:2] != (h, w) or mask.shape != (h, w):
            raise ConfigError(f"preview_grid: image {j} is {img.shape} with mask {mask.shape}; "
                              f"all must be {h} x {w} like the first")
        rgb = np.repeat(img, 3, axis=2) if img.ndim == 3 and img.shape[2] == 1 else img.reshape(h, w, -1)
        x = _PAD + (j % k) * (w + _PAD)
        y = _PAD + 2 * (j // k) * (h + _PAD)
        canvas.paste(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), (x, y))
        outlined = rgb.copy()
        outlined[_outline(mask)] = (255, 0, 0)
        canvas.paste(Image.fromarray(outlined, "RGB"), (x, y + h + _PAD))
    return canvas


def write_preview(
    dataset: str | Path,
    category: str | None,
    out: str | Path,
    *,
    kinds: Sequence[str] = ("cutpaste", "scar", "texture"),
    n: int = 8,
    image_size: int = 128,
    seed: int = 0,
    textures: str | Path | None = None,
) -> list[Path]:
    """Draw synthetic anomalies on a category's training images: one grid PNG per kind.

    Reads the first ``n`` images of ``DATASET/CATEGORY/train/good``, resizes them to ``image_size``
    (bilinear), and writes ``out/<kind>.png`` (:func:`preview_grid`) for each of ``kinds``. Scar sizes
    are the paper's for 256 px images scaled by ``image_size / 256``. ``textures``: a folder of texture
    images, or None for the generated textures except the category's own. Each kind's grid is seeded
    by ``seed`` and the kind alone, so it does not depend on which other kinds are drawn.

    Returns:
        The written paths, in the order of ``kinds``.
    """
    from adx_runtime.datasets import load_split  # noqa: PLC0415  (only previews read a dataset)

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if image_size < 8:
        raise ConfigError(f"image_size must be at least 8 px, got {image_size}")
    kinds = check_kinds(kinds)
    split = load_split(dataset, category, need_test=False)
    texture_source = None
    if "texture" in kinds:
        texture_source = (TextureSource.generated(exclude=(split.category,)) if textures is None
                          else TextureSource.from_folder(textures))
    images = [
        np.asarray(decode_image(s.path).resize((image_size, image_size), Image.Resampling.BILINEAR))
        for s in split.train[:n]
    ]
    width, height = scar_sizes(image_size)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        rng = np.random.default_rng([seed, ANOMALY_KINDS.index(kind)])
        results = []
        for img in images:
            if kind == "cutpaste":
                results.append(cutpaste(img, rng))
            elif kind == "scar":
                results.append(scar(img, rng, width=width, height=height))
            else:
                assert texture_source is not None
                results.append(texture_anomaly(img, rng, texture_source))
        path = folder / f"{kind}.png"
        preview_grid([r.image for r in results], [r.mask for r in results]).save(path)
        written.append(path)
    return written
