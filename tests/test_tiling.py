"""Tiled training and scoring (``--tile``): the layout, the stitching against an independent numpy
reference, the input contract in the manifest, and every registered method trained, exported and
scored on tiles of larger images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adx_runtime.bundle import load_manifest
from adx_runtime.errors import BundleError, ConfigError
from adx_runtime.postprocess import PostprocessSpec
from adx_runtime.preprocess import PreprocessConfig, TilingSpec, map_to_original, preprocess_mask, tile_offsets
from adx_runtime.tiling import Stitcher, TileMaps, ramp, smooth, tile_layout

# ------------------------------------------------------------------------------ layout, weights


def test_tile_offsets_shift_the_last_tile_inward() -> None:
    assert tile_offsets(128, 64, 16) == [0, 48, 64]  # stride 48; the last tile ends at the edge
    assert tile_offsets(112, 64, 16) == [0, 48]  # the grid fits exactly: nothing shifted
    assert tile_offsets(64, 64, 0) == [0]
    assert tile_offsets(1080, 256, 32) == [0, 224, 448, 672, 824]
    with pytest.raises(ConfigError):
        tile_offsets(50, 64, 16)


def test_every_pixel_is_covered_and_no_tile_leaves_the_image() -> None:
    for n, t, o in [(1080, 256, 32), (1920, 256, 32), (4000, 256, 0), (333, 64, 31), (257, 256, 128)]:
        starts = tile_offsets(n, t, o)
        covered = np.zeros(n, bool)
        for s in starts:
            assert 0 <= s and s + t <= n
            covered[s:s + t] = True
        assert covered.all(), (n, t, o)
        assert all(b - a <= t - o for a, b in zip(starts, starts[1:]))  # never a gap wider than the stride


def test_ramp_weights_of_two_neighbours_sum_to_one_over_their_overlap() -> None:
    t, o = 64, 16
    w = ramp(t, o)
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_allclose(w[t - o:] + w[:o], 1.0, atol=1e-6)  # left tile's tail + right tile's head
    assert (ramp(t, 0) == 1).all()


def _reference_stitch(size: tuple[int, int], tile: int, overlap: int, tiles: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Per pixel, written from the definition: the weighted mean of the covering tiles' values, each
    weight the product over both axes of min(1, distance to the tile's nearer edge / overlap), the
    distance measured from the pixel's centre."""
    h, w = size
    out = np.zeros(size)
    for yy in range(h):
        for xx in range(w):
            num = den = 0.0
            for (y, x), m in tiles.items():
                if y <= yy < y + tile and x <= xx < x + tile:
                    dy = min(yy - y + 0.5, y + tile - yy - 0.5)
                    dx = min(xx - x + 0.5, x + tile - xx - 0.5)
                    wt = (min(1.0, dy / overlap) if overlap else 1.0) * (min(1.0, dx / overlap) if overlap else 1.0)
                    num += wt * m[yy - y, xx - x]
                    den += wt
            out[yy, xx] = num / den
    return out


@pytest.mark.parametrize("size,tile,overlap", [((40, 52), 16, 4), ((33, 33), 16, 0), ((16, 40), 16, 8)])
def test_stitching_matches_an_independent_reference(size: tuple[int, int], tile: int, overlap: int) -> None:
    cfg = PreprocessConfig.square(tile, tiling=TilingSpec(overlap=overlap))
    layout = tile_layout(size, cfg)
    rng = np.random.default_rng(0)
    maps = {yx: rng.random((tile, tile)).astype(np.float32) for yx in layout.offsets()}
    st = Stitcher(layout)
    for j, yx in enumerate(layout.offsets()):
        st.add(j, maps[yx])
    assert st.complete
    np.testing.assert_allclose(st.result(), _reference_stitch(size, tile, overlap, maps), rtol=1e-5, atol=1e-6)


