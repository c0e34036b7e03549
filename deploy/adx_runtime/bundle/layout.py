"""What a bundle folder is: its format name, schema versions, fixed file names and size limits,
and the small text helpers every bundle message uses."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = "adexport-bundle"
#: Version 2 (this release): ``scoring.kind`` names the scorer; one typed ``postprocess`` section;
#: ``input.colour`` may be L (1 channel). Version 1 bundles (adexport 0.1.0) are read, only in the
#: exact form 0.1.0 wrote (:func:`adx_runtime.bundle.schema1.check_schema1`), by upgrading their
#: manifest in memory (:func:`adx_runtime.bundle.schema1.upgrade_v1`); the files on disk are not
#: touched.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
#: Held (``flock``) around every read-modify-write of the manifest (``adx calibrate``).
LOCK_FILE = ".manifest.lock"

#: A real manifest is tens of kilobytes (calibration history grows it slowly); anything near this
#: is not one, and is refused before it is read into memory.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: How a ``files`` entry's sha256 is written.
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def shown(value: Any) -> str:
    """``repr(value)`` cut to 60 characters: a value from a hostile manifest may be long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def shown_field(where: str) -> str:
    """A field path for a message; a key from a hostile manifest may be long."""
    return where if len(where) <= 80 else where[:77] + "..."


def link_target(path: Path) -> str:
    """Where the symbolic link ``path`` points, for a message (``?`` if it cannot be read)."""
    try:
        return os.readlink(path)
    except OSError:
        return "?"
