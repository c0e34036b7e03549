"""The bundle on disk: a folder with ``manifest.json``, ``model.onnx`` and scoring data.

Reading verifies the format, the schema version and the sha256 of every listed file before
anything is scored. Writing is atomic: a bundle is assembled in a hidden sibling folder and renamed
into place, and a manifest is replaced with ``os.replace``; a failure leaves nothing that looks
like a bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from adx_runtime.errors import BundleError

BUNDLE_FORMAT = "adexport-bundle"
#: Version 2 (this release): ``scoring.kind`` names the scorer; one typed ``postprocess`` section;
#: ``input.colour`` may be L (1 channel). Version 1 bundles (adexport 0.1.0) are read by upgrading
#: their manifest in memory (:func:`upgrade_v1`); the files on disk are not touched.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"

#: What each schema-1 method scored with, and how its image score was made.
_V1_METHODS = {
    "patchcore": ("knn", "scorer"),
    "spade": ("gallery", "scorer"),
    "padim": ("gaussian", "max"),
}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(bundle_dir: str | Path, relpath: str, kind: str, **extra: Any) -> dict[str, Any]:
    """A ``files`` entry of the manifest for a file already written into ``bundle_dir``."""
    path = Path(bundle_dir) / relpath
    return {"path": relpath, "kind": kind, "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Parse and check the manifest's format and schema version (no checksums; see verify)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} does not exist or is not a folder")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{str(root)!r} is not a bundle: it has no {MANIFEST}. Create one with `adx export`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{str(path)!r} is not valid JSON ({exc}); re-export the bundle") from None
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
    if version == 1:
        manifest = upgrade_v1(manifest, root)
    elif "postprocess" not in manifest or not isinstance(manifest["scoring"], dict) or "kind" not in manifest["scoring"]:
        raise BundleError(f"{str(path)!r} lacks scoring.kind or the postprocess section; re-export the bundle")
    return manifest


def upgrade_v1(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    """A schema-1 manifest -> the schema-2 form, in memory. Schema 1 dispatched on the method name
    and kept ``blur_sigma`` and ``patch_grid`` in ``scoring``; everything else reads as it was."""
    method = manifest.get("method")
    if method not in _V1_METHODS:
        raise BundleError(
            f"bundle {str(root)!r} is schema 1 with method {method!r}, which schema 1 never had; "
            "re-export it with this adexport version (`adx export MODEL_FOLDER --out BUNDLE`)"
        )
    kind, rule = _V1_METHODS[method]
    scoring = dict(manifest["scoring"])
    try:
        grid = tuple(int(v) for v in scoring["patch_grid"])
        sigma = float(scoring["blur_sigma"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(
            f"bundle {str(root)!r} (schema 1) lacks scoring.patch_grid or scoring.blur_sigma; re-export it with "
            "this adexport version (`adx export MODEL_FOLDER --out BUNDLE`)"
        ) from None
    scoring["kind"] = kind
    upgraded = dict(manifest, scoring=scoring)
    upgraded["postprocess"] = {
        "map": True, "patch_grid": list(grid), "upsample": "bilinear (half-pixel centres) to the input size",
        "smoothing": {"type": "gaussian", "sigma": sigma} if sigma > 0 else {"type": "none"},
        "image_score": {"rule": rule},
    }
    upgraded["upgraded_from_schema"] = 1
    return upgraded


def verify_files(bundle_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists exists and has the recorded sha256."""
    root = Path(bundle_dir)
    listed = {entry["path"] for entry in manifest["files"]}
    if manifest["graph"]["file"] not in listed:
        raise BundleError(f"manifest of {str(root)!r} does not list its graph file {manifest['graph']['file']!r}")
    for entry in manifest["files"]:
        rel = entry["path"]
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:
            raise BundleError(f"manifest lists {rel!r}, which lies outside the bundle folder; refusing it")
        if not path.is_file():
            raise BundleError(f"bundle {str(root)!r} is missing {rel!r}, which its manifest lists; re-export it")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(
                f"{rel!r} in bundle {str(root)!r} failed its checksum: manifest sha256 {entry['sha256'][:16]}..., "
                f"file sha256 {actual[:16]}.... The file was modified or corrupted after export; "
                "copy the bundle again or re-export it."
            )


def load_manifest(bundle_dir: str | Path, *, verify: bool = True) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it over ``path`` (readers see old or new, never half)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``dest``; on success it is renamed to ``dest``.

    On any exception the temporary folder is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise BundleError(f"{str(dest)!r} already exists; choose another path or pass --overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            # Swap: move the old one aside first so a crash never leaves no bundle at all.
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
