"""Reading a manifest: the file itself (no link, bounded size, strict JSON), its format and schema
version, its integrity (schema 2) or exact 0.1.0 form (schema 1), and the types of every field the
runtime reads (the ``scoring`` section by its kind's typed section, :mod:`adx_runtime.kinds`).
``manifest.schema.json`` next to this module states the same rules for readers in other languages."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from adx_runtime.bundle.files import verify_files
from adx_runtime.bundle.integrity import check_integrity
from adx_runtime.bundle.layout import (BUNDLE_FORMAT, MANIFEST, MAX_MANIFEST_BYTES, READABLE_SCHEMAS, SCHEMA_VERSION,
                                       SHA256_HEX, link_target, shown, shown_field)
from adx_runtime.bundle.schema1 import check_schema1, upgrade_v1
from adx_runtime.errors import BundleError
from adx_runtime.kinds import SECTIONS


def _is_number(value: Any) -> bool:
    """A finite number that float32 (the scores' type) can hold."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) < 3.0e38)


def _require(ok: bool, path: Path, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise BundleError(f"{str(path)!r}: {field} must be {expected}, got {shown(value)}; re-export the bundle")


def _validate_types(manifest: dict[str, Any], path: Path) -> None:
    """Check the types of every field the runtime reads, so a malformed manifest is a one-line
    BundleError at load and never a KeyError or TypeError in the middle of scoring."""
    for key in ("input", "graph", "scoring", "postprocess"):
        _require(isinstance(manifest[key], dict), path, key, manifest[key], "an object")
    files = manifest["files"]
    _require(isinstance(files, list) and len(files) > 0, path, "files", files, "a non-empty list of file entries")
    for i, entry in enumerate(files):
        _require(isinstance(entry, dict), path, f"files[{i}]", entry, "an object with path and sha256")
        _require(isinstance(entry.get("path"), str) and entry["path"] != "", path, f"files[{i}].path",
                 entry.get("path"), "a file name inside the bundle")
        _require(isinstance(entry.get("sha256"), str) and bool(SHA256_HEX.match(entry["sha256"])), path,
                 f"files[{i}].sha256", entry.get("sha256"), "64 lower-case hex digits")
    graph = manifest["graph"]
    _require(isinstance(graph.get("file"), str), path, "graph.file", graph.get("file"), "a file name")
    for key in ("inputs", "outputs"):
        values = graph.get(key)
        _require(isinstance(values, list) and len(values) > 0, path, f"graph.{key}", values, "a non-empty list")
        for i, v in enumerate(values):
            _require(isinstance(v, dict) and isinstance(v.get("name"), str), path, f"graph.{key}[{i}]", v,
                     "an object with a name")
            _require(isinstance(v.get("shape"), list), path, f"graph.{key}[{i}].shape", v.get("shape"), "a list")
    _require(graph.get("max_batch") is None or (type(graph["max_batch"]) is int and graph["max_batch"] > 0), path,
             "graph.max_batch", graph.get("max_batch"), "null or a positive integer")
    _require(isinstance(manifest["scoring"].get("kind"), str), path, "scoring.kind",
             manifest["scoring"].get("kind"), "a string")
    outputs = [o["name"] for o in graph["outputs"]]
    for key, value in manifest["scoring"].items():
        if key.endswith("_output") and not (key == "image_output" and value is None):  # optional for kind map
            _require(isinstance(value, str) and value in outputs, path, f"scoring.{key}", value,
                     f"one of the graph's outputs ({', '.join(outputs)})")
    section = SECTIONS.get(manifest["scoring"]["kind"])
    if section is not None:  # an unknown kind is refused by the scorer registry, which says to upgrade
        try:
            section.from_dict(manifest["scoring"])  # the fields the kind's scorer reads, by its typed section
        except BundleError as exc:
            raise BundleError(f"{str(path)!r}: {exc}") from None
    grid = manifest["postprocess"].get("patch_grid")
    _require(grid is None or (isinstance(grid, list) and len(grid) == 2
                              and all(type(v) is int and v > 0 for v in grid)),
             path, "postprocess.patch_grid", grid, "null or two positive integers [h, w]")
    cal = manifest.get("calibration")
    _require(isinstance(cal, dict) and isinstance(cal.get("image"), dict), path, "calibration.image",
             None if not isinstance(cal, dict) else cal.get("image"), "an object with threshold and scale")
    image = cal["image"]
    _require(_is_number(image.get("threshold")), path, "calibration.image.threshold", image.get("threshold"),
             "a finite number")
    _require(_is_number(image.get("scale")) and image["scale"] > 0, path, "calibration.image.scale",
             image.get("scale"), "a positive finite number")
    pixel = cal.get("pixel")
    _require(pixel is None or isinstance(pixel, dict), path, "calibration.pixel", pixel, "null or an object")
    if pixel:
        _require(pixel.get("threshold") is None or _is_number(pixel["threshold"]), path,
                 "calibration.pixel.threshold", pixel.get("threshold"), "null or a finite number")
        _require(pixel.get("scale") is None or (_is_number(pixel["scale"]) and pixel["scale"] > 0), path,
                 "calibration.pixel.scale", pixel.get("scale"), "null or a positive finite number")


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first_non_finite(value: Any) -> tuple[str, float] | None:
    """The field path and value of the first infinite number in parsed JSON, or None.

    JSON has no infinity, but ``json.loads`` reads a literal too large for a float (``1e999``) as
    one; nothing adexport writes holds such a number, and one left in would surface as a
    ValueError in the digest or an overflow in scoring. Walked with a stack, not recursion: a
    manifest that nests deeply but parsed must not fail here instead.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where, v
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), item) for k, item in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(v))))
    return None


def _read_manifest_bytes(root: Path, path: Path) -> bytes:
    """The manifest's bytes, refusing a symbolic link (wherever it points, even inside the folder:
    export never writes one, and following it would read a file no listing covers) and anything
    that is not a regular file, before and while opening it."""
    if path.is_symlink():
        raise BundleError(f"{str(path)!r} is a symbolic link (to {link_target(path)!r}), not the manifest export "
                          "wrote; refusing to follow it. Copy the real manifest.json into the bundle folder, or "
                          "re-export the bundle")
    if not path.is_file():
        raise BundleError(
            f"{str(root)!r} is not a bundle: it has no {MANIFEST}. Create one with `adx export`."
        )
    # O_NOFOLLOW: a link swapped in after the check above fails to open (ELOOP) instead of being
    # followed; O_NONBLOCK: a pipe swapped in does not block the open.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BundleError(f"cannot open {str(path)!r} ({exc.strerror}); it must be a readable regular file, "
                          "not a link") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{str(path)!r} is not a regular file; re-export the bundle")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{str(path)!r} is {st.st_size:,} bytes, more than a manifest can be "
                              f"({MAX_MANIFEST_BYTES:,}); it is not an adexport manifest: re-export the bundle")
        return f.read(MAX_MANIFEST_BYTES + 1)


def read_manifest(bundle_dir: str | Path, *, export_in_progress: bool = False) -> dict[str, Any]:
    """Parse the manifest and check its format, schema version, field types, the digest of its
    protected sections (schema 1: its form, see :func:`.schema1.check_schema1`) and that the export's
    parity check completed (no checksums; see verify). ``manifest.json`` must be a regular file,
    not a symbolic link, and hold no infinite number.

    ``export_in_progress`` is for export's own parity check, which loads the bundle before its
    parity section exists; nothing else may pass it.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} does not exist or is not a folder")
    path = root / MANIFEST
    data = _read_manifest_bytes(root, path)
    if len(data) > MAX_MANIFEST_BYTES:  # grew since the size check
        raise BundleError(f"{str(path)!r} is more than a manifest can be ({MAX_MANIFEST_BYTES:,} bytes); "
                          "it is not an adexport manifest: re-export the bundle")
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_parse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{str(path)!r} is not valid JSON ({exc}); re-export the bundle") from None
    except RecursionError:
        raise BundleError(f"{str(path)!r} nests too deeply to be an adexport manifest; re-export the bundle") from None
    bad = _first_non_finite(manifest)
    if bad is not None:
        raise BundleError(f"{str(path)!r}: {shown_field(bad[0])} is {bad[1]}, not a finite number (a JSON number "
                          "too large for a float, such as 1e999); adexport never writes one. Restore the manifest "
                          "or re-export the bundle")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{str(path)!r} is not an adexport manifest (format field is not {BUNDLE_FORMAT!r})")
    version = manifest.get("schema_version")
    if type(version) is not int or version not in READABLE_SCHEMAS:
        hint = (
            "upgrade adexport on this machine" if type(version) is int and version > SCHEMA_VERSION
            else "re-export it with this adexport version (`adx export MODEL_FOLDER --out BUNDLE`)"
        )
        raise BundleError(
            f"bundle {str(root)!r} has manifest schema version {version!r} (written by adexport "
            f"{manifest.get('adexport_version', '?')}); this runtime reads versions "
            f"{', '.join(map(str, READABLE_SCHEMAS))}: {hint}"
        )
    for key in ("method", "input", "graph", "files", "scoring"):
        if key not in manifest:
            raise BundleError(f"{str(path)!r} lacks the required section {key!r}; re-export the bundle")
    if version == 2 and ("postprocess" not in manifest or not isinstance(manifest["scoring"], dict)
                         or "kind" not in manifest["scoring"]):
        raise BundleError(f"{str(path)!r} lacks scoring.kind or the postprocess section; re-export the bundle")
    # On the manifest as written, before the in-memory upgrade: schema 2 by its digests, schema 1
    # (which has none) by being exactly what adexport 0.1.0 wrote.
    if version == 1:
        check_schema1(manifest, path)
    else:
        check_integrity(manifest, path)
    if not export_in_progress:
        parity = manifest.get("parity")
        if not isinstance(parity, dict) or parity.get("passed") is not True:
            raise BundleError(
                f"{str(path)!r} has no completed parity check (its export stopped before the check passed, "
                "e.g. a killed `adx export`); it is not a finished bundle. Re-export it."
            )
    if version == 1:
        if not isinstance(manifest["scoring"], dict):
            raise BundleError(f"{str(path)!r}: scoring must be an object; re-export the bundle")
        manifest = upgrade_v1(manifest, root)
    _validate_types(manifest, path)
    return manifest


def load_manifest(bundle_dir: str | Path, *, verify: bool = True, export_in_progress: bool = False) -> dict[str, Any]:
    """:func:`read_manifest`, then (``verify``) the sha256 of every file it lists."""
    manifest = read_manifest(bundle_dir, export_in_progress=export_in_progress)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest
