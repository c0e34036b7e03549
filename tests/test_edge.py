"""Edge speed past float32 exact search: int8 graphs, approximate and compressed FAISS banks with
search parameters, and sharded banks, each against its exact reference (float32 torch, exact
FAISS search, the unsharded bank)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import list_test_images

from adexport.export import export_bundle
from adexport.methods.base import TOLERANCE_EXACT, TOLERANCE_INT8
from adexport.quantize import quantize_image_subset
from adx_runtime.bundle import load_manifest
from adx_runtime.errors import ConfigError, ExportError
from adx_runtime.knn import FaissBank, ShardedBank, parse_search_params
from adx_runtime.predictor import Predictor

rng = np.random.default_rng(11)


# ------------------------------------------------------------------------------------------ int8
@pytest.fixture(scope="module")
def int8_bundle(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    return out, export_bundle(model_dir, out, quantize="int8", quantize_images=6)


def test_int8_graph_is_quantized_and_recorded(int8_bundle) -> None:
    import onnx

    out, m = int8_bundle
    q = m["quantization"]
    assert m["graph"]["precision"] == "int8" and q["format"] == "QDQ" and q["calibration"]["images"] == 6
    assert q["op_types_quantized"]["Conv"] > 0 and "Resize" not in q["op_types_quantized"]
    assert "Conv" not in q["op_types_in_float"]  # every convolution of the backbone is int8
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q["measured_error"] == {k: e["max_rel"] for k, e in m["parity"]["errors"].items()}
    assert load_manifest(out)["quantization"] == q


def test_int8_parity_against_float32_torch_is_within_the_int8_tolerance(int8_bundle, fitted, dataset: Path) -> None:
    import torch

    from adx_runtime.preprocess import load_image, stack

    out, m = int8_bundle
    assert m["parity"]["passed"] and m["parity"]["tolerance"] == TOLERANCE_INT8
    errs = m["parity"]["errors"]
    assert errs["features"]["max_rel"] > TOLERANCE_EXACT["features"]  # it is really not the float32 graph
    images = list_test_images(dataset)
    ref = fitted.reference(torch.from_numpy(stack([load_image(p, fitted.preprocess) for p in images])))
    got = Predictor.load(out).predict(images)
    scale = np.abs(ref.image_scores.numpy()).max()
    assert np.abs(got.image_scores - ref.image_scores.numpy()).max() / scale <= TOLERANCE_INT8["image_scores"]


def test_int8_above_its_tolerance_writes_nothing(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="(?s)parity check failed on ONNX Runtime \\(cpu\\), int8 graph.*features"):
        export_bundle(model_dir, tmp_path / "b", quantize="int8", quantize_images=2,
                      tolerance={"features": 1e-3, "image_scores": 1.0, "maps": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_int8_options_are_checked(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--quantize 'int4' is not known; valid: int8"):
        export_bundle(model_dir, tmp_path / "b", quantize="int4")
    with pytest.raises(ConfigError, match="--quantize-images must be >= 1, got 0"):
        export_bundle(model_dir, tmp_path / "b", quantize="int8", quantize_images=0)


def test_quantize_image_subset_spreads_over_the_set() -> None:
    paths = [Path(f"{i:03d}.png") for i in range(10)]
    assert quantize_image_subset(paths[::-1], 3) == [Path("000.png"), Path("004.png"), Path("009.png")]
    assert quantize_image_subset(paths, 50) == paths


# --------------------------------------------------------------------------- approximate banks
@pytest.mark.parametrize("index_type,params", [("SQ8", {}), ("IVF4,Flat", {"nprobe": 2}),
                                               ("IVF4,PQ8x4", {"nprobe": 4}), ("HNSW16", {"efSearch": 32})])
def test_compressed_bank_is_measured_and_its_search_params_recorded(model_dir: Path, tmp_path: Path,
                                                                    index_type: str, params: dict) -> None:
    m = export_bundle(model_dir, tmp_path / "b", index_type=index_type, search_params=params, accept_approximate=True)
    bank = m["scoring"]["bank"]
    assert bank["index_type"] == index_type and bank["search_params"] == params and not bank["exact"]
    a = bank["approximation"]
    assert a["queries"] == 4 * 64 and 0.0 <= a["recall_at_1"] <= 1.0 and a["distance_rel_error"] >= 0.0
    assert m["parity"]["passed"]
    p = Predictor.load(tmp_path / "b")
    if "nprobe" in params:
        import faiss

        assert faiss.extract_index_ivf(p.scorer.bank.index).nprobe == params["nprobe"]


def test_ivf_with_every_list_probed_at_inference_equals_exact_search(model_dir: Path, bundle: Path,
                                                                     tmp_path: Path, dataset: Path) -> None:
    """nprobe overridden at inference: probing all 4 lists is exhaustive, so scores equal Flat's."""
    export_bundle(model_dir, tmp_path / "ivf", index_type="IVF4,Flat", search_params={"nprobe": 1},
                  accept_approximate=True, tolerance={"features": 1e-4, "image_scores": 1.0, "maps": 1.0})
    images = list_test_images(dataset)
    exact = Predictor.load(bundle).predict(images)
    full = Predictor.load(tmp_path / "ivf", search_params={"nprobe": 4}).predict(images)
    np.testing.assert_allclose(full.image_scores, exact.image_scores, rtol=1e-5)
    np.testing.assert_allclose(full.anomaly_maps, exact.anomaly_maps, rtol=1e-5, atol=1e-6)


