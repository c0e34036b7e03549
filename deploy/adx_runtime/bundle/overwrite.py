"""What ``--overwrite`` may delete: only a folder this tool wrote, unchanged, file by file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Callable

from adx_runtime.bundle.files import sha256_file
from adx_runtime.bundle.layout import BUNDLE_FORMAT, LOCK_FILE, MANIFEST, MAX_MANIFEST_BYTES, SHA256_HEX
from adx_runtime.errors import BundleError


def _manifest_listing(path: Path) -> tuple[dict[str, str], str | None]:
    """``{relative path: sha256}`` of the files ``path``'s manifest lists, or the reason it is not
    an adexport manifest. Read without :func:`read_manifest`'s checks: a bundle that no longer
    loads (tampered, or from another version) may still be replaced, if every file is export's."""
    manifest = path / MANIFEST
    try:
        st = manifest.lstat()
    except FileNotFoundError:
        return {}, f"it has no {MANIFEST}"
    except OSError as exc:
        return {}, f"its {MANIFEST} cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return {}, f"its {MANIFEST} is not a regular file"
    if st.st_size > MAX_MANIFEST_BYTES:
        return {}, f"its {MANIFEST} is {st.st_size:,} bytes, more than an adexport manifest can be"
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}, f"its {MANIFEST} is not valid JSON"
    except OSError as exc:
        return {}, f"its {MANIFEST} cannot be read ({exc.strerror})"
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        return {}, f"its {MANIFEST} is not an adexport manifest"
    files = data.get("files")
    if type(data.get("schema_version")) is not int or not isinstance(files, list):
        return {}, f"its {MANIFEST} has no schema_version or no files list, so its files cannot be verified"
    listed: dict[str, str] = {}
    for entry in files:
        ok = (isinstance(entry, dict) and isinstance(entry.get("path"), str)
              and isinstance(entry.get("sha256"), str) and SHA256_HEX.match(entry["sha256"]) is not None)
        if not ok:
            return {}, f"its {MANIFEST} lists a file without a path and a sha256 ({str(entry)[:80]}), so it cannot be verified"
        listed[entry["path"]] = entry["sha256"]
    return listed, None


def _unexpected_in_tree(path: Path, listed: dict[str, str]) -> tuple[list[tuple[str, Path]], str | None]:
    """Walk ``path`` (never following links) and return the listed files found, or the first
    thing export did not write: an unlisted file or folder, a link, a device or pipe."""
    folders = {str(parent) for rel in listed for parent in PurePosixPath(rel).parents if str(parent) != "."}
    found: list[tuple[str, Path]] = []

    def walk(folder: Path, prefix: str) -> str | None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            return f"the folder {prefix or '.'} cannot be listed ({exc.strerror})"
        for e in entries:
            rel = prefix + e.name
            if e.is_symlink():
                return f"it holds a symbolic link, which export never writes ({rel})"
            if e.is_dir(follow_symlinks=False):
                if rel not in folders:
                    return f"it holds a folder that is not part of the bundle ({rel}/)"
                problem = walk(Path(e.path), rel + "/")
                if problem is not None:
                    return problem
            elif not e.is_file(follow_symlinks=False):
                return f"it holds something that is not a regular file ({rel}: a device, pipe or socket)"
            elif rel == MANIFEST:
                continue
            elif rel == LOCK_FILE:
                # manifest_lock creates it empty and never writes it: anything in it is not ours.
                if e.stat(follow_symlinks=False).st_size != 0:
                    return f"its {LOCK_FILE} is not empty, so it is not the lock file `adx calibrate` leaves"
            elif rel not in listed:
                return f"it holds files that are not part of the bundle ({rel})"
            else:
                found.append((rel, Path(e.path)))
        return None

    return found, walk(path, "")


def is_bundle_folder(path: Path) -> str | None:
    """None if ``path`` is a bundle this tool wrote, unchanged, so ``--overwrite`` may delete it;
    else the reason it is not, naming the first path that is not export's.

    Every entry of the folder tree (recursively, ``engines/`` too) must be the manifest, the empty
    lock file, or a file its ``files`` lists with the recorded sha256; no links, no other folders.
    A file that is listed but changed is the user's now, and is not deleted either. Listed files
    that are missing are no obstacle: replacing them deletes nothing. Names are checked before
    anything is hashed, so a large folder that is not a bundle is refused quickly."""
    listed, reason = _manifest_listing(path)
    if reason is not None:
        return reason
    found, reason = _unexpected_in_tree(path, listed)
    if reason is not None:
        return reason
    for rel, file in found:
        actual = sha256_file(file)
        if actual != listed[rel]:
            return (f"{rel} changed since export (sha256 {actual[:12]}..., the manifest records "
                    f"{listed[rel][:12]}...)")
    return None


def check_replaceable(dest: str | Path, overwrite: bool, *,
                      replaceable: Callable[[Path], str | None] = is_bundle_folder, what: str = "bundle") -> None:
    """Refuse an existing ``dest`` unless ``overwrite`` and ``replaceable(dest)`` says it is a
    ``what`` this tool wrote (it returns None, or the reason it is not; see :func:`atomic_dir`)."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return
    if not overwrite:
        raise BundleError(f"{str(dest)!r} already exists; choose another path or pass --overwrite")
    if dest.is_symlink() or not dest.is_dir():
        raise BundleError(f"{str(dest)!r} exists and is not a folder; --overwrite replaces only a {what} folder. "
                          "Choose another path or remove it yourself.")
    reason = replaceable(dest)
    if reason is not None:
        raise BundleError(f"refusing to overwrite {str(dest)!r}: it is not a {what} ({reason}); --overwrite replaces "
                          f"only a {what} this tool wrote, unchanged, and never deletes anything else. Remove it "
                          "yourself or choose another --out.")
