"""The manifest lock: one writer at a time changes a bundle's manifest (``adx calibrate``)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Iterator

from adx_runtime.bundle.atomic import current_umask
from adx_runtime.bundle.layout import LOCK_FILE, link_target
from adx_runtime.errors import BundleError

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks instead
    fcntl = None  # type: ignore[assignment]

#: How long a second writer waits for the lock before giving up, seconds.
LOCK_TIMEOUT_S = 30.0


@contextlib.contextmanager
def manifest_lock(bundle_dir: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the bundle's ``.manifest.lock`` around a read-modify-write of
    the manifest; a second writer waits up to ``timeout`` seconds (default :data:`LOCK_TIMEOUT_S`),
    then fails with a message instead of overwriting the first one's change."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    path = Path(bundle_dir) / LOCK_FILE
    # A symbolic link is refused, dangling or not: O_CREAT would follow it and create (or lock) a
    # file wherever it points, outside the bundle. The check names the problem; O_NOFOLLOW closes
    # the gap between it and the open (where the platform has it).
    if path.is_symlink():
        raise BundleError(f"the lock file {str(path)!r} is a symbolic link (to {link_target(path)!r}), which adexport "
                          "never makes; refusing to follow it out of the bundle. Remove the link and run again")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~current_umask())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"the lock file {str(path)!r} is a symbolic link, which adexport never makes; refusing "
                              "to follow it out of the bundle. Remove the link and run again") from None
        raise BundleError(f"cannot create the lock file {str(path)!r} ({exc.strerror}); the bundle folder must be "
                          "writable to change its manifest") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"the lock file {str(path)!r} is not a regular file (a pipe or device?); remove it and run "
                          "again")
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