def test_an_index_above_the_approximation_tolerance_is_refused_unless_accepted(model_dir: Path, tmp_path: Path) -> None:
    coarse = dict(index_type="PQ1x2")  # one 2-bit code for the whole 80-dim vector: 4 distinct reconstructions
    with pytest.raises(ExportError, match=r"approximate index 'PQ1x2' .* misses exact search on 256 held-out normal "
                                          r"queries: .*--accept-approximate"):
        export_bundle(model_dir, tmp_path / "refused", **coarse)
    assert list(tmp_path.iterdir()) == []
    m = export_bundle(model_dir, tmp_path / "accepted", **coarse, accept_approximate=True,
                      tolerance={"features": 1e-4, "image_scores": 1.0, "maps": 1.0})
    a = m["scoring"]["bank"]["approximation"]
    assert not a["passed"] and a["accepted_above_tolerance"] and a["distance_rel_error"] > a["tolerance"]["distance_rel_error"]


def test_search_params_that_do_not_apply_are_refused(bundle: Path, npz_bundle: Path, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nprobe=8 does not apply to this bank's index \(IndexFlat"):
        Predictor.load(bundle, search_params={"nprobe": 8})
    with pytest.raises(ConfigError, match="'nlist' is not known; valid: nprobe, efSearch"):
        Predictor.load(bundle, search_params={"nlist": 8})
    with pytest.raises(ConfigError, match="bank is 'npz', searched exactly"):
        Predictor.load(npz_bundle, search_params={"nprobe": 8})
    with pytest.raises(ConfigError, match="searches exactly: drop it"):
        export_bundle(model_dir, tmp_path / "b", search_params={"nprobe": 8})
    assert parse_search_params(["nprobe=16", "efSearch=64"]) == {"nprobe": 16, "efSearch": 64}
    with pytest.raises(ConfigError, match="NAME=NUMBER"):
        parse_search_params(["nprobe"])


# ------------------------------------------------------------------------------------ shards
def test_sharded_bank_returns_exactly_the_unsharded_results(tmp_path: Path) -> None:
    import faiss

    bank = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((300, 24)).astype(np.float32)
    whole = faiss.IndexFlatL2(24)
    whole.add(bank)
    faiss.write_index(whole, str(tmp_path / "whole.faiss"))
    paths = []
    for i, (a, b) in enumerate([(0, 333), (333, 700), (700, 1000)]):
        part = faiss.IndexFlatL2(24)
        part.add(bank[a:b])
        paths.append(tmp_path / f"s{i}.faiss")
        faiss.write_index(part, str(paths[-1]))
    ref, sharded = FaissBank.load(tmp_path / "whole.faiss"), ShardedBank.load(paths)
    assert sharded.size == 1000 and sharded.dim == 24
    for k in (1, 5):
        d_ref, i_ref = ref.search(queries, k)
        d, i = sharded.search(queries, k)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_array_equal(d, d_ref)
    ids = np.array([0, 332, 333, 699, 700, 999, 5])
    np.testing.assert_array_equal(sharded.reconstruct(ids), bank[ids])


def test_exact_faiss_banks_are_searched_by_numpy_on_the_cpu_with_the_same_neighbours(tmp_path: Path) -> None:
    """A Flat FAISS bank (plain or sharded) on the CPU is searched by numpy: the neighbours FAISS
    finds, at the distances FAISS gives; an approximate index stays with FAISS."""
    import faiss

    from adx_runtime.knn import NumpyBank, load_bank

    bank = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((700, 24)).astype(np.float32)  # more than one chunk of queries
    whole = faiss.IndexFlatL2(24)
    whole.add(bank)
    faiss.write_index(whole, str(tmp_path / "whole.faiss"))
    paths = []
    for i, (a, b) in enumerate([(0, 400), (400, 1000)]):
        part = faiss.IndexFlatL2(24)
        part.add(bank[a:b])
        paths.append(tmp_path / f"s{i}.faiss")
        faiss.write_index(part, str(paths[-1]))
    ref = FaissBank.load(tmp_path / "whole.faiss")
    for got in (load_bank(tmp_path / "whole.faiss", "faiss"), load_bank(paths, "faiss")):
        assert isinstance(got, NumpyBank) and got.backend.startswith("numpy (exact search of the FAISS Flat bank")
        for k in (1, 4):
            d_ref, i_ref = ref.search(queries, k)
            d, i = got.search(queries, k)
            np.testing.assert_array_equal(i, i_ref)
            np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.reconstruct(np.array([0, 399, 400, 999])), bank[[0, 399, 400, 999]])
    hnsw = faiss.index_factory(24, "HNSW8")
    hnsw.add(bank)
    faiss.write_index(hnsw, str(tmp_path / "hnsw.faiss"))
    assert isinstance(load_bank(tmp_path / "hnsw.faiss", "faiss"), FaissBank)