def test_a_constant_map_stitches_and_smooths_flat() -> None:
    """No seam: equal tile maps give exactly the same value everywhere, before and after smoothing."""
    cfg = PreprocessConfig.square(64, tiling=TilingSpec(overlap=16))
    layout = tile_layout((300, 417), cfg)
    st = Stitcher(layout)
    for j in range(layout.count):
        st.add(j, np.full((64, 64), 2.5, np.float32))
    flat = st.result()
    np.testing.assert_allclose(flat, 2.5, rtol=1e-6)
    np.testing.assert_allclose(smooth(flat, PostprocessSpec.gaussian((8, 8), 4.0)), 2.5, rtol=1e-5)


@pytest.mark.parametrize("smoothing", [("gaussian", 4.0, None), ("mean", None, 5), ("gaussian", 0.7, None)])
def test_blocked_smoothing_equals_the_dense_matrices(smoothing) -> None:
    from adx_runtime.postprocess import smoothing_matrix

    kind, sigma, size = smoothing
    spec = PostprocessSpec((8, 8), kind, sigma, size, "max")
    m = np.random.default_rng(1).random((150, 203)).astype(np.float32)  # not a multiple of the block
    dense = smoothing_matrix(150, spec) @ m.astype(np.float64) @ smoothing_matrix(203, spec).T
    np.testing.assert_allclose(smooth(m, spec), dense, rtol=1e-4, atol=1e-5)


def test_one_tile_equals_the_untiled_post_processing() -> None:
    """An image the size of one tile: upsample, stitch, smooth == the untiled MapPostprocessor."""
    from adx_runtime.postprocess import MapPostprocessor

    spec = PostprocessSpec.gaussian((8, 8), 4.0)
    patch = np.random.default_rng(2).random((1, 8, 8)).astype(np.float32)
    untiled = MapPostprocessor(spec, (64, 64))(patch)[0]
    st = Stitcher(tile_layout((64, 64), PreprocessConfig.square(64, tiling=TilingSpec(overlap=16))))
    st.add(0, TileMaps(spec, (64, 64))(patch)[0])
    np.testing.assert_allclose(smooth(st.result(), spec), untiled, rtol=1e-4, atol=1e-5)


def test_working_size_and_maps_back_onto_the_image() -> None:
    cfg = PreprocessConfig.square(64, tiling=TilingSpec(overlap=16, working_size=200))
    mask = np.zeros((300, 400), bool)
    mask[100:150, 200:260] = True
    small = preprocess_mask(mask, cfg)
    assert small.shape == (150, 200)  # the longer side to 200, aspect kept
    back = map_to_original(small.astype(np.float32), (400, 300), cfg)
    assert back.shape == (300, 400)
    native = PreprocessConfig.square(64, tiling=TilingSpec(overlap=16))
    assert preprocess_mask(mask, native).shape == (300, 400)


def test_tiling_spec_is_checked() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        PreprocessConfig.square(64, tiling=TilingSpec(overlap=40))  # more than half a tile
    with pytest.raises(ConfigError, match="working size"):
        PreprocessConfig.square(64, tiling=TilingSpec(overlap=8, working_size=32))
    with pytest.raises(ConfigError, match="centre crop"):
        PreprocessConfig((64, 64), center_crop=(48, 48), tiling=TilingSpec())
    cfg = PreprocessConfig.square(64, tiling=TilingSpec(overlap=16, working_size=512))
    d = cfg.to_dict()
    assert d["tiling"] == {"tile": [64, 64], "overlap": 16, "stride": [48, 48], "working_size": 512,
                           "border": "shift-inward", "blend": "linear-ramp"}
    assert PreprocessConfig.from_dict(d) == cfg
    assert "tiling" not in PreprocessConfig.square(64).to_dict()  # untiled manifests are unchanged
    with pytest.raises(BundleError, match="stride"):
        PreprocessConfig.from_dict({**d, "tiling": {**d["tiling"], "stride": [40, 40]}})


# ------------------------------------------------------------- the runtime on a hand-made bundle


class _IdentityRunner:
    """A 'graph' whose anomaly map is its input's first channel: what goes in at a pixel comes out
    there, so the stitched map can be checked against the image."""

    providers = ["test"]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"anomaly_map": x[:, 0].copy()}


