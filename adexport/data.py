"""Training-side data: batches of preprocessed images as torch tensors.

Decoding and preprocessing are the runtime's own functions (``adx_runtime.preprocess``); this
module only batches their output, so what a model is fitted on is exactly what it is later fed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError, DatasetError, ImageDecodeError
from adx_runtime.images import decode_image
from adx_runtime.preprocess import PreprocessConfig, load_image, normalise_pixels, working_array
from adx_runtime.progress import SILENT, Progress
from adx_runtime.tiling import tile_layout


@dataclass
class Skipped:
    """Files that could not be decoded, with reasons; fitting goes on without them."""

    files: list[tuple[str, str]] = field(default_factory=list)


def image_batches(
    paths: Sequence[Path],
    preprocess: PreprocessConfig,
    batch_size: int = 8,
    *,
    progress: Progress = SILENT,
    description: str = "Extracting features",
    skipped: Skipped | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``(b, 3, H, W)`` float32 tensors. Undecodable files are recorded in ``skipped`` (and
    reported through ``progress``) instead of stopping the run; with no ``skipped`` they raise.

    A tiled input contract yields tiles instead: every tile of every image, ``batch_size`` tiles at
    a time, as the runtime cuts them (:func:`image_tiles`)."""
    buf: list[np.ndarray] = []
    with progress.task(description, len(paths)) as advance:
        for p in paths:
            try:
                if preprocess.tiling is not None:
                    items = image_tiles(p, preprocess)
                else:
                    items = [load_image(p, preprocess)]
            except ImageDecodeError as exc:
                if skipped is None:
                    raise
                skipped.files.append((exc.path, exc.reason))
                progress.note(f"skipped {exc.path}: {exc.reason}")
                items = []
            advance(1)
            for item in items:
                buf.append(item)
                if len(buf) == batch_size:
                    yield torch.from_numpy(np.stack(buf))
                    buf = []
        if buf:
            yield torch.from_numpy(np.stack(buf))


def image_tiles(path: Path | str, preprocess: PreprocessConfig) -> list[np.ndarray]:
    """The tiles ``[(C, th, tw), ...]`` (row-major) of one image under a tiled input contract, cut
    by the runtime's own layout. An image smaller than a tile raises :class:`ImageDecodeError`, so
    training skips and reports it like an unreadable file."""
    arr = working_tiles_source(path, preprocess)
    th, tw = preprocess.input_size
    return [normalise_pixels(arr[y:y + th, x:x + tw], preprocess)
            for y, x in tile_layout(arr.shape[:2], preprocess).offsets()]


def working_tiles_source(path: Path | str, preprocess: PreprocessConfig) -> np.ndarray:
    """One image at a tiled contract's working size, ``(H, W, C)`` uint8."""
    img = decode_image(path)
    try:
        return working_array(img, preprocess)
    except ConfigError as exc:
        raise ImageDecodeError(path, str(exc)) from None


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split ``train/good`` into (fit, calibration) parts, deterministically for a seed."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(samples)
    n_hold = max(1, int(round(fraction * n)))
    if n - n_hold < 2:
        # At least one image is always held out, so below 3 images no --holdout can help.
        fix = "Add normal images." if n < 3 else f"Add normal images or lower --holdout (at most {(n - 2) / n:.2f} fits)."
        raise DatasetError(
            f"train/good has {n} images; at least {n_hold + 2} are needed ({n_hold} held out for calibration "
            f"and 2 to fit on). {fix}"
        )
    order = np.random.default_rng(seed).permutation(n)
    hold = sorted(order[:n_hold].tolist())
    fit = sorted(order[n_hold:].tolist())
    return [samples[i] for i in fit], [samples[i] for i in hold]
