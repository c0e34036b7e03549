"""The digests of a manifest's protected sections: recorded at export, checked at every load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from adx_runtime.errors import BundleError

#: The manifest sections that decide scores. Their digests are recorded in ``integrity`` at export
#: and checked at every load: a hand edit of any of them is refused. ``calibration`` (thresholds) is
#: deliberately not among them: ``adx calibrate`` changes it and records its own history.
PROTECTED_SECTIONS = ("input", "graph", "scoring", "postprocess", "files")
#: Protected too when present: a TensorRT bundle's engine folder, name prefix, profile and fp16 flag.
OPTIONAL_PROTECTED_SECTIONS = ("tensorrt",)


def section_digest(value: Any) -> str:
    """sha256 of a section in a canonical JSON form (sorted keys, no spaces), so re-indenting or
    re-ordering the manifest does not change it but any change of a value does."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def integrity_section(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``integrity`` section export records: one digest per protected section."""
    names = [*PROTECTED_SECTIONS, *(n for n in OPTIONAL_PROTECTED_SECTIONS if n in manifest)]
    return {"algorithm": "sha256 of canonical JSON (sorted keys, separators ',' ':')",
            "sections": {name: section_digest(manifest[name]) for name in names}}


def check_integrity(manifest: dict[str, Any], path: Path) -> None:
    """The digests of a schema-2 manifest (schema 1 has none; :mod:`.schema1` checks its form instead)."""
    integrity = manifest.get("integrity")
    if integrity is None:
        # A schema-2 manifest without a digest is refused rather than accepted with a warning:
        # accepting it would make deleting the section a way around the check.
        raise BundleError(
            f"{str(path)!r} has no integrity section (the digest of its input, graph, scoring, postprocess "
            "and files sections), so edits to them cannot be detected; it was written before adexport recorded "
            "one, or the section was removed. Re-export the bundle (`adx export MODEL_FOLDER --out BUNDLE`)."
        )
    sections = integrity.get("sections") if isinstance(integrity, dict) else None
    if not isinstance(sections, dict):
        raise BundleError(f"{str(path)!r}: the integrity section is malformed (no 'sections' object); re-export the bundle")
    changed = [name for name in PROTECTED_SECTIONS
               if name in manifest and sections.get(name) != section_digest(manifest[name])]
    changed += [name for name in OPTIONAL_PROTECTED_SECTIONS if (name in manifest or name in sections) and
                sections.get(name) != (section_digest(manifest[name]) if name in manifest else None)]
    if changed:
        raise BundleError(
            f"{str(path)!r}: the protected section{'s' if len(changed) > 1 else ''} {', '.join(changed)} "
            "changed after export (digest mismatch). These decide scores and may not be edited by hand; "
            "thresholds change only through `adx calibrate`. Restore the manifest or re-export the bundle."
        )