def _identity_predictor(tile: int, overlap: int, sigma: float):
    from adx_runtime.predictor import Predictor
    from adx_runtime.scorers import ScoreOutput

    cfg = PreprocessConfig.square(tile, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), tiling=TilingSpec(overlap=overlap))
    spec = PostprocessSpec.gaussian((tile, tile), sigma)
    manifest = {"method": "identity", "input": cfg.to_dict(), "postprocess": spec.to_dict(),
                "graph": {"inputs": [{"name": "image", "shape": ["batch", 3, tile, tile]}],
                          "outputs": [{"name": "anomaly_map", "shape": ["batch", tile, tile]}]},
                "calibration": {"image": {"threshold": 0.5, "scale": 1.0}}}
    return Predictor(Path("."), manifest, _IdentityRunner(),
                     lambda out, tiles=None: ScoreOutput(out["anomaly_map"], None), None, "cpu")


def test_a_bright_pixel_peaks_where_it_is_at_the_images_size() -> None:
    pred = _identity_predictor(tile=64, overlap=16, sigma=2.0)
    img = np.zeros((150, 233, 3), np.uint8)
    img[97, 161] = 255  # inside an overlap region of two tile rows and columns
    result = pred.predict([img])
    m = result.anomaly_maps[0]
    assert m.shape == (150, 233)
    assert np.unravel_index(np.argmax(m), m.shape) == (97, 161)
    assert pred.tiles_scored == len(tile_offsets(150, 64, 16)) * len(tile_offsets(233, 64, 16))


def test_a_constant_image_gives_a_flat_map_through_the_predictor() -> None:
    pred = _identity_predictor(tile=64, overlap=16, sigma=4.0)
    m = pred.predict([np.full((130, 170, 3), 40, np.uint8)]).anomaly_maps[0]
    np.testing.assert_allclose(m, 40 / 255, rtol=1e-5)


def test_images_of_different_sizes_in_one_batch_and_a_too_small_one(tmp_path: Path) -> None:
    pred = _identity_predictor(tile=64, overlap=16, sigma=1.0)
    paths = []
    for name, (w, h) in {"a": (64, 64), "b": (300, 90), "c": (40, 200), "d": (129, 77)}.items():
        arr = np.random.default_rng(len(name)).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    results = list(pred.predict_files(paths, batch_size=4, keep_maps=True))
    by = {Path(r.path).stem: r for r in results}
    assert by["c"].error and "smaller than the bundle's 64 x 64 tiles" in by["c"].error
    for name, (w, h) in {"a": (64, 64), "b": (300, 90), "d": (129, 77)}.items():
        assert by[name].ok and by[name].anomaly_map.shape == (h, w)
        assert by[name].image_score == pytest.approx(float(by[name].anomaly_map.max()))  # the 'max' rule


# ----------------------------------------------------------- every method on tiles, end to end


@pytest.fixture(scope="module")
def large_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adx_synth import generate_demo_dataset

    root = tmp_path_factory.mktemp("data128")
    generate_demo_dataset(root, ["weave"], n_train=6, n_test_good=2, n_test_per_defect=1, image_size=128, seed=0)
    return root


def _methods() -> list[str]:
    from adexport.methods import METHODS

    return sorted(METHODS)