def test_sharded_bundle_scores_exactly_as_the_unsharded_one(model_dir: Path, bundle: Path, tmp_path: Path,
                                                            dataset: Path) -> None:
    m = export_bundle(model_dir, tmp_path / "sharded", shards=3)
    bank = m["scoring"]["bank"]
    assert [s["file"] for s in bank["shards"]] == [f"memory_bank.shard{i:02d}.faiss" for i in range(3)]
    assert sum(s["size"] for s in bank["shards"]) == bank["size"] and "file" not in bank
    images = list_test_images(dataset)
    a, b = Predictor.load(bundle).predict(images), Predictor.load(tmp_path / "sharded").predict(images)
    np.testing.assert_array_equal(b.image_scores, a.image_scores)
    np.testing.assert_array_equal(b.anomaly_maps, a.anomaly_maps)
    with pytest.raises(ConfigError, match="--shards must be between 1 and the bank size"):
        export_bundle(model_dir, tmp_path / "bad", shards=0)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_export_int8_and_eval_compare(model_dir: Path, bundle: Path, dataset: Path, tmp_path: Path) -> None:
    from test_cli import invoke

    out = tmp_path / "i8"
    r = invoke("export", model_dir, "--out", out, "--quantize", "int8", "--quantize-images", "4", "-q")
    assert r.exit_code == 0, r.output
    assert re.search(r"int8 graph \(QDQ\): \d+ Conv quantized, activation ranges from 4 training images", r.output)
    assert json.loads((out / "manifest.json").read_text())["quantization"]["calibration"]["images"] == 4
    r = invoke("eval", out, dataset, "-c", "weave", "--compare", bundle, "-q")
    assert r.exit_code == 0, r.output
    assert "B - A" in r.output and "image AUROC" in r.output and "AUPRO" in r.output
    r = invoke("infer", bundle, list_test_images(dataset)[0], "--search-param", "nprobe=2", "-q")
    assert r.exit_code == 1 and "does not apply to this bank's index" in r.output


