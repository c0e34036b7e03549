"""Reading ``.npz`` scoring data (memory banks, Gaussian statistics, SPADE's gallery maps) with every
declared size checked before anything is allocated.

``np.load`` trusts an ``.npy`` member's header: it allocates ``prod(shape) * itemsize`` bytes first and
reads afterwards, so a member of a few bytes that declares shape ``(4e6, 1e5)`` asks for 1.46 TiB.
Digests do not help: whoever writes such a file can record its sha256 too. So :func:`read_npz` reads
each member's header itself (``numpy.lib.format``), and allocates only when the declared array is
exactly the bytes the member holds, and the member holds no more than its compressed bytes can
expand to. It is the one way the runtime reads an npz file.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adx_runtime.errors import BundleError

#: Deflate cannot expand data more than about 1032:1; a member that claims more is lying about its
#: size. (Export writes ``np.savez``: stored members, whose two sizes are equal.)
MAX_DEFLATE_RATIO = 1100
#: Bundles hold numbers: bool, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"


def _refuse(path: Path, what: str, problem: str) -> BundleError:
    return BundleError(f"{what} {str(path)!r}: {problem}; it is corrupt or was not written by adexport. "
                       "Re-export the bundle.")


def _check_member(path: Path, what: str, key: str, info: zipfile.ZipInfo, file_size: int) -> None:
    """Refuse a member whose declared sizes cannot be true of this file, before it is opened."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _refuse(path, what, f"array {key!r} uses zip compression method {info.compress_type}; "
                                  "bundles use none (np.savez) or deflate")
    if info.compress_size > file_size:
        raise _refuse(path, what, f"array {key!r} claims {info.compress_size:,} stored bytes in a file of "
                                  f"{file_size:,}")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise _refuse(path, what, f"array {key!r} is stored uncompressed in {info.compress_size:,} bytes but the "
                                  f"zip says it holds {info.file_size:,} bytes")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise _refuse(path, what, f"array {key!r} claims {info.file_size:,} bytes from {info.compress_size:,} "
                                  f"compressed bytes, more than deflate can expand ({MAX_DEFLATE_RATIO}:1)")


def _check_header(path: Path, what: str, key: str, member: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Read the ``.npy`` header of ``info`` and refuse a dtype or shape that is not what its bytes hold."""
    with member.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _refuse(path, what, f"array {key!r} is in .npy format version {version}; bundles use 1.0 or 2.0")
        data_bytes = info.file_size - f.tell()
    if dtype.hasobject:
        # np.load(allow_pickle=False) refuses these too, but with a message that blamed the manifest.
        raise BundleError(
            f"{what} {str(path)!r}: array {key!r} holds pickled Python objects (dtype {dtype}), which adexport "
            "bundles never contain and which could run code when loaded; refusing it. Re-export the bundle."
        )
    if dtype.kind not in NUMERIC_KINDS:
        raise _refuse(path, what, f"array {key!r} has dtype {dtype}; bundles hold numeric arrays")
    if any(d < 0 for d in shape):
        raise _refuse(path, what, f"array {key!r} declares the negative shape {shape}")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, whatever the header says
    if declared != data_bytes:
        raise _refuse(path, what, f"array {key!r} declares shape {shape} {dtype} ({declared:,} bytes) but holds "
                                  f"{data_bytes:,} bytes")


def read_npz(path: str | Path, keys: Sequence[str], *, what: str = "npz file") -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the npz file ``path``, each checked before it is allocated.

    Refuses (:class:`BundleError`, naming the file and the array): a file that is not a zip, a
    missing array, a member whose zip sizes cannot be true, an object (pickled) or non-numeric
    dtype, and a header whose shape needs more or fewer bytes than the member holds. Only then is
    the array read, from the same open file."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _refuse(path, what, f"it is not a readable npz (zip) archive ({exc})") from None
    out: dict[str, np.ndarray] = {}
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        for key in keys:
            info = members.get(f"{key}.npy")
            if info is None:
                names = ", ".join(sorted(n.removesuffix(".npy") for n in members)) or "none"
                raise _refuse(path, what, f"it has no array {key!r} (has: {names})")
            _check_member(path, what, key, info, file_size)
            try:
                _check_header(path, what, key, archive, info)
                with archive.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
            except BundleError:
                raise
            except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, NotImplementedError) as exc:
                # A malformed header, a short member, a bad CRC, an encrypted member: one line.
                raise _refuse(path, what, f"array {key!r} cannot be read ({exc})") from None
    return out
