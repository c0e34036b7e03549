"""Decoding image files into 8-bit RGB, the one way every part of adexport does it.

What is accepted: PNG (8- and 16-bit, grayscale, RGB, RGBA, palette), JPEG, BMP and TIFF. EXIF
orientation is applied. Alpha is dropped (the colour values are kept as they are, not composited),
16-bit samples are scaled to 8 bits by rounding ``v / 257``.

What is refused, each with the file's name and the reason: a file that is not an image, a
truncated or corrupt file, and an image with more pixels than ``max_pixels`` (a decompression
bomb guard, 100 megapixels by default).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from adx_runtime.errors import ImageDecodeError

ImageSource = Union[str, os.PathLike, bytes]

#: Default limit on width * height; larger images are refused rather than decoded.
DEFAULT_MAX_PIXELS = 100_000_000

#: File suffixes picked up when a folder is scanned for images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

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


def decode_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file (path or bytes) into an 8-bit RGB :class:`PIL.Image.Image`.

    Raises:
        ImageDecodeError: not an image, truncated/corrupt, unsupported format or too large.
    """
    name = _describe(source)
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.exists():
            raise ImageDecodeError(name, "file does not exist")
        if path.is_dir():
            raise ImageDecodeError(name, "is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageDecodeError(name, "file is empty (0 bytes)")
    # A truncated file must fail, not decode into a half-grey image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that; our own check
            # below decides, so the warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
            with stream:
                img = Image.open(stream)
                if img.format not in _ACCEPTED_FORMATS:
                    raise ImageDecodeError(
                        name,
                        f"unsupported image format {img.format!r}; accepted: PNG, JPEG, BMP, TIFF",
                    )
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        name,
                        f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}; "
                        "downscale it or raise max_pixels",
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not a recognised image file (PNG, JPEG, BMP or TIFF)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(name, f"truncated or corrupt image data ({exc})") from None


def decode_mask(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ground-truth mask into a boolean array ``(H, W)``: any non-zero pixel is anomalous."""
    img = decode_image(source, max_pixels=max_pixels)
    return np.asarray(img.convert("L")) > 0