# ------------------------------------------------------------------------------------- SPADE
@pytest.fixture(scope="module")
def spade_fitted(dataset: Path):
    from adexport.fit_pipeline import train

    from conftest import TINY

    return train(dataset, "weave", "spade", options={**TINY, "k": 5, "k_pixel": 2}, holdout=0.25)


def test_spade_k_pixel_searches_the_nearest_images_only(spade_fitted, dataset: Path, tmp_path: Path) -> None:
    """Reference: the pixel distance to the k_pixel nearest gallery images by brute force (numpy)."""
    import torch

    from adx_runtime.preprocess import load_image, stack

    m = export_bundle(spade_fitted, tmp_path / "b")
    assert m["scoring"]["k"] == 5 and m["scoring"]["k_pixel"] == 2 and m["parity"]["passed"]
    images = list_test_images(dataset)[:3]
    x = stack([load_image(p, spade_fitted.preprocess) for p in images])
    with torch.no_grad():
        feat, fmap = (t.numpy().astype(np.float64) for t in spade_fitted.graph()(torch.from_numpy(x)))
    gallery_img = spade_fitted.image_features.numpy().astype(np.float64)
    gallery_maps = spade_fitted.feature_maps.numpy().astype(np.float64)
    p = Predictor.load(tmp_path / "b")
    raw = p.runner.run(x)
    got = p.scorer(raw).patch_maps.reshape(len(x), -1)
    for b in range(len(x)):
        nearest = np.argsort(np.linalg.norm(gallery_img - feat[b], axis=1))[:2]
        g = gallery_maps[nearest].reshape(-1, gallery_maps.shape[-1])
        ref = np.sqrt(((fmap[b][:, None, :] - g[None]) ** 2).sum(-1)).min(axis=1)
        np.testing.assert_allclose(got[b], ref, rtol=1e-4, atol=1e-4)


