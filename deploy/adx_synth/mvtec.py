"""What every dataset writer here shares: MVTec AD file names, per-file seeding, PNG writing and
argument checks. Both :mod:`adx_synth.writer` (textures) and :mod:`adx_synth.digits` use it, so
neither imports the other's helpers (the writer calls the digits generator, one way only)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.errors import ConfigError

# Fast PNG: level 1 is several times quicker than the default and still deterministic.
_PNG_COMPRESS_LEVEL = 1


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer in ``[minimum, maximum]``."""
    # bool is an int subclass, but True as a count is surely a mistake.
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        valid = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ConfigError(f"{name} must be an integer {valid}, got {value!r}.")


def sample_rng(seed: int, category: str, split_id: int, index: int) -> np.random.Generator:
    """The random generator of one file: seeded with (seed, category, split, index)."""
    # crc32 rather than hash(): str hashes are salted per process and would break determinism.
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8")), split_id, index])


def file_stem(index: int, count: int) -> str:
    """``000``, ``001``, ... as MVTec names files; wider only when ``count`` needs it."""
    return f"{index:0{max(3, len(str(count - 1)))}d}"


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG, fast and byte-identical for the same pixels."""
    image.save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
