"""Tests for adx_synth.field_defects (evaluation defects independent of the anomaly synthesis) and
the demo writer's two test-defect families."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adx_runtime.datasets import load_split
from adx_runtime.errors import ConfigError
from adx_synth import (
    DEFECT_TYPES,
    FIELD_DEFECT_KINDS,
    FIELD_DEFECT_SCALES,
    apply_random_defect,
    count_demo_images,
    generate_demo_dataset,
    render_field_defect,
)
from adx_synth import field_defects
from adx_synth.field_defects import SMALL_SIZES, VISIBLE_LEVELS

MODULE = Path(field_defects.__file__)
KINDS = list(FIELD_DEFECT_KINDS)


def _texture(n: int, seed: int = 0) -> np.ndarray:
    """A uint8 (n, n, 3) image with structure at several scales, mid-grey on average: defects of
    every kind can show on it, and an unchanged pixel is recognisable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    base = 0.5 + 0.12 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    img = base[..., None] * np.array([1.0, 0.9, 0.8]) + rng.normal(0.0, 0.012, (n, n, 3))
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Independence from the anomaly synthesis
# --------------------------------------------------------------------------------------------


def test_module_source_imports_only_numpy_stdlib_and_the_error_type() -> None:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import could reach the synthesis code"
            imported.add(node.module or "")
    assert imported, "the parse found no imports at all: the check would be vacuous"
    assert not {m for m in imported if m.split(".")[0] == "adx_synth"}
    allowed_roots = {"__future__", "math", "collections", "dataclasses", "numpy", "PIL"}
    assert {m for m in imported if m.split(".")[0] not in allowed_roots} == {"adx_runtime.errors"}


def test_running_the_module_loads_no_synthesis_module() -> None:
    # Loaded from its file, not through the package, whose __init__ imports everything: this sees
    # what the module itself pulls in, at import and while it draws every kind at both scales.
    code = (
        "import importlib.util, sys\n"
        "import numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('field_defects', {str(MODULE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['field_defects'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "img = np.full((64, 64, 3), 128, np.uint8)\n"
        "for kind in mod.FIELD_DEFECT_KINDS:\n"
        "    for scale in mod.FIELD_DEFECT_SCALES:\n"
        "        mod.apply_random_defect(img, np.random.default_rng(0), scale=scale, kind=kind)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'adx_synth'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# The defects
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", FIELD_DEFECT_SCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_exactly_its_mask(kind: str, scale: str) -> None:
    rgb = _texture(96)
    before = rgb.copy()
    for seed in range(4):
        image, mask = apply_random_defect(rgb, np.random.default_rng(seed), scale=scale, kind=kind)
        assert image.dtype == np.uint8 and image.shape == rgb.shape
        assert mask.dtype == bool and mask.shape == rgb.shape[:2]
        assert mask.sum() >= (2 if scale == "small" else 8)
        changed = (image != rgb).any(axis=2)
        np.testing.assert_array_equal(changed, mask)
        # Every masked pixel changed visibly, not by a rounding step.
        diff = np.abs(image.astype(int) - rgb.astype(int)).max(axis=2)
        assert diff[mask].min() >= VISIBLE_LEVELS
    np.testing.assert_array_equal(rgb, before)  # the input is left alone


def test_kinds_darken_or_tint_as_described() -> None:
    rgb = _texture(128)
    for kind in ("crack", "burn"):
        image, mask = apply_random_defect(rgb, np.random.default_rng(1), kind=kind)
        assert (image[mask].astype(int).sum(1) < rgb[mask].astype(int).sum(1)).all(), kind
    image, mask = apply_random_defect(rgb, np.random.default_rng(1), kind="burn")
    assert image[mask].min() < 40  # a charred core, near black
    image, mask = apply_random_defect(rgb, np.random.default_rng(1), kind="stain")
    change = np.abs(image[mask].astype(int) - rgb[mask].astype(int)).max()
    assert change < 0.3 * 255  # a stain is low-contrast


def test_no_kind_draws_every_kind_and_a_kind_is_honoured() -> None:
    rgb = _texture(64)
    drawn = {render_field_defect(rgb, np.random.default_rng(s)).kind for s in range(60)}
    assert drawn == set(KINDS)
    assert render_field_defect(rgb, np.random.default_rng(0), kind="pit").kind == "pit"


def test_same_generator_state_same_defect_other_seed_differs() -> None:
    rgb = _texture(96)
    for kind in [None, *KINDS]:
        a = apply_random_defect(rgb, np.random.default_rng(5), kind=kind, scale="small")
        b = apply_random_defect(rgb, np.random.default_rng(5), kind=kind, scale="small")
        c = apply_random_defect(rgb, np.random.default_rng(6), kind=kind, scale="small")
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1]), kind