@pytest.fixture(scope="module", params=_methods())
def tiled(request, large_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    from adexport.export import export_bundle
    from adexport.fit_pipeline import train
    from adexport.fitted import save_fitted
    from adexport.methods import METHODS

    method = request.param
    options = dict(METHODS[method].test_options)
    options["image_size"] = 64  # the tile: 128-px images give 3 x 3 tiles at an overlap of 16
    if METHODS[method].trained:
        options["epochs"] = 1  # an epoch is every tile: 9 times the images' steps
    fitted = train(large_dataset, "weave", method, options=options, holdout=0.34, tiling=TilingSpec(overlap=16))
    root = tmp_path_factory.mktemp(f"tiled-{method}")
    save_fitted(fitted, root / "model")
    manifest = export_bundle(root / "model", root / "bundle")
    return method, fitted, root, manifest


def test_every_method_trains_exports_and_scores_on_tiles(tiled, large_dataset: Path) -> None:
    import torch

    from adexport.data import image_tiles, working_tiles_source
    from adexport.fit_pipeline import _reference_batches
    from adx_runtime.datasets import load_split
    from adx_runtime.predictor import Predictor

    method, fitted, root, manifest = tiled
    assert manifest["input"]["tiling"]["stride"] == [48, 48] and manifest["parity"]["passed"]
    pred = Predictor.load(root / "bundle")
    split = load_split(large_dataset, "weave")
    samples = split.test[:3]
    got = list(pred.predict_files([s.path for s in samples], batch_size=3, keep_maps=True))
    assert all(r.ok for r in got) and pred.tiles_scored == 9 * len(samples)
    # the torch model on the same tiles, stitched by the runtime's code: the whole tiled path agrees
    want = list(_reference_batches(fitted, samples, 8, progress=__import__("adx_runtime.progress").progress.SILENT))
    tol = manifest["parity"]["tolerance"]
    ref_scores = np.concatenate([s for s, _ in want])
    scale = np.abs(ref_scores).max()
    assert np.abs(np.array([r.image_score for r in got]) - ref_scores).max() / scale <= tol["image_scores"]
    if manifest["postprocess"]["map"]:
        for r, (_, full) in zip(got, want):
            assert r.anomaly_map.shape == (128, 128)
            assert np.abs(r.anomaly_map - full[0]).max() / np.abs(full).max() <= tol["maps"]
    else:  # an image-level method: the coarse map of its tile scores, as an independent stitch makes it
        assert pred.has_map
        tile, overlap = fitted.preprocess.input_size[0], fitted.preprocess.tiling.overlap
        for s, r in zip(samples, got):
            arr = working_tiles_source(s.path, fitted.preprocess)
            tiles = image_tiles(s.path, fitted.preprocess)
            tile_scores = fitted.reference(torch.from_numpy(np.stack(tiles))).image_scores.numpy()
            offsets = list(tile_layout(arr.shape[:2], fitted.preprocess).offsets())
            want_map = _reference_stitch(arr.shape[:2], tile, overlap,
                                         {o: np.full((tile, tile), v) for o, v in zip(offsets, tile_scores)})
            assert r.anomaly_map.shape == (128, 128)
            assert np.abs(r.anomaly_map - want_map).max() / np.abs(want_map).max() <= tol["image_scores"]
            assert r.anomaly_map.max() <= r.image_score * (1 + tol["image_scores"])
        assert manifest["calibration"]["pixel"]["threshold"] > 0  # calibrated on the same coarse maps


def test_tiling_is_covered_by_the_integrity_digest(tiled, tmp_path: Path) -> None:
    import shutil

    _, _, root, _ = tiled
    copy = tmp_path / "b"
    shutil.copytree(root / "bundle", copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["input"]["tiling"]["overlap"] = 8
    m["input"]["tiling"]["stride"] = [56, 56]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="integrity|digest"):
        load_manifest(copy, verify=True)


def test_cli_train_with_tiles_and_refusals(large_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adx_cli.app import app

    runner = CliRunner()
    base = ["train", str(large_dataset), "-c", "weave", "--set", "backbone=test_efficientnet", "--set", "weights=random"]
    ok = runner.invoke(app, base + ["-o", str(tmp_path / "m"), "--tile", "64", "--tile-overlap", "16", "-q"])
    assert ok.exit_code == 0, ok.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["preprocess"]["tiling"]["overlap"] == 16
    bad = runner.invoke(app, base + ["-o", str(tmp_path / "n"), "--tile", "64", "--image-size", "96", "-q"])
    assert bad.exit_code != 0 and "contradicts" in bad.output
    bad = runner.invoke(app, base + ["-o", str(tmp_path / "n"), "--working-size", "96", "-q"])
    assert bad.exit_code != 0 and "add --tile" in bad.output
