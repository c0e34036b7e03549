"""The bundle on disk: a folder with ``manifest.json``, ``model.onnx`` and scoring data.

Reading verifies the format, the schema version, the types of the fields the runtime reads, the
digest of the manifest's protected sections and the sha256 of every listed file before anything is
scored. Every file the runtime opens is reached through :func:`bundle_file`, which refuses a name
that is not listed in ``files``, lies outside the folder or fails its checksum.

Writing is atomic: a bundle is assembled in a hidden sibling folder and renamed into place, and a
manifest is replaced with ``os.replace``; a failure leaves nothing that looks like a bundle.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from adx_runtime.errors import BundleError

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks instead
    fcntl = None  # type: ignore[assignment]

BUNDLE_FORMAT = "adexport-bundle"
#: Version 2 (this release): ``scoring.kind`` names the scorer; one typed ``postprocess`` section;
#: ``input.colour`` may be L (1 channel). Version 1 bundles (adexport 0.1.0) are read by upgrading
#: their manifest in memory (:func:`upgrade_v1`); the files on disk are not touched.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
#: Held (``flock``) around every read-modify-write of the manifest (``adx calibrate``).
LOCK_FILE = ".manifest.lock"
#: How long a second writer waits for the lock before giving up, seconds.
LOCK_TIMEOUT_S = 30.0

#: A real manifest is tens of kilobytes (calibration history grows it slowly); anything near this
#: is not one, and is refused before it is read into memory.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: The manifest sections that decide scores. Their digests are recorded in ``integrity`` at export
#: and checked at every load: a hand edit of any of them is refused. ``calibration`` (thresholds) is
#: deliberately not among them: ``adx calibrate`` changes it and records its own history.
PROTECTED_SECTIONS = ("input", "graph", "scoring", "postprocess", "files")
#: Protected too when present: a TensorRT bundle's engine folder, name prefix, profile and fp16 flag.
OPTIONAL_PROTECTED_SECTIONS = ("tensorrt",)

#: What each schema-1 method scored with, and how its image score was made.
_V1_METHODS = {
    "patchcore": ("knn", "scorer"),
    "spade": ("gallery", "scorer"),
    "padim": ("gaussian", "max"),
}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


# ------------------------------------------------------------------------------------ integrity
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


def _check_integrity(manifest: dict[str, Any], path: Path) -> None:
    version = manifest["schema_version"]
    integrity = manifest.get("integrity")
    if integrity is None:
        if version == 1:
            # adexport 0.1.0 (schema 1) wrote no digest. Those bundles must keep loading (the
            # fixtures in tests/fixtures/schema1_* prove it); they are upgraded in memory and their
            # files are still checksummed, but their manifest fields are not protected.
            return
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


# ------------------------------------------------------------------------------------ validation
def _is_number(value: Any) -> bool:
    """A finite number that float32 (the scores' type) can hold."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) < 3.0e38)


def _require(ok: bool, path: Path, field: str, value: Any, expected: str) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise BundleError(f"{str(path)!r}: {field} must be {expected}, got {shown}; re-export the bundle")


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
        _require(isinstance(entry.get("sha256"), str) and bool(_SHA256.match(entry["sha256"])), path,
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


def read_manifest(bundle_dir: str | Path, *, export_in_progress: bool = False) -> dict[str, Any]:
    """Parse the manifest and check its format, schema version, field types, the digest of its
    protected sections and that the export's parity check completed (no checksums; see verify).

    ``export_in_progress`` is for export's own parity check, which loads the bundle before its
    parity section exists; nothing else may pass it.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} does not exist or is not a folder")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{str(root)!r} is not a bundle: it has no {MANIFEST}. Create one with `adx export`."
        )
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{str(path)!r} is {size:,} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES:,}); "
                          "it is not an adexport manifest: re-export the bundle")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_parse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{str(path)!r} is not valid JSON ({exc}); re-export the bundle") from None
    except RecursionError:
        raise BundleError(f"{str(path)!r} nests too deeply to be an adexport manifest; re-export the bundle") from None
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
    _check_integrity(manifest, path)  # on the manifest as written, before the in-memory upgrade
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


def upgrade_v1(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    """A schema-1 manifest -> the schema-2 form, in memory. Schema 1 dispatched on the method name
    and kept ``blur_sigma`` and ``patch_grid`` in ``scoring``; everything else reads as it was."""
    method = manifest.get("method")
    if not isinstance(method, str) or method not in _V1_METHODS:
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


# ------------------------------------------------------------------------------------ files
def _confined(root: Path, rel: Any, what: str) -> Path:
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


#: (real path, size, mtime_ns, inode) -> sha256: a file verified at load is not hashed again when a
#: scorer opens it a moment later; any change to the file changes the key.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def _checked_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = sha256_file(path)
        if len(_VERIFIED) > 256:
            _VERIFIED.clear()
        _VERIFIED[key] = digest
    return digest


def bundle_file(bundle_dir: str | Path, manifest: dict[str, Any], name: Any, *, what: str = "file") -> Path:
    """The verified path of the bundle file ``name``: the one way the runtime opens a bundle file.

    Refuses a name that is absolute, contains ``..``, leads (through a symlink) outside the folder,
    is not listed in ``files``, is not a regular file, or whose sha256 differs from the manifest's.
    """
    root = Path(bundle_dir)
    path = _confined(root, name, what)
    entries = {e.get("path"): e for e in manifest["files"] if isinstance(e, dict)}
    entry = entries.get(name)
    if entry is None:
        raise BundleError(
            f"bundle {str(root)!r}: {what} {name!r} is not listed in the manifest's files, so it has no checksum; "
            "refusing to load an unverified file. Re-export the bundle."
        )
    if not path.is_file():
        raise BundleError(f"bundle {str(root)!r} is missing {name!r}, which its manifest lists; re-export it")
    actual = _checked_sha256(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{name!r} in bundle {str(root)!r} failed its checksum: manifest sha256 {str(entry['sha256'])[:16]}..., "
            f"file sha256 {actual[:16]}.... The file was modified or corrupted after export; "
            "copy the bundle again or re-export it."
        )
    return path


def bundle_folder(bundle_dir: str | Path, name: Any, *, what: str = "folder") -> Path:
    """A sub-folder of the bundle (the TensorRT engine cache), confined like :func:`bundle_file`."""
    path = _confined(Path(bundle_dir), name, what)
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


def load_manifest(bundle_dir: str | Path, *, verify: bool = True, export_in_progress: bool = False) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir, export_in_progress=export_in_progress)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


# ------------------------------------------------------------------------------------ writing
def current_umask() -> int:
    """The process umask (Linux reads it without changing it; elsewhere set-and-restore)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it over ``path`` (readers see old or new, never half).

    The new file keeps the mode of the one it replaces, or gets what the umask allows for a new
    file (``mkstemp`` would leave it 0600). NaN and infinity are refused: they are not JSON.
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def manifest_lock(bundle_dir: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the bundle's ``.manifest.lock`` around a read-modify-write of
    the manifest; a second writer waits up to ``timeout`` seconds (default :data:`LOCK_TIMEOUT_S`),
    then fails with a message instead of overwriting the first one's change."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    path = Path(bundle_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    except OSError as exc:
        raise BundleError(f"cannot create the lock file {str(path)!r} ({exc.strerror}); the bundle folder must be "
                          "writable to change its manifest") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    import msvcrt  # noqa: PLC0415

                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLK", -1)):
                    raise
                if time.monotonic() >= deadline:
                    raise BundleError(
                        f"another process is changing the manifest of {str(bundle_dir)!r} (it holds {LOCK_FILE}); "
                        f"waited {timeout:g} s. Try again when it has finished."
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ------------------------------------------------------------------------------------ folders
def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process there; never clean up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)\.[^.]+\.partial$")


def clean_stale_partials(dest: Path) -> list[Path]:
    """Remove ``.NAME.pidPID.XXXX.partial`` siblings of ``dest`` whose writing process is gone
    (killed during an export or a save); returns what was removed."""
    removed = []
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.iterdir():
        m = _PARTIAL.match(p.name)
        if m and m["name"] == dest.name and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


#: What a folder may hold to count as a bundle that ``--overwrite`` may replace.
def is_bundle_folder(path: Path) -> str | None:
    """None if ``path`` is a bundle that may be replaced, else why not."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"it has no {MANIFEST}"
    try:
        data = json.loads(manifest.read_bytes()[:MAX_MANIFEST_BYTES].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return f"its {MANIFEST} is not valid JSON"
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        return f"its {MANIFEST} is not an adexport manifest"
    files = data.get("files") if isinstance(data.get("files"), list) else []
    known = {MANIFEST, LOCK_FILE, "engines"} | {str(e.get("path", "")).split("/")[0] for e in files if isinstance(e, dict)}
    extra = sorted(p.name for p in path.iterdir() if p.name not in known)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"it holds files that are not part of the bundle ({shown})"
    return None


def check_replaceable(dest: str | Path, overwrite: bool, *,
                      replaceable: Callable[[Path], str | None] = is_bundle_folder, what: str = "bundle") -> None:
    """Refuse an existing ``dest`` unless ``overwrite`` and it is a ``what`` (see :func:`atomic_dir`)."""
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
        raise BundleError(f"refusing to overwrite {str(dest)!r}: it is not a {what} ({reason}); --overwrite "
                          f"replaces only a {what}. Choose another path or move those files away first.")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, overwrite: bool = False,
               replaceable: Callable[[Path], str | None] = is_bundle_folder, what: str = "bundle") -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``dest``; on success it is renamed to ``dest``.

    With ``overwrite`` an existing ``dest`` is replaced only if ``replaceable(dest)`` says it is a
    ``what`` (it returns None, or the reason it is not); anything else is refused. The old folder is
    moved to ``.NAME.old`` until the new one is in place, then removed. On any exception the
    temporary folder is removed and ``dest`` is left as it was. The temporary folder's name records
    this process id, so one left by a killed process is removed at the next write to ``dest``.
    """
    dest = Path(dest)
    check_replaceable(dest, overwrite, replaceable=replaceable, what=what)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pid{os.getpid()}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        if dest.exists():
            # Swap: move the old one aside first so a crash never leaves no bundle at all.
            old = dest.with_name(f".{dest.name}.old")
            if old.exists() or old.is_symlink():
                if old.is_symlink() or not old.is_dir() or replaceable(old) is not None:
                    raise BundleError(f"{str(old)!r} is in the way of replacing {str(dest)!r} and is not an old "
                                      f"{what}; move it away and run again")
                shutil.rmtree(old)
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)  # put the old one back: a failure here loses nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
