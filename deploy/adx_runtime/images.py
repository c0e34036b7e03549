"""Decoding image files into 8-bit RGB, the one way every part of adexport does it.

What is accepted: PNG (8- and 16-bit, grayscale, RGB, RGBA, palette), JPEG, BMP and TIFF. EXIF
orientation is applied. Alpha is dropped (the colour values are kept as they are, not composited),
16-bit samples are scaled to 8 bits by rounding ``v / 257``.

What is refused, each with the file's name and the reason: something that is not a readable
regular file (a folder, FIFO, device, broken link: each named as what it is), a file that is not
an image, a truncated or corrupt file, a float image with NaN or infinite pixels, and, from the
header before anything is decoded, an image with more pixels than ``max_pixels`` (a
decompression bomb guard, 100 megapixels by default), an absurd side or aspect ratio, or a
declared size that the file's bytes cannot hold.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from adx_runtime.errors import ImageDecodeError
from adx_runtime.jpegcheck import entropy_problem

ImageSource = Union[str, os.PathLike, bytes]

#: Default limit on width * height; larger images are refused rather than decoded.
DEFAULT_MAX_PIXELS = 100_000_000

#: A side longer than this, or a longer side more than MAX_ASPECT times the shorter, is refused
#: from the header: no camera makes it, and a forged header (1 x 99,000,000) makes it cheaply.
MAX_SIDE = 100_000
MAX_ASPECT = 1000
#: Deflate compresses at most about 1032:1, so a PNG declaring more raw pixel bytes than this
#: many times its file size cannot hold them.
PNG_MAX_RATIO = 1100
#: A sequential JPEG spends at least about 2 bits per 8x8 block of one component (256 px/byte for
#: grey); a file declaring more pixels than this per byte cannot hold them. Progressive JPEGs
#: (end-of-band runs) are exempt.
JPEG_MAX_PIXELS_PER_BYTE = 600

#: File suffixes picked up when a folder is scanned for images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Suffixes of image files adexport does not decode: a scanned folder still reports them (one
#: line each, with the reason) instead of skipping them silently.
OTHER_IMAGE_SUFFIXES = (".gif", ".webp", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".heic",
                        ".heif", ".avif", ".jxl", ".exr", ".hdr", ".dib", ".jfif", ".svg")
IMAGE_LIKE_SUFFIXES = IMAGE_SUFFIXES + OTHER_IMAGE_SUFFIXES

_ACCEPTED_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "MPO"}  # MPO: multi-picture JPEG from cameras


def _describe(source: ImageSource) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any accepted mode to 8-bit RGB without silently clipping 16-bit data."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if mode == "I" and arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0:
            arr8 = arr.astype(np.uint8)  # 8-bit data that Pillow widened to int32
        else:
            # 16-bit samples: map 0..65535 onto 0..255 (v / 257 is exact for 8-bit data widened).
            arr8 = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        arr8 = np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _classify_path(path: Path, name: str) -> int:
    """The file's size, or why it is not a readable regular file (what really happened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageDecodeError(name, f"is a broken symbolic link (to {os.readlink(path)!r}, which does not exist)") from None
        raise ImageDecodeError(name, "file does not exist") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied (cannot look at the file)") from None
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot be read ({exc.strerror})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if os.path.islink(path):
            raise ImageDecodeError(name, f"is a symbolic link to a folder ({os.readlink(path)!r}), not an image file; "
                                         "name the folder itself to score its images")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ImageDecodeError(name, "is a folder whose contents cannot be read (permission denied), not an image file")
        raise ImageDecodeError(name, "is a folder, not an image file")
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket"}
    for test, what in kinds.items():
        if test(mode):
            via = f" (through a symbolic link to {os.readlink(path)!r})" if os.path.islink(path) else ""
            raise ImageDecodeError(name, f"is {what}{via}, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageDecodeError(name, "is not a regular file")
    if st.st_size == 0:
        raise ImageDecodeError(name, "file is empty (0 bytes)")
    return st.st_size


def _open_header(stream: IO[bytes], name: str) -> Image.Image:
    """Open (header only) with the accepted formats' own plugins, without ``Image.open``'s
    decompression-bomb check: adexport's own limits below decide, with adexport's message."""
    Image.init()
    prefix = stream.read(16)
    for fmt in ("PNG", "JPEG", "BMP", "TIFF"):
        if fmt not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[fmt]
        stream.seek(0)
        if accept is not None and not accept(prefix):
            continue
        try:
            return factory(stream, name)
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # what Image.open does: not this format after all
    stream.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = Image.open(stream)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        raise ImageDecodeError(name, "not a recognised image file (PNG, JPEG, BMP or TIFF)") from None
    raise ImageDecodeError(name, f"unsupported image format {other.format!r}; accepted: PNG, JPEG, BMP, TIFF")


def _png_raw_bytes(img: Image.Image, w: int, h: int) -> int:
    bits = {"1": 1, "L": 8, "P": 8, "LA": 16, "RGB": 24, "RGBA": 32, "I;16": 16, "I;16B": 16, "I": 16}.get(img.mode, 8)
    bits = min(bits, 8) if img.mode == "P" else bits
    return h * (1 + (w * bits + 7) // 8)


def _jpeg_baseline(stream: IO[bytes]) -> bool:
    """Whether a JPEG is sequential (SOF0/SOF1): then every 8x8 block costs at least ~2 bits."""
    stream.seek(0)
    head = stream.read(1 << 16)
    for marker in (b"\xff\xc2", b"\xff\xc6", b"\xff\xca", b"\xff\xce"):  # progressive SOFs
        if marker in head:
            return False
    return True


def _check_declared_size(img: Image.Image, name: str, file_bytes: int, max_pixels: int, stream: IO[bytes]) -> None:
    """Refuse, from the header alone, images that are too large, absurdly shaped, or whose declared
    size cannot fit in the file."""
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError(name, f"header declares an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(
            name,
            f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}; downscale it or raise max_pixels",
        )
    if max(w, h) > MAX_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageDecodeError(name, f"header declares {w}x{h} pixels: a side above {MAX_SIDE:,} or an aspect ratio above "
                                     f"{MAX_ASPECT}:1 is not a camera image; refusing it (corrupt or forged header)")
    if img.format == "PNG":
        raw = _png_raw_bytes(img, w, h)
        if raw > PNG_MAX_RATIO * file_bytes:
            raise ImageDecodeError(name, f"header declares {w}x{h} pixels ({raw:,} bytes of pixel data), which cannot be "
                                         f"compressed into the file's {file_bytes:,} bytes (deflate's limit is about "
                                         "1032:1); corrupt or forged header")
    elif img.format in ("JPEG", "MPO") and _jpeg_baseline(stream):
        if w * h > JPEG_MAX_PIXELS_PER_BYTE * file_bytes:
            raise ImageDecodeError(name, f"header declares {w}x{h} pixels, more than a sequential JPEG of "
                                         f"{file_bytes:,} bytes can hold; corrupt or forged header")


def decode_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file (path or bytes) into an 8-bit RGB :class:`PIL.Image.Image`.

    A multi-frame file (TIFF pages, APNG) is decoded on its first frame; the returned image's
    ``info["adx_note"]`` says so.

    Raises:
        ImageDecodeError: not a readable regular file, not an image, truncated/corrupt, unsupported
            format, too large or absurdly shaped, or non-finite float pixels.
    """
    name = _describe(source)
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError(name, "file is empty (0 bytes)")
        file_bytes = len(source)
        stream: IO[bytes] = io.BytesIO(source)
    else:
        file_bytes = _classify_path(Path(source), name)
        try:
            stream = open(source, "rb")
        except PermissionError:
            raise ImageDecodeError(name, "permission denied (cannot read the file)") from None
        except OSError as exc:
            raise ImageDecodeError(name, f"cannot be opened ({exc.strerror})") from None
    # A truncated file must fail, not decode into a half-grey image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    note = None
    try:
        with stream, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = _open_header(stream, name)
            _check_declared_size(img, name, file_bytes, max_pixels, stream)
            if img.format in ("JPEG", "MPO"):
                # libjpeg conceals damaged coded data (grey fill) and Pillow drops its warnings.
                stream.seek(0)
                problem = entropy_problem(stream.read())
                if problem:
                    raise ImageDecodeError(name, f"corrupt JPEG data: {problem}")
            stream.seek(0)
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                note = f"the file holds {frames} frames (pages); scored the first"
            img.load()
            bad = [str(w.message) for w in caught
                   if any(k in str(w.message).lower() for k in ("corrupt", "truncat", "premature"))]
            if bad:
                raise ImageDecodeError(name, f"corrupt image data (the decoder reported: {bad[0]})")
            img = ImageOps.exif_transpose(img)
            if img.mode == "F":
                arr = np.asarray(img)
                if not np.isfinite(arr).all():
                    raise ImageDecodeError(name, f"float image holds {int((~np.isfinite(arr)).sum()):,} NaN or "
                                                 "infinite pixels; refusing it")
            out = _to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"image too large: {exc}") from None
    except MemoryError:
        raise ImageDecodeError(name, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as exc:
        raise ImageDecodeError(name, f"truncated or corrupt image data ({exc})") from None
    if note:
        out.info["adx_note"] = note
    return out


def decode_mask(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ground-truth mask into a boolean array ``(H, W)``: any non-zero pixel is anomalous."""
    img = decode_image(source, max_pixels=max_pixels)
    return np.asarray(img.convert("L")) > 0
