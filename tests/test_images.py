"""Image decoding: every accepted kind lands as the same 8-bit RGB; bad files are refused by name."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adx_runtime.errors import ImageDecodeError
from adx_runtime.images import decode_image, decode_mask
from adx_runtime.preprocess import PreprocessConfig, load_image, preprocess_image, preprocess_mask

GREY = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5  # values 0..235, distinct


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_grayscale_is_replicated_to_rgb(tmp_path: Path) -> None:
    out = np.asarray(decode_image(save(Image.fromarray(GREY, "L"), tmp_path / "g.png")))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], GREY)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey16 = GREY.astype(np.uint16) * 257  # exact 16-bit versions of the 8-bit values
    grey16[0, 0] = 65535
    path = save(Image.fromarray(grey16), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(decode_image(path))[..., 0]
    expected = GREY.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(out, expected)


def test_rgba_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    out = np.asarray(decode_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (200, 100, 50)


def test_palette_png(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (255, 0, 0)
    rgb[2:] = (0, 0, 255)
    pal = Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    out = np.asarray(decode_image(save(pal, tmp_path / "p.png")))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 3]) == (0, 0, 255)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_other_formats(tmp_path: Path, fmt: str, suffix: str) -> None:
    rgb = np.full((8, 8, 3), (10, 120, 240), np.uint8)
    out = np.asarray(decode_image(save(Image.fromarray(rgb), tmp_path / f"x{suffix}", format=fmt)))
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out[4, 4], (10, 120, 240), atol=4)  # JPEG is lossy


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (6, 3), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(save(img, tmp_path / "r.jpg", exif=exif.tobytes(), quality=100))
    assert out.size == (3, 6)
    arr = np.asarray(out).sum(axis=2)
    assert np.unravel_index(arr.argmax(), arr.shape) == (0, 2)  # marker moved to the top-right


def test_bytes_input() -> None:
    buf = io.BytesIO()
    Image.fromarray(GREY, "L").save(buf, format="PNG")
    assert decode_image(buf.getvalue()).size == (8, 6)


@pytest.mark.parametrize("name,content,reason", [
    ("text.png", b"not an image at all", "not a recognised image"),
    ("empty.png", b"", "empty"),
])
def test_non_images_are_refused_by_name(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image(path)
    assert info.value.path == str(path)


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    good = save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ImageDecodeError, match="truncated or corrupt") as info:
        decode_image(cut)
    assert "cut.png" in str(info.value)


def test_corrupt_jpeg_body_is_refused(tmp_path: Path) -> None:
    data = bytearray(save(Image.new("RGB", (32, 32), (1, 2, 3)), tmp_path / "c.jpg").read_bytes())
    data[len(data) // 2 :] = b"\x00" * (len(data) - len(data) // 2)
    (tmp_path / "c.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match="corrupt JPEG data"):
        decode_image(tmp_path / "c.jpg")


def test_oversized_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (300, 200)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="60,000 pixels, above the limit of 50,000"):
        decode_image(path, max_pixels=50_000)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="does not exist"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match="is a folder"):
        decode_image(tmp_path)


def test_mask_decoding_treats_any_nonzero_as_anomalous(tmp_path: Path) -> None:
    m = np.zeros((4, 4), np.uint8)
    m[1, 2] = 1
    m[3, 3] = 255
    out = decode_mask(save(Image.fromarray(m, "L"), tmp_path / "m.png"))
    assert out.dtype == bool and out.sum() == 2 and out[1, 2] and out[3, 3]


# ---------------------------------------------------------------------------------- preprocessing
def test_normalisation_values() -> None:
    cfg = PreprocessConfig(resize=(8, 8), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    img = Image.new("RGB", (8, 8), (255, 0, 51))
    x = preprocess_image(img, cfg)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, -1.0, 0.2], rtol=1e-6)


def test_resize_and_centre_crop_geometry() -> None:
    cfg = PreprocessConfig(resize=(20, 30), center_crop=(10, 10), interpolation="nearest")
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[5:15, 10:20] = 255  # the centre 10x10 block
    x = preprocess_image(Image.fromarray(arr), cfg)
    assert x.shape == (3, 10, 10)
    assert np.all(x[0] == x[0, 0, 0])  # the crop is exactly the uniform white centre
    mask = preprocess_mask(arr[..., 0] > 0, cfg)
    assert mask.shape == (10, 10) and mask.all()


def test_config_round_trips_through_the_manifest_form() -> None:
    cfg = PreprocessConfig(resize=(256, 256), interpolation="bicubic", center_crop=(224, 224), mean=(0.5,) * 3,
                           std=(0.5,) * 3)
    d = cfg.to_dict()
    assert d["input_size"] == [224, 224]
    assert PreprocessConfig.from_dict(d) == cfg


def test_bad_config_is_refused() -> None:
    from adx_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="valid:"):
        PreprocessConfig(resize=(8, 8), interpolation="spline")
    with pytest.raises(ConfigError, match="must fit inside"):
        PreprocessConfig(resize=(8, 8), center_crop=(16, 16))


def test_grayscale_rgba_and_16bit_score_like_their_rgb_version(tmp_path: Path) -> None:
    """The same picture in four encodings preprocesses to the same tensor."""
    grey = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    rgb = save(Image.fromarray(np.stack([grey] * 3, -1)), tmp_path / "rgb.png")
    l8 = save(Image.fromarray(grey, "L"), tmp_path / "l8.png")
    rgba = save(Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 128)]), "RGBA"), tmp_path / "rgba.png")
    l16 = save(Image.fromarray(grey.astype(np.uint16) * 257), tmp_path / "l16.png")
    cfg = PreprocessConfig(resize=(32, 32))
    ref = load_image(rgb, cfg)
    for p in (l8, rgba, l16):
        np.testing.assert_array_equal(load_image(p, cfg), ref)


# ---------------------------------------------------------------------------------- forged and odd files
def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR declares ``width x height`` (the CRC is recomputed)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")


def test_forged_png_header_is_refused_before_decoding(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "forged.png"
    path.write_bytes(_png_with_size(1, 99_000_000))
    assert path.stat().st_size < 80
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="1x99000000 pixels: a side above 100,000 or an aspect ratio"):
        decode_image(path)
    assert tracemalloc.get_traced_memory()[1] < 10_000_000  # nothing the size of the image was allocated
    tracemalloc.stop()
    path.write_bytes(_png_with_size(5000, 5000))
    with pytest.raises(ImageDecodeError, match="cannot be compressed into the file's"):
        decode_image(path)


def test_adexport_pixel_limit_speaks_before_pillows(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_size(20_000, 20_000))  # 400 MP: above Pillow's own 2 x 89 MP error limit
    with pytest.raises(ImageDecodeError, match="400,000,000 pixels, above the limit of 100,000,000"):
        decode_image(path)


def test_jpeg_with_a_patched_size_is_refused(tmp_path: Path) -> None:
    data = bytearray(save(Image.new("RGB", (32, 32), (10, 120, 240)), tmp_path / "s.jpg").read_bytes())
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = (2000).to_bytes(2, "big") * 2
    (tmp_path / "s.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match="more than a sequential JPEG of .* bytes can hold"):
        decode_image(tmp_path / "s.jpg")


def test_float_tiff_with_nan_is_refused(tmp_path: Path) -> None:
    arr = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    arr[2, 3] = np.nan
    arr[4, 4] = np.inf
    path = save(Image.fromarray(arr, "F"), tmp_path / "f.tif")
    with pytest.raises(ImageDecodeError, match="2 NaN or infinite pixels"):
        decode_image(path)


def test_multi_frame_tiff_is_scored_on_the_first_frame_with_a_note(tmp_path: Path) -> None:
    first, second = Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("RGB", (8, 8), (0, 200, 0))
    path = tmp_path / "pages.tif"
    first.save(path, save_all=True, append_images=[second])
    out = decode_image(path)
    assert tuple(np.asarray(out)[0, 0]) == (200, 0, 0)
    assert out.info["adx_note"] == "the file holds 2 frames (pages); scored the first"


def test_special_files_say_what_they_are(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dev.png").symlink_to("/dev/null")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "dirlink.png").symlink_to(tmp_path)
    Image.new("P", (4, 4)).save(tmp_path / "x.gif")
    expected = {"pipe.png": "is a FIFO .named pipe., not an image file",
                "dev.png": "is a character device .through a symbolic link to '/dev/null'.",
                "dangling.png": "is a broken symbolic link",
                "dirlink.png": "is a symbolic link to a folder",
                "x.gif": "unsupported image format 'GIF'"}
    for name, reason in expected.items():
        with pytest.raises(ImageDecodeError, match=reason):
            decode_image(tmp_path / name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_permission_denied_not_corrupt(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
    path.chmod(0)
    with pytest.raises(ImageDecodeError, match="permission denied"):
        decode_image(path)


def _noise_jpeg(tmp_path: Path, name: str = "n.jpg", size=(96, 64), **kw) -> bytes:
    arr = np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return save(Image.fromarray(arr), tmp_path / name, **kw).read_bytes()


@pytest.mark.parametrize("damage", ["zeroed_200_mid", "zeroed_20_early", "cut_with_eoi", "patched_size_small"])
def test_jpeg_with_damaged_coded_data_is_refused(tmp_path: Path, damage: str) -> None:
    """libjpeg conceals these (grey fill, no error); adexport walks the coded data itself."""
    data = bytearray(_noise_jpeg(tmp_path))
    if damage == "zeroed_200_mid":
        m = len(data) // 2
        data[m : m + 200] = b"\x00" * 200
    elif damage == "zeroed_20_early":
        m = len(data) // 5
        data[m : m + 20] = b"\x00" * 20
    elif damage == "cut_with_eoi":
        data = data[: len(data) // 2] + b"\xff\xd9"
    else:
        i = data.find(b"\xff\xc0")
        data[i + 5 : i + 9] = (80).to_bytes(2, "big") + (120).to_bytes(2, "big")  # 96x64 -> 120x80
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    Image.open(tmp_path / "bad.jpg").load()  # Pillow alone accepts it
    with pytest.raises(ImageDecodeError, match="corrupt JPEG data: (premature end|corrupt data)"):
        decode_image(tmp_path / "bad.jpg")


@pytest.mark.parametrize("kw", [{}, {"quality": 100}, {"quality": 5}, {"subsampling": 0}, {"subsampling": 1},
                                {"optimize": True}, {"restart_marker_blocks": 3}, {"progressive": True}])
@pytest.mark.parametrize("mode,size", [("RGB", (96, 64)), ("L", (37, 23)), ("CMYK", (17, 9)), ("RGB", (1, 1))])
def test_valid_jpegs_pass_the_coded_data_check(tmp_path: Path, kw: dict, mode: str, size) -> None:
    arr = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = save(Image.fromarray(arr).convert(mode), tmp_path / "ok.jpg", **kw)
    assert decode_image(path).size == size


def test_permission_denied_is_not_called_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file, so the refusal is made by the open() the module calls."""
    import adx_runtime.images as images

    path = save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(ImageDecodeError, match="permission denied .cannot read the file.$"):
        decode_image(path)
