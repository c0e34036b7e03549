"""Bundle files: their checksums, their manifest entries, and the one way the runtime opens them
(:func:`bundle_file`: listed, inside the folder, checksum verified)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Any

from adx_runtime.errors import BundleError


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


def confined(root: Path, rel: Any, what: str) -> Path:
    """``root / rel`` as a real path, refusing absolute names, ``..`` and symlinks that leave ``root``."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"bundle {str(root)!r}: {what} must be a file name inside the bundle, got {rel!r}")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"bundle {str(root)!r}: {what} {rel!r} lies outside the bundle folder "
                          "(absolute path or '..'); refusing it")
    real_root = root.resolve()
    path = (root / pure).resolve()
    if path != real_root and real_root not in path.parents:
        raise BundleError(f"bundle {str(root)!r}: {what} {rel!r} lies outside the bundle folder "
                          f"(a symbolic link to {str(path)!r}); refusing it")
    return path


def bundle_file(bundle_dir: str | Path, manifest: dict[str, Any], name: Any, *, what: str = "file") -> Path:
    """The verified path of the bundle file ``name``: the one way the runtime opens a bundle file.

    Refuses a name that is absolute, contains ``..``, leads (through a symlink) outside the folder,
    is not listed in ``files``, is not a regular file, or whose sha256 differs from the manifest's.
    """
    root = Path(bundle_dir)
    path = confined(root, name, what)
    entries = {e.get("path"): e for e in manifest["files"] if isinstance(e, dict)}
    entry = entries.get(name)
    if entry is None:
        raise BundleError(
            f"bundle {str(root)!r}: {what} {name!r} is not listed in the manifest's files, so it has no checksum; "
            "refusing to load an unverified file. Re-export the bundle."
        )
    if not path.is_file():
        raise BundleError(f"bundle {str(root)!r} is missing {name!r}, which its manifest lists; re-export it")
    # Hashed now, every time, with no cache: one keyed on size, mtime and inode trusted a file
    # edited in place with its mtime put back (``os.utime``), so a long-running process (``adx serve``,
    # a watcher) scored with the edited bank on its next load. Each file is hashed twice per load
    # (:func:`verify_files`, then here), about 1.4 s per GB on one core.
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{name!r} in bundle {str(root)!r} failed its checksum: manifest sha256 {str(entry['sha256'])[:16]}..., "
            f"file sha256 {actual[:16]}.... The file was modified or corrupted after export; "
            "copy the bundle again or re-export it."
        )
    return path


def bundle_folder(bundle_dir: str | Path, name: Any, *, what: str = "folder") -> Path:
    """A sub-folder of the bundle (the TensorRT engine cache), confined like :func:`bundle_file`."""
    path = confined(Path(bundle_dir), name, what)
    if not path.is_dir():
        raise BundleError(f"bundle {str(bundle_dir)!r} is missing its {what} {name!r}; re-export it")
    return path


def verify_files(bundle_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists exists inside the bundle and has the recorded sha256."""
    root = Path(bundle_dir)
    listed = {entry["path"] for entry in manifest["files"]}
    if manifest["graph"]["file"] not in listed:
        raise BundleError(f"manifest of {str(root)!r} does not list its graph file {manifest['graph']['file']!r}")
    for entry in manifest["files"]:
        bundle_file(root, manifest, entry["path"])