def test_small_scale_sizes_at_1024_px() -> None:
    rgb = np.full((1024, 1024, 3), 140, np.uint8)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for kind in KINDS:
            d = render_field_defect(rgb, rng, scale="small", kind=kind)
            ys, xs = np.nonzero(d.mask)
            extent = max(np.ptp(ys), np.ptp(xs)) + 1
            area = int(d.mask.sum())
            p = d.params
            if kind == "scratch":
                lo, hi = SMALL_SIZES["scratch_width"]
                assert (lo, hi) == (1.0, 2.0) and lo <= p["width_px"] <= hi
                # Anti-aliasing adds at most a partly covered pixel on each side.
                assert area / p["length_px"] <= p["width_px"] + 2.0
                assert 25 <= extent <= 170
            elif kind == "crack":
                lo, hi = SMALL_SIZES["crack_width"]
                assert hi <= 1.2 and lo <= p["width_px"] <= hi
                assert extent >= 15
            elif kind == "pit":
                lo, hi = SMALL_SIZES["pit_diameter"]
                assert (lo, hi) == (1.0, 3.0) and lo <= p["diameter_px"] <= hi
                assert extent <= p["diameter_px"] + 2 * 0.6 + 2  # disc + lit rim + anti-aliasing
            elif kind == "stain":
                lo, hi = SMALL_SIZES["stain_diameter"]
                assert (lo, hi) == (6.0, 14.0) and lo <= p["diameter_px"] <= hi
                assert 0.5 * p["diameter_px"] <= extent <= p["diameter_px"] + 1
            else:
                lo, hi = SMALL_SIZES["burn_diameter"]
                assert lo <= p["diameter_px"] <= hi
                assert extent <= 1.3 * p["diameter_px"] + 2  # the ragged front reaches 1.3 x radius


def test_normal_scale_grows_with_the_image_small_does_not() -> None:
    def sizes(n: int, scale: str) -> tuple[float, float]:
        """Mean drawn pit diameter and mean mask area over the same 8 generator seeds."""
        rgb = np.full((n, n, 3), 140, np.uint8)
        drawn = [render_field_defect(rgb, np.random.default_rng(s), scale=scale, kind="pit") for s in range(8)]
        return float(np.mean([d.params["diameter_px"] for d in drawn])), float(np.mean([d.mask.sum() for d in drawn]))

    (d160, a160), (d512, a512) = sizes(160, "normal"), sizes(512, "normal")
    assert d512 == pytest.approx(d160 * 512 / 160) and a512 > 4 * a160
    (s160, b160), (s512, b512) = sizes(160, "small"), sizes(512, "small")
    assert s512 == s160 and abs(b512 - b160) < 0.2 * b160  # only the sub-pixel position differs


@pytest.mark.parametrize(
    "args, needle",
    [
        ((np.zeros((32, 32, 3), np.float32),), "uint8 (H, W, 3)"),
        ((np.zeros((32, 32), np.uint8),), "uint8 (H, W, 3)"),
        ((np.zeros((8, 64, 3), np.uint8),), "at least 16"),
        ((np.zeros((32, 32, 3), np.uint8), "seed"), "numpy Generator"),
    ],
)
def test_bad_images_raise_config_error(args: tuple, needle: str) -> None:
    rgb = args[0]
    rng = args[1] if len(args) > 1 else np.random.default_rng(0)
    with pytest.raises(ConfigError) as info:
        apply_random_defect(rgb, rng)
    assert needle in str(info.value)


def test_bad_kind_or_scale_lists_the_valid_ones() -> None:
    rgb = _texture(32)
    with pytest.raises(ConfigError, match="Valid kinds: scratch, crack, pit, stain, burn"):
        apply_random_defect(rgb, np.random.default_rng(0), kind="dent")
    with pytest.raises(ConfigError, match="Valid scales: normal, small"):
        apply_random_defect(rgb, np.random.default_rng(0), scale="tiny")


# --------------------------------------------------------------------------------------------
# The demo writer's families
# --------------------------------------------------------------------------------------------

#: Pixel digest of ``generate_demo_dataset(root, n_train=1, n_test_good=1, n_test_per_defect=1,
#: image_size=40, seed=3)`` as the writer made it before the field family existed. The default
#: family must stay byte for byte what it was: published figures were measured on it. Change this
#: only with a deliberate change of the demo data (and re-measure the README's figures).
DEFAULT_DEMO_DIGEST = "ad94719e21a18f15f74ce6d2f06241d0308e74475d5581944f1c2d1dfc63b44f"