def test_spade_pixel_coreset_is_a_greedy_coreset_searched_exactly(dataset: Path, tmp_path: Path) -> None:
    """pixel_coreset r: the bundle holds r of all training map vectors (the greedy coreset of them,
    not a random subset) in one exact index, and each position's score is its distance to the
    nearest of them (numpy brute force); the image score is the k-nearest-images one, unchanged."""
    import torch

    from adexport.coreset import greedy_coreset
    from adexport.fit_pipeline import train
    from adx_runtime.preprocess import load_image, stack

    from conftest import TINY

    fitted = train(dataset, "weave", "spade", options={**TINY, "k": 5, "pixel_coreset": 0.1}, holdout=0.25)
    N, HW, D = fitted.feature_maps.shape
    vectors = fitted.feature_maps.numpy().reshape(N * HW, D)
    expected = vectors[greedy_coreset(vectors, round(0.1 * N * HW), seed=fitted.config.seed)]
    np.testing.assert_array_equal(fitted.pixel_bank.numpy(), expected)
    m = export_bundle(fitted, tmp_path / "b")
    g = m["scoring"]["gallery"]
    assert m["parity"]["passed"] and "maps_file" not in g and "k_pixel" not in m["scoring"]
    assert g["pixel_bank"]["size"] == len(expected) and g["pixel_bank"]["exact"] and g["pixel_coreset"] == 0.1
    assert not (tmp_path / "b" / "gallery_maps.npz").exists()

    images = list_test_images(dataset)[:3]
    x = stack([load_image(p, fitted.preprocess) for p in images])
    with torch.no_grad():
        feat, fmap = (t.numpy().astype(np.float64) for t in fitted.graph()(torch.from_numpy(x)))
    p = Predictor.load(tmp_path / "b")
    raw = p.runner.run(x)
    out = p.scorer(raw)
    got = out.patch_maps.reshape(len(x), -1)
    bank = expected.astype(np.float64)
    for b in range(len(x)):
        ref = np.sqrt(((fmap[b][:, None, :] - bank[None]) ** 2).sum(-1)).min(axis=1)
        np.testing.assert_allclose(got[b], ref, rtol=1e-4, atol=1e-4)
    assert p.scorer.pixels.backend.startswith("numpy")  # the CPU searches the Flat coreset with numpy ...
    p.scorer.pixels = FaissBank.load(tmp_path / "b" / g["pixel_bank"]["file"])  # ... a GPU with FAISS: the same
    np.testing.assert_allclose(p.scorer(raw).patch_maps, out.patch_maps, rtol=1e-4, atol=1e-4)
    images_only = fitted.image_features.numpy().astype(np.float64)
    for b in range(len(x)):
        d = np.sort(np.linalg.norm(images_only - feat[b], axis=1))[:5]
        assert out.image_scores[b] == pytest.approx(d.mean(), rel=1e-4)


def test_spade_pixel_coreset_above_its_presample_cap_selects_among_a_sample(dataset: Path) -> None:
    """A gallery of more map vectors than pixel_coreset_presample (a tiled one holds about a
    million) chooses its coreset among a seeded sample of that many, as PatchCore's bank does: the
    bank is r of the sample, every vector of it a training map vector."""
    from adexport.coreset import presample_indices, select_coreset
    from adexport.fit_pipeline import train

    from conftest import TINY

    fitted = train(dataset, "weave", "spade", options={**TINY, "k": 5, "pixel_coreset": 0.1,
                                                       "pixel_coreset_presample": 300}, holdout=0.25)
    N, HW, D = fitted.feature_maps.shape
    assert N * HW > 300
    vectors = fitted.feature_maps.numpy().reshape(N * HW, D)
    bank = fitted.pixel_bank.numpy()
    assert len(bank) == 30 and fitted.report.sizes["pixel_bank"] == 30
    np.testing.assert_array_equal(bank, vectors[select_coreset(vectors, 0.1, presample=300, seed=fitted.config.seed)])
    pool = {v.tobytes() for v in vectors[presample_indices(N * HW, 300, fitted.config.seed)]}
    assert all(v.tobytes() in pool for v in bank)


def test_spade_pixel_coreset_options_are_checked() -> None:
    from adexport.methods.spade import SpadeConfig

    with pytest.raises(ConfigError, match="pixel_coreset_presample"):
        SpadeConfig(pixel_coreset=0.1, pixel_coreset_presample=-1)

    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="pixel_coreset must be a fraction"):
            SpadeConfig(pixel_coreset=bad)
    with pytest.raises(ConfigError, match="set one of them"):
        SpadeConfig(pixel_coreset=0.1, k_pixel=3)


def test_spade_image_gallery_takes_an_approximate_index(spade_fitted, tmp_path: Path) -> None:
    m = export_bundle(spade_fitted, tmp_path / "b", index_type="HNSW8", search_params={"efSearch": 16})
    bank = m["scoring"]["gallery"]["images_bank"]
    assert bank["index_type"] == "HNSW8" and bank["approximation"]["queries"] == 4 and m["parity"]["passed"]
    with pytest.raises(ConfigError, match="spade does not use --shards"):
        export_bundle(spade_fitted, tmp_path / "c", shards=2)
