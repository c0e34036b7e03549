"""Atomic writes: a JSON file replaced with ``os.replace``, and a folder assembled in a hidden
sibling and renamed into place (:func:`atomic_dir`), so a failure leaves nothing that looks like a
bundle or a fitted model. Used by export, ``adx calibrate``, ``adx train`` and the Triton writer."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from adx_runtime.bundle.overwrite import check_replaceable, is_bundle_folder
from adx_runtime.errors import BundleError


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

#: Written by :func:`atomic_dir` into every temporary folder it makes, naming the writing process
#: and the destination; removed just before the rename, so a finished bundle never holds it. A
#: folder's name alone proves nothing (a user's folder, or one copied from another machine, can look
#: like a partial export), so :func:`clean_stale_partials` removes only folders that carry it.
PARTIAL_MARKER = ".adx-partial"


def _partial_marker(pid: int, dest: Path) -> str:
    return json.dumps({"format": "adexport-partial", "pid": pid, "dest": dest.name}, sort_keys=True)


def _made_by_atomic_dir(folder: Path, pid: int, dest: Path) -> bool:
    """Whether ``folder`` holds the marker :func:`atomic_dir` wrote for process ``pid`` and ``dest``."""
    marker = folder / PARTIAL_MARKER
    try:
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return False
        return marker.read_text(encoding="utf-8") == _partial_marker(pid, dest)
    except (OSError, UnicodeDecodeError):
        return False


def clean_stale_partials(dest: Path) -> list[Path]:
    """Remove ``.NAME.pidPID.XXXX.partial`` siblings of ``dest`` that :func:`atomic_dir` made (they
    carry its marker) and whose writing process is gone (killed during an export or a save);
    returns what was removed. Anything else with such a name is left alone."""
    removed: list[Path] = []
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.iterdir():
        m = _PARTIAL.match(p.name)
        if (m and m["name"] == dest.name and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m["pid"]))
                and _made_by_atomic_dir(p, int(m["pid"]), dest)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, overwrite: bool = False,
               replaceable: Callable[[Path], str | None] = is_bundle_folder, what: str = "bundle") -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``dest``; on success it is renamed to ``dest``.

    With ``overwrite`` an existing ``dest`` is replaced only if ``replaceable(dest)`` says it is a
    ``what`` this tool wrote (it returns None, or the reason it is not); anything else is refused.
    The check runs again just before the swap, so a file added to ``dest`` while the body ran is
    not deleted with it (nor is a ``dest`` that appeared meanwhile replaced without ``overwrite``).
    The old folder is moved to ``.NAME.old`` until the new one is in place, then removed. On any
    exception the temporary folder is removed and ``dest`` is left as it was. The temporary folder's
    name records this process id and it holds :data:`PARTIAL_MARKER` (removed before the rename), so
    one left by a killed process is removed at the next write to ``dest``, and nothing else is.
    """
    dest = Path(dest)
    check_replaceable(dest, overwrite, replaceable=replaceable, what=what)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pid{os.getpid()}.", suffix=".partial", dir=dest.parent))
    try:
        (tmp / PARTIAL_MARKER).write_text(_partial_marker(os.getpid(), dest), encoding="utf-8")
        yield tmp
        (tmp / PARTIAL_MARKER).unlink(missing_ok=True)  # a finished bundle never holds it
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        # Again, now: the body may have run for minutes, and only what is verified now is deleted.
        check_replaceable(dest, overwrite, replaceable=replaceable, what=what)
        if dest.exists():
            # Swap: move the old one aside first so a crash never leaves no bundle at all.
            old = dest.with_name(f".{dest.name}.old")
            if old.exists() or old.is_symlink():
                reason = "it is not a folder" if old.is_symlink() or not old.is_dir() else replaceable(old)
                if reason is not None:
                    raise BundleError(f"{str(old)!r} is in the way of replacing {str(dest)!r} and is not an old "
                                      f"{what} ({reason}); move it away and run again")
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
