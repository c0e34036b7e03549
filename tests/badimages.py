"""A corpus of awkward and broken image files, each with the outcome adexport must give it.

``write_corpus(folder)`` writes the files and returns ``{file name: expected}``, where ``expected``
is ``None`` for a file that must be scored, or a substring of the error its result line must
carry. Everything is generated (seeded), tiny, and takes well under a second.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OK = None


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width x height`` (CRCs correct, data far too short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_corpus(folder: Path, size: int = 48) -> dict[str, str | None]:
    """Write the corpus into ``folder``; returns file name -> expected outcome (None: scored)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
    files: dict[str, tuple[bytes, str | None]] = {}

    files["zero_bytes.png"] = (b"", "file is empty (0 bytes)")
    files["truncated.png"] = (_encoded(rgb, "PNG")[:2000], "truncated or corrupt")
    files["random_bytes.png"] = (rng.integers(0, 256, 1000, dtype=np.uint8).tobytes(), "not a recognised image file")
    files["wrong_extension.jpg"] = (_encoded(rgb, "PNG"), OK)  # decoded by content, not by name
    files["grey16.png"] = (_encoded(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), OK)
    files["la.png"] = (_encoded(Image.fromarray(np.dstack([grey, grey]), "LA"), "PNG"), OK)
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files["palette_transparency.png"] = (_encoded(pal, "PNG", transparency=0), OK)
    files["one_bit.png"] = (_encoded(Image.fromarray(grey > 127), "PNG"), OK)
    files["cmyk.jpg"] = (_encoded(rgb.convert("CMYK"), "JPEG"), OK)
    floats = (grey / 255.0).astype(np.float32)
    files["float.tif"] = (_encoded(Image.fromarray(floats, "F"), "TIFF"), OK)
    bad_floats = floats.copy()
    bad_floats[3, 4] = np.nan
    files["float_nan.tif"] = (_encoded(Image.fromarray(bad_floats, "F"), "TIFF"), "NaN or infinite pixels")
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        files[f"exif_orientation_{orientation}.jpg"] = (_encoded(rgb, "JPEG", exif=exif.tobytes()), OK)
    files["one_pixel.png"] = (_encoded(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), OK)
    files["bomb_400mp.png"] = (_png_with_size(20_000, 20_000), "above the limit of 100,000,000")
    files["forged_1x99000000.png"] = (_png_with_size(1, 99_000_000), "aspect ratio")
    files["forged_size.png"] = (_png_with_size(5_000, 5_000), "cannot be compressed into the file's")
    jpeg = bytearray(_encoded(Image.new("RGB", (32, 32), (10, 120, 240)), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (2000).to_bytes(2, "big") * 2
    files["forged_size.jpg"] = (bytes(jpeg), "more than a sequential JPEG")

    noise = _encoded(rgb, "JPEG")
    zeroed = bytearray(noise)
    zeroed[len(zeroed) // 2 : len(zeroed) // 2 + 200] = b"\x00" * 200
    files["zeroed_mid_stream.jpg"] = (bytes(zeroed), "corrupt JPEG data")
    files["cut_with_eoi.jpg"] = (noise[: len(noise) // 2] + b"\xff\xd9", "corrupt JPEG data: premature end")

    pages = io.BytesIO()
    rgb.save(pages, format="TIFF", save_all=True, append_images=[Image.new("RGB", (size, size))])
    files["pages.tif"] = (pages.getvalue(), OK)
    apng = io.BytesIO()
    rgb.save(apng, format="PNG", save_all=True, append_images=[Image.new("RGB", (size, size))])
    files["animated.png"] = (apng.getvalue(), OK)

    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


#: Files of the corpus that are scored with a note (and the note).
NOTES = {name: "the file holds 2 frames (pages); scored the first" for name in ("pages.tif", "animated.png")}
