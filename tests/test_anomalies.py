"""Tests for adx_synth.anomalies: CutPaste, scar, colour jitter, Perlin masks, texture anomalies, previews."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adx_runtime.errors import ConfigError
from adx_synth.anomalies import (
    ANOMALY_KINDS,
    VARIANTS,
    TextureSource,
    anomaly_batch,
    color_jitter,
    cutpaste,
    cutpaste_batch,
    perlin_mask,
    perlin_noise,
    preview_grid,
    scar,
    texture_anomaly,
    write_preview,
)
from adx_synth.textures import RENDERERS


def _texture(name: str = "wood", n: int = 64, seed: int = 0) -> np.ndarray:
    """A rendered demo texture as (n, n, 3) uint8: not flat, so a moved patch really differs."""
    img, _ = RENDERERS[name](np.random.default_rng(seed), n)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


IMG = _texture()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels where any channel differs."""
    return (before != after).any(axis=-1)


def _bbox(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


# --------------------------------------------------------------------------------------------
# Colour jitter
# --------------------------------------------------------------------------------------------


def test_color_jitter_zero_is_identity() -> None:
    out = color_jitter(IMG, _rng(), brightness=0, contrast=0, saturation=0, hue=0)
    assert out.dtype == np.uint8 and np.array_equal(out, IMG)


def test_color_jitter_brightness_scales_the_mean_by_the_factor() -> None:
    img = np.full((16, 16, 3), 100, np.uint8)
    img[::2] = 120  # not flat, far from 0 and 255 so nothing clips
    ratios = []
    for seed in range(20):
        out = color_jitter(img, _rng(seed), brightness=0.5, contrast=0, saturation=0, hue=0)
        ratios.append(out.mean() / img.mean())
    ratios = np.array(ratios)
    assert ratios.min() >= 0.5 - 0.01 and ratios.max() <= 1.5 + 0.01
    assert ratios.max() - ratios.min() > 0.3  # the factor is drawn, not fixed
    # every pixel scaled by the same factor: out = round(f * img)
    out = color_jitter(img, _rng(3), brightness=0.5, contrast=0, saturation=0, hue=0)
    f = out[1, 0, 0] / 100.0
    assert abs(out[0, 0, 0] / 120.0 - f) < 0.01


def test_color_jitter_hue_and_saturation_keep_gray_and_change_colour() -> None:
    gray = np.full((8, 8, 3), 128, np.uint8)
    assert np.array_equal(color_jitter(gray, _rng(), brightness=0, contrast=0, saturation=0.5, hue=0.5), gray)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    out = color_jitter(red, _rng(1), brightness=0, contrast=0, saturation=0, hue=0.5)
    assert not np.array_equal(out, red) and out.max() == 200  # hue turns, value (max channel) kept


def test_color_jitter_grayscale_and_errors() -> None:
    g = IMG[..., :1]
    out = color_jitter(g, _rng(), brightness=0.3, contrast=0.3, saturation=0.3, hue=0.3)
    assert out.shape == g.shape and not np.array_equal(out, g)
    with pytest.raises(ConfigError, match="hue"):
        color_jitter(IMG, _rng(), hue=0.7)
    with pytest.raises(ConfigError, match=r"\(H, W, C\)"):
        color_jitter(IMG[..., 0], _rng())


# --------------------------------------------------------------------------------------------
# CutPaste
# --------------------------------------------------------------------------------------------


def test_cutpaste_sizes_follow_the_paper_ranges_and_only_the_mask_changes() -> None:
    h, w = IMG.shape[:2]
    areas, aspects, changed = [], [], []
    for seed in range(200):
        syn = cutpaste(IMG, _rng(seed))
        assert syn.image.dtype == np.uint8 and syn.image.shape == IMG.shape
        assert syn.mask.dtype == bool and syn.mask.shape == (h, w)
        bw, bh = _bbox(syn.mask)
        assert syn.mask.sum() == bw * bh  # a filled rectangle
        assert (bw - 1) * (bh - 1) <= 0.15 * h * w and (bw + 1) * (bh + 1) >= 0.02 * h * w
        assert (bw - 1) / (bh + 1) <= 3.3 and (bw + 1) / max(bh - 1, 1) >= 0.3
        assert np.array_equal(syn.image[~syn.mask], IMG[~syn.mask])
        changed.append(_changed(IMG, syn.image)[syn.mask].mean())
        areas.append(syn.mask.mean())
        aspects.append(bw / bh)
    assert min(changed) > 0.9 and np.median(changed) > 0.99
    assert min(areas) < 0.035 and max(areas) > 0.13  # the whole range is drawn
    assert min(aspects) < 0.45 and max(aspects) > 2.2
    assert np.mean(np.array(aspects) > 1) == pytest.approx(0.5, abs=0.1)  # log-uniform: symmetric


def test_cutpaste_is_seeded_and_works_on_grayscale() -> None:
    a, b, c = cutpaste(IMG, _rng(7)), cutpaste(IMG, _rng(7)), cutpaste(IMG, _rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)
    gray = IMG[..., :1].copy()
    g = cutpaste(gray, _rng(1))
    assert g.image.shape == gray.shape and g.mask.any()
    assert np.array_equal(g.image[~g.mask], gray[~g.mask])
    assert _changed(gray, g.image)[g.mask].mean() > 0.9


def test_cutpaste_without_jitter_copies_another_place() -> None:
    syn = cutpaste(IMG, _rng(3), jitter=0)
    bw, bh = _bbox(syn.mask)
    patch = syn.image[syn.mask].reshape(bh, bw, 3)
    # the patch is a rectangle of the original, somewhere else
    found = [(y, x) for y in range(IMG.shape[0] - bh + 1) for x in range(IMG.shape[1] - bw + 1)
             if np.array_equal(IMG[y:y + bh, x:x + bw], patch)]
    ys, xs = np.nonzero(syn.mask)
    assert found and (int(ys.min()), int(xs.min())) not in found


# --------------------------------------------------------------------------------------------
# Scar
# --------------------------------------------------------------------------------------------


def test_scar_size_and_exact_mask() -> None:
    width, height = (2, 8), (5, 12)
    counts = []
    for seed in range(100):
        syn = scar(IMG, _rng(seed), width=width, height=height)
        n = int(syn.mask.sum())
        assert width[0] * height[0] * 0.7 <= n <= width[1] * height[1] * 1.3
        bw, bh = _bbox(syn.mask)
        # a rotated w x h rectangle fits in a (w + h) square, and is at least its width across
        assert max(bw, bh) <= width[1] + height[1] + 1 and min(bw, bh) >= width[0] - 1
        assert np.array_equal(syn.image[~syn.mask], IMG[~syn.mask])
        assert _changed(IMG, syn.image)[syn.mask].mean() > 0.8
        counts.append(n)
    assert min(counts) < 25 and max(counts) > 60


def test_scar_without_rotation_is_an_upright_rectangle() -> None:
    syn = scar(IMG, _rng(5), width=(4, 4), height=(10, 10), angle=(0, 0))
    assert _bbox(syn.mask) == (4, 10) and syn.mask.sum() == 40


def test_scar_is_seeded_and_works_on_grayscale() -> None:
    a, b, c = scar(IMG, _rng(2)), scar(IMG, _rng(2)), scar(IMG, _rng(3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)
    gray = IMG[..., :1].copy()
    g = scar(gray, _rng(4))
    assert g.image.shape == gray.shape and np.array_equal(g.image[~g.mask], gray[~g.mask])


# --------------------------------------------------------------------------------------------
# CutPaste batches
# --------------------------------------------------------------------------------------------


def test_cutpaste_batch_shapes_labels_and_masks() -> None:
    images = np.stack([_texture("wood", 48, s) for s in range(3)])
    for variant, classes in VARIANTS.items():
        out = cutpaste_batch(images, _rng(0), variant, pre_jitter=0, scar_width=(2, 6), scar_height=(5, 10))
        k = len(classes)
        assert out["image"].shape == (3 * k, 48, 48, 3) and out["image"].dtype == np.uint8
        assert out["label"].dtype == np.int64 and out["label"].tolist() == [c for c in range(k) for _ in range(3)]
        assert out["mask"].shape == (3 * k, 48, 48) and out["mask"].dtype == bool
        assert not out["mask"][:3].any()
        assert np.array_equal(out["image"][:3], images)  # pre_jitter=0: class 0 is the input
        for j in range(3, 3 * k):
            original, mask = images[j % 3], out["mask"][j]
            assert mask.any()
            assert np.array_equal(out["image"][j][~mask], original[~mask])
            assert _changed(original, out["image"][j])[mask].mean() > 0.8


def test_cutpaste_batch_pre_jitter_and_seed() -> None:
    images = np.stack([_texture("tile", 32, s) for s in range(2)])
    out = cutpaste_batch(images, _rng(1), "normal")
    base = out["image"][:2]
    assert not np.array_equal(base, images)  # jittered first
    for j in (2, 3):  # the cutpaste class is made from the jittered image
        mask = out["mask"][j]
        assert np.array_equal(out["image"][j][~mask], base[j - 2][~mask])
    again = cutpaste_batch(images, _rng(1), "normal")
    assert all(np.array_equal(out[k], again[k]) for k in out)


def test_cutpaste_batch_unknown_variant_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        cutpaste_batch(IMG[None], _rng(), "4way")
    assert "'4way'" in str(err.value) and all(v in str(err.value) for v in VARIANTS)


# --------------------------------------------------------------------------------------------
# Perlin noise and masks
# --------------------------------------------------------------------------------------------


def test_perlin_noise_range_seed_and_odd_shapes() -> None:
    for shape in [(64, 64), (50, 70), (17, 5), (3, 100)]:
        a = perlin_noise(shape, _rng(1))
        assert a.shape == shape and a.dtype == np.float32
        assert np.array_equal(a, perlin_noise(shape, _rng(1)))
        assert np.abs(a).max() <= 1.0 and a.std() > 0.05
    values = np.concatenate([perlin_noise((40, 60), _rng(s)).ravel() for s in range(30)])
    assert values.min() < -0.6 and values.max() > 0.6  # roughly [-1, 1]
    assert not np.array_equal(perlin_noise((40, 60), _rng(1)), perlin_noise((40, 60), _rng(2)))


def test_perlin_noise_scale_sets_the_blob_size() -> None:
    coarse = perlin_noise((64, 64), _rng(0), scale=(1, 2))  # 2 cells across
    fine = perlin_noise((64, 64), _rng(0), scale=(5, 6))  # 32 cells across
    # neighbouring pixels agree far more in coarse noise
    assert np.abs(np.diff(coarse, axis=1)).mean() * 4 < np.abs(np.diff(fine, axis=1)).mean()
    with pytest.raises(ConfigError, match="scale"):
        perlin_noise((8, 8), _rng(), scale=(3, 3))


def test_perlin_mask_is_seeded_and_never_empty() -> None:
    for seed in range(20):
        m = perlin_mask((48, 40), _rng(seed))
        assert m.dtype == bool and m.shape == (48, 40) and m.sum() >= 16
        assert np.array_equal(m, perlin_mask((48, 40), _rng(seed)))
    # a threshold no noise reaches: falls back to a small blob
    blob = perlin_mask((32, 32), _rng(0), threshold=5.0)
    assert 0 < blob.sum() < 32 * 32 * 0.2


# --------------------------------------------------------------------------------------------
# Texture sources and texture anomalies
# --------------------------------------------------------------------------------------------


def test_generated_textures_exclude_the_category() -> None:
    src = TextureSource.generated(exclude=["wood"])
    assert "wood" not in src.names and len(src) == len(RENDERERS) - 1
    assert "wood" not in src.description and "grid" in src.description
    tex = src.sample(_rng(0), (40, 56), 3)
    assert tex.shape == (40, 56, 3) and tex.dtype == np.uint8 and tex.std() > 1
    assert src.sample(_rng(0), (40, 56), 1).shape == (40, 56, 1)
    assert np.array_equal(tex, src.sample(_rng(0), (40, 56), 3))
    with pytest.raises(ConfigError, match="no generated textures left"):
        TextureSource.generated(exclude=list(RENDERERS))


def test_texture_folder_skips_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.fromarray(_texture("grid", 40)).save(tmp_path / "a.png")
    Image.fromarray(_texture("tile", 30)[:20]).save(tmp_path / "sub" / "b.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored")
    src = TextureSource.from_folder(tmp_path)
    assert len(src) == 2 and src.skipped == 1
    assert str(tmp_path) in src.description and "2 images" in src.description
    tex = src.sample(_rng(0), (24, 36), 3)
    assert tex.shape == (24, 36, 3) and tex.dtype == np.uint8
    assert src.sample(_rng(0), (24, 36), 1).shape == (24, 36, 1)


def test_texture_folder_missing_or_empty_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        TextureSource.from_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value) and ".png" in str(err.value)
    (tmp_path / "bad.png").write_bytes(b"\x00" * 10)
    with pytest.raises(ConfigError) as err:
        TextureSource.from_folder(tmp_path)
    assert str(tmp_path) in str(err.value) and "none decodable" in str(err.value)
    # the fix names both ways to give the folder: train has no --textures flag, synth-preview has
    assert "--set textures=DIR" in str(err.value) and "synth-preview: --textures DIR" in str(err.value)


def test_texture_anomaly_blends_as_draem(tmp_path: Path) -> None:
    colour = np.array([10, 200, 90], np.uint8)
    Image.fromarray(np.broadcast_to(colour, (50, 50, 3)).copy()).save(tmp_path / "flat.png")
    src = TextureSource.from_folder(tmp_path)
    syn = texture_anomaly(IMG, _rng(0), src, opacity=(0.5, 0.5))
    m = syn.mask
    assert m.any() and np.array_equal(syn.image[~m], IMG[~m])
    expected = np.rint(0.5 * colour.astype(np.float64) + 0.5 * IMG[m].astype(np.float64))
    assert np.array_equal(syn.image[m], expected.astype(np.uint8))  # halves of integers: exact in float32


def test_texture_anomaly_changes_the_masked_pixels_and_is_seeded() -> None:
    src = TextureSource.generated(exclude=["wood"])
    for seed in range(10):
        syn = texture_anomaly(IMG, _rng(seed), src)
        assert np.array_equal(syn.image[~syn.mask], IMG[~syn.mask])
        assert _changed(IMG, syn.image)[syn.mask].mean() > 0.8
    a, b = texture_anomaly(IMG, _rng(3), src), texture_anomaly(IMG, _rng(3), src)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    g = texture_anomaly(IMG[..., :1].copy(), _rng(3), src)
    assert g.image.shape == (64, 64, 1)


# --------------------------------------------------------------------------------------------
# Anomaly batches (PRNet)
# --------------------------------------------------------------------------------------------


def test_anomaly_batch_probability_and_masks() -> None:
    images = np.stack([_texture("wood", 32, s) for s in range(6)])
    src = TextureSource.generated(exclude=["wood"])
    none = anomaly_batch(images, _rng(0), textures=src, p_anomaly=0.0)
    assert np.array_equal(none["image"], images)
    assert none["mask"].shape == (6, 1, 32, 32) and none["mask"].dtype == np.float32 and not none["mask"].any()
    every = anomaly_batch(images, _rng(0), textures=src, p_anomaly=1.0, scar_width=(2, 4), scar_height=(5, 8))
    assert every["image"].shape == images.shape and every["image"].dtype == np.uint8
    assert set(np.unique(every["mask"])) <= {0.0, 1.0}
    for i in range(6):
        m = every["mask"][i, 0] > 0
        assert m.any() and np.array_equal(every["image"][i][~m], images[i][~m])
    half = anomaly_batch(np.repeat(images, 10, axis=0), _rng(1), textures=None, kinds=("cutpaste",))
    assert 0.3 < (half["mask"].reshape(60, -1).max(axis=1) > 0).mean() < 0.7


def test_anomaly_batch_texture_without_textures_is_an_error() -> None:
    with pytest.raises(ConfigError, match="TextureSource"):
        anomaly_batch(IMG[None], _rng(), textures=None)
    with pytest.raises(ConfigError, match="valid kinds"):
        anomaly_batch(IMG[None], _rng(), textures=None, kinds=("blur",))
    assert ANOMALY_KINDS == ("texture", "cutpaste", "scar")


# --------------------------------------------------------------------------------------------
# Previews and the CLI
# --------------------------------------------------------------------------------------------


def test_preview_grid_size_and_outline() -> None:
    syns = [cutpaste(IMG, _rng(s)) for s in range(5)]
    grid = preview_grid([s.image for s in syns], [s.mask for s in syns], columns=3)
    assert grid.mode == "RGB" and grid.size == (3 * 64 + 4 * 2, 2 * 2 * 64 + 5 * 2)
    arr = np.asarray(grid)
    assert np.array_equal(arr[2:66, 2:66], syns[0].image)
    ys, xs = np.nonzero(syns[0].mask)
    assert tuple(arr[2 + 64 + 2 + ys.min(), 2 + xs.min()]) == (255, 0, 0)  # outline corner, row below


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("anomaly_data")
    generate_demo_dataset(root, ["weave"], n_train=8, n_test_good=2, n_test_per_defect=1, image_size=64, seed=0)
    return root


def test_write_preview_is_seeded(tiny_dataset: Path, tmp_path: Path) -> None:
    a = write_preview(tiny_dataset, "weave", tmp_path / "a", kinds=("scar",), n=3, image_size=48)
    b = write_preview(tiny_dataset, "weave", tmp_path / "b", kinds=("cutpaste", "scar"), n=3, image_size=48)
    assert [p.name for p in b] == ["cutpaste.png", "scar.png"]
    assert a[0].read_bytes() == b[1].read_bytes()  # a kind's grid does not depend on the others asked


def test_cli_synth_preview(tiny_dataset: Path, tmp_path: Path) -> None:
    from adx_cli.app import app

    runner = CliRunner()
    out = tmp_path / "preview"
    result = runner.invoke(app, ["synth-preview", str(tiny_dataset), "-c", "weave", "-o", str(out),
                                 "--image-size", "64"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for kind in ("cutpaste", "scar", "texture"):
        path = out / f"{kind}.png"
        assert str(path) in result.output
        with Image.open(path) as im:
            assert im.size == (8 * 64 + 9 * 2, 2 * 64 + 3 * 2)
    result = runner.invoke(app, ["synth-preview", str(tiny_dataset), "-c", "nope", "-o", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'nope'" in lines[0] and "weave" in lines[0]
    result = runner.invoke(app, ["synth-preview", str(tiny_dataset), "-c", "weave", "-o", str(out),
                                 "--kind", "cutpaste,blur"], catch_exceptions=False)
    assert result.exit_code == 1 and "valid kinds" in result.output


def test_anomalies_do_not_import_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "import adx_synth.anomalies as a\n"
        "img = np.zeros((32, 32, 3), np.uint8)\n"
        "a.anomaly_batch(img[None], np.random.default_rng(0), textures=a.TextureSource.generated(), p_anomaly=1)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scar_sizes_scale_the_papers_pixels_with_the_image_side() -> None:
    from adx_synth.anomalies import scar_sizes

    assert scar_sizes(256) == ((2, 16), (10, 25))  # the paper's, at its 256 px
    assert scar_sizes(128) == ((1, 8), (5, 12))
    assert scar_sizes(32) == ((1, 2), (1, 3))
    assert scar_sizes(8) == ((1, 1), (1, 1))  # never an empty range