def _pixel_digest(root: Path) -> str:
    """sha256 over every PNG's relative path, shape and decoded pixels (not the PNG bytes, which a
    different zlib could encode differently)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        with Image.open(p) as im:
            a = np.asarray(im)
        h.update(p.relative_to(root).as_posix().encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_default_demo_output_is_unchanged(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path, n_train=1, n_test_good=1, n_test_per_defect=1, image_size=40, seed=3)
    assert _pixel_digest(tmp_path) == DEFAULT_DEMO_DIGEST
    explicit = tmp_path / "explicit"
    generate_demo_dataset(explicit, n_train=1, n_test_good=1, n_test_per_defect=1, image_size=40, seed=3,
                          test_defects="demo", defect_scale="normal")
    assert _pixel_digest(explicit) == DEFAULT_DEMO_DIGEST


@pytest.mark.parametrize("scale", FIELD_DEFECT_SCALES)
def test_good_images_are_identical_whatever_the_family(tmp_path: Path, scale: str) -> None:
    counts = dict(n_train=3, n_test_good=2, n_test_per_defect=1, image_size=48, seed=2)
    generate_demo_dataset(tmp_path / "demo", ["grid", "wood"], **counts)
    generate_demo_dataset(tmp_path / "field", ["grid", "wood"], **counts, test_defects="field", defect_scale=scale)
    for cat in ("grid", "wood"):
        for split in ("train/good", "test/good"):
            demo, field = _files(tmp_path / "demo" / cat / split), _files(tmp_path / "field" / cat / split)
            assert len(demo) == (3 if split == "train/good" else 2)
            assert demo == field
        assert {p.name for p in (tmp_path / "field" / cat / "test").iterdir()} == {"good", *KINDS}
        assert {p.name for p in (tmp_path / "demo" / cat / "test").iterdir()} == {"good", *DEFECT_TYPES[cat]}


def test_field_family_layout_and_exact_masks(tmp_path: Path) -> None:
    from adx_synth.mvtec import sample_rng
    from adx_synth.writer import _SPLIT_FIRST_FIELD, _render_clean

    summary = generate_demo_dataset(tmp_path, ["tile"], n_train=2, n_test_good=1, n_test_per_defect=2,
                                    image_size=64, seed=0, test_defects="field", defect_scale="small")
    assert summary == {"tile": {"train/good": 2, "test/good": 1, **{f"test/{k}": 2 for k in KINDS}}}
    cat = tmp_path / "tile"
    assert sorted(p.name for p in (cat / "test").iterdir()) == sorted([*KINDS, "good"])
    assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == sorted(KINDS)
    for k, kind in enumerate(KINDS):
        assert sorted(p.name for p in (cat / "test" / kind).iterdir()) == ["000.png", "001.png"]
        assert sorted(p.name for p in (cat / "ground_truth" / kind).iterdir()) == ["000_mask.png", "001_mask.png"]
        for index in range(2):
            with Image.open(cat / "test" / kind / f"00{index}.png") as im:
                assert im.mode == "RGB" and im.size == (64, 64)
                image = np.asarray(im)
            with Image.open(cat / "ground_truth" / kind / f"00{index}_mask.png") as im:
                assert im.mode == "L"
                mask = np.asarray(im)
            assert set(np.unique(mask)) == {0, 255}
            # The image is its clean texture (same generator, same draws) except exactly under the mask.
            _, _, _, clean = _render_clean("tile", sample_rng(0, "tile", _SPLIT_FIRST_FIELD + k, index), 64)
            np.testing.assert_array_equal((image != clean).any(axis=2), mask == 255)
    split = load_split(tmp_path, "tile")  # the runtime reads it as any MVTec category
    assert len(split.train) == 2
    assert count_demo_images(["tile"], n_train=2, n_test_good=1, n_test_per_defect=2, test_defects="field") == 13


def test_family_and_scale_checks(tmp_path: Path) -> None:
    tiny = dict(n_train=1, n_test_good=1, n_test_per_defect=1, image_size=32)
    with pytest.raises(ConfigError, match="Valid families: demo, field"):
        generate_demo_dataset(tmp_path / "a", ["wood"], **tiny, test_defects="real")
    with pytest.raises(ConfigError, match="needs the field defect family"):
        generate_demo_dataset(tmp_path / "a", ["wood"], **tiny, defect_scale="small")
    with pytest.raises(ConfigError, match="digits category"):
        generate_demo_dataset(tmp_path / "a", ["wood", "digits"], **tiny, test_defects="field")
    assert not (tmp_path / "a").exists()  # refused before writing anything
    # One family beside the other in the same category would mix them in an evaluation.
    generate_demo_dataset(tmp_path / "b", ["wood"], **tiny)
    with pytest.raises(ConfigError, match="already holds demo-family defect folders"):
        generate_demo_dataset(tmp_path / "b", ["wood"], **tiny, test_defects="field")
    assert not (tmp_path / "b" / "wood" / "test" / "pit").exists()
    generate_demo_dataset(tmp_path / "b", ["wood"], **tiny)  # the same family again is fine


def test_cli_demo_data_field_small(tmp_path: Path) -> None:
    from adx_cli.app import app

    result = CliRunner().invoke(app, ["demo-data", str(tmp_path), "--categories", "weave", "--n-train", "1",
                                      "--n-test-good", "1", "--n-test-defect", "1", "--image-size", "64",
                                      "--test-defects", "field", "--defect-scale", "small", "-q"])
    assert result.exit_code == 0, result.output
    assert "test/scratch 1, test/crack 1, test/pit 1, test/stain 1, test/burn 1" in result.output
    assert (tmp_path / "weave" / "ground_truth" / "burn" / "000_mask.png").is_file()
    bad = CliRunner().invoke(app, ["demo-data", str(tmp_path / "x"), "--defect-scale", "small", "-q"])
    assert bad.exit_code != 0 and "needs the field defect family" in bad.output
    assert "Traceback" not in bad.output
