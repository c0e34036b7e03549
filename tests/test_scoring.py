"""Scorer pieces against exact references on seeded data: FAISS and numpy search against brute
force, the runtime's map post-processing against torch, the coreset against a naive greedy loop,
PatchCore's projection and reweighting against their definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adexport.coreset import greedy_coreset
from adexport.methods.feature_pooling import channel_pool_matrix
from adexport.methods.reference_scoring import nearest, reference_image_scores, reference_postprocess
from adexport.methods.patchcore import projection_matrix
from adx_runtime.knn import FaissBank, NumpyBank, load_bank
from adx_runtime.postprocess import (MapPostprocessor, PostprocessSpec, bilinear_matrix, blur_matrix,
                                     image_scores_from_maps)
from adx_runtime.scorers.knn import reweight

rng = np.random.default_rng(0)


def brute_force(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, axis=1), ids


@pytest.fixture(scope="module")
def bank_data() -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((500, 24)).astype(np.float32), rng.standard_normal((300, 24)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 3])
def test_numpy_and_faiss_search_equal_brute_force(bank_data, tmp_path: Path, k: int) -> None:
    """FAISS's own search, the runtime's FAISS wrapper and its numpy search, each against brute
    force. ``load_bank`` searches a Flat FAISS bank on the CPU with numpy, so FAISS itself is
    called directly here: otherwise no FAISS search would be tested at all."""
    import faiss

    bank, q = bank_data
    d_ref, i_ref = brute_force(q, bank, k)
    index = faiss.IndexFlatL2(24)
    index.add(bank)
    d2, i = index.search(q, k)  # FAISS returns squared L2 distances
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(np.sqrt(np.maximum(d2, 0)), d_ref, rtol=1e-4, atol=1e-5)
    faiss.write_index(index, str(tmp_path / "b.faiss"))
    np.savez(tmp_path / "b.npz", memory_bank=bank)
    via_numpy = load_bank(tmp_path / "b.faiss", "faiss")
    assert via_numpy.backend.startswith("numpy")  # what the runtime picks for a Flat bank on the CPU
    via_faiss = FaissBank.load(tmp_path / "b.faiss")
    assert via_faiss.backend == "faiss-cpu"
    for b in (via_faiss, via_numpy, load_bank(tmp_path / "b.npz", "npz")):
        d, i = b.search(q, k)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(b.reconstruct(i_ref[:5, 0]), bank[i_ref[:5, 0]])


def test_numpy_bank_chunks_agree(bank_data) -> None:
    bank, q = bank_data
    a = NumpyBank(bank, chunk=7).search(q, 2)
    b = NumpyBank(bank).search(q, 2)
    np.testing.assert_array_equal(a[1], b[1])


def test_ivf_index_reconstructs_through_its_direct_map(bank_data, tmp_path: Path) -> None:
    import faiss

    bank, _ = bank_data
    index = faiss.index_factory(24, "IVF4,Flat")
    index.train(bank)
    index.add(bank)
    faiss.write_index(index, str(tmp_path / "ivf.faiss"))
    b = FaissBank.load(tmp_path / "ivf.faiss")
    np.testing.assert_array_equal(b.reconstruct(np.array([0, 17, 499])), bank[[0, 17, 499]])


def test_torch_reference_knn_equals_brute_force(bank_data) -> None:
    bank, q = bank_data
    d, i = nearest(torch.from_numpy(q), torch.from_numpy(bank), 3)
    d_ref, i_ref = brute_force(q, bank, 3)
    np.testing.assert_array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-5)


# ---------------------------------------------------------------------------- map post-processing
@pytest.mark.parametrize("grid,out,sigma", [((8, 8), (64, 64), 4.0), ((7, 5), (56, 40), 2.5), ((4, 4), (16, 16), 4.0)])
def test_runtime_map_equals_torch_interpolate_and_blur(grid, out, sigma) -> None:
    patch = rng.random((3, *grid)).astype(np.float32)
    ref = reference_postprocess(torch.from_numpy(patch), PostprocessSpec.gaussian(grid, sigma), out).numpy()
    got = MapPostprocessor(PostprocessSpec.gaussian(grid, sigma), out)(patch)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("smoothing", [{"type": "gaussian", "sigma": 2.0}, {"type": "mean", "size": 5},
                                       {"type": "mean", "size": 1}, {"type": "none"}])
def test_smoothing_at_input_size_equals_scipy(smoothing) -> None:
    """A map already at the input size (the ``map`` kind) is only smoothed; scipy is the reference
    (mode 'mirror' is reflect without repeating the edge, the runtime's and torch's padding)."""
    from scipy import ndimage

    spec = PostprocessSpec.from_dict({"patch_grid": [24, 20], "smoothing": smoothing, "image_score": {"rule": "max"}})
    maps = rng.random((2, 24, 20)).astype(np.float32)
    got = MapPostprocessor(spec, (24, 20))(maps)
    for m, g in zip(maps, got):
        if smoothing["type"] == "gaussian":
            ref = ndimage.gaussian_filter(m.astype(np.float64), smoothing["sigma"], mode="mirror", truncate=4.0)
        elif smoothing["type"] == "mean":
            ref = ndimage.uniform_filter(m.astype(np.float64), smoothing["size"], mode="mirror")
        else:
            ref = m
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    torch_ref = reference_postprocess(torch.from_numpy(maps), spec, (24, 20)).numpy()
    np.testing.assert_allclose(got, torch_ref, rtol=1e-5, atol=1e-6)


def test_image_score_rules() -> None:
    maps = rng.random((3, 10, 10)).astype(np.float32)
    top = np.sort(maps.reshape(3, -1), axis=1)[:, -7:].mean(axis=1)
    spec = PostprocessSpec.from_dict({"patch_grid": [10, 10], "smoothing": {"type": "none"},
                                      "image_score": {"rule": "mean_top_k", "k": 7}})
    np.testing.assert_allclose(image_scores_from_maps(maps, spec), top, rtol=1e-6)
    np.testing.assert_allclose(reference_image_scores(torch.from_numpy(maps), spec).numpy(), top, rtol=1e-6)
    spec_max = PostprocessSpec.from_dict({"patch_grid": [10, 10], "smoothing": {"type": "none"},
                                          "image_score": {"rule": "max"}})
    np.testing.assert_array_equal(image_scores_from_maps(maps, spec_max), maps.reshape(3, -1).max(axis=1))


@pytest.mark.parametrize("bad,match", [
    ({"smoothing": {"type": "median"}}, "smoothing 'median' is not known"),
    ({"smoothing": {"type": "mean", "size": 4}}, "odd size"),
    ({"image_score": {"rule": "mean_top_k"}}, "needs k"),
    ({"patch_grid": None}, "without a map must supply its image score"),
    ({"smoothing": "gaussian"}, "malformed"),
])
def test_malformed_postprocess_sections_are_refused(bad, match) -> None:
    from adx_runtime.errors import BundleError

    d = {"patch_grid": [4, 4], "smoothing": {"type": "gaussian", "sigma": 1.0}, "image_score": {"rule": "max"}, **bad}
    with pytest.raises(BundleError, match=match):
        PostprocessSpec.from_dict(d)


def test_bilinear_matrix_equals_torch() -> None:
    x = torch.from_numpy(np.random.default_rng(2).random((1, 1, 1, 9), dtype=np.float32))
    ref = F.interpolate(x, size=(1, 31), mode="bilinear", align_corners=False)[0, 0, 0].numpy()
    np.testing.assert_allclose(bilinear_matrix(31, 9) @ x[0, 0, 0].numpy(), ref, rtol=1e-6, atol=1e-7)


def test_blur_preserves_constants_and_mass_of_an_impulse() -> None:
    m = blur_matrix(50, 4.0)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)  # a constant map stays constant
    impulse = np.zeros(50)
    impulse[25] = 1.0
    out = m @ impulse
    assert out.argmax() == 25 and abs(out.sum() - 1.0) < 1e-12


# ---------------------------------------------------------------------------------------- coreset
def naive_greedy(z: np.ndarray, n: int, first: int) -> list[int]:
    chosen = [first]
    mind = np.linalg.norm(z - z[first], axis=1)
    for _ in range(n - 1):
        nxt = int(mind.argmax())
        chosen.append(nxt)
        mind = np.minimum(mind, np.linalg.norm(z - z[nxt], axis=1))
    return chosen


def test_coreset_equals_naive_greedy_k_center() -> None:
    x = rng.standard_normal((400, 16)).astype(np.float32)
    got = greedy_coreset(x, 40, projection_dim=None, seed=3)
    first = int(np.random.default_rng(3).integers(400))
    assert got.tolist() == naive_greedy(x.astype(np.float64), 40, first)


def test_coreset_is_deterministic_and_covers_rare_clusters() -> None:
    """Patches of a rare texture (small clusters) must be in the coreset; random sampling misses them."""
    r = np.random.default_rng(5)
    centres = r.standard_normal((30, 64)) * 10
    sizes = [1500] + [10] * 29  # one common appearance, 29 rare ones
    x = np.concatenate([c + r.standard_normal((n, 64)) * 0.3 for c, n in zip(centres, sizes)]).astype(np.float32)
    a = greedy_coreset(x, 60, projection_dim=16, seed=1)
    assert np.array_equal(a, greedy_coreset(x, 60, projection_dim=16, seed=1))
    assert not np.array_equal(a, greedy_coreset(x, 60, projection_dim=16, seed=2))
    assert len(set(a.tolist())) == 60
    cluster = np.repeat(np.arange(30), sizes)
    assert set(cluster[a].tolist()) == set(range(30))  # every appearance is represented
    random_pick = np.random.default_rng(0).choice(len(x), 60, replace=False)
    radius = lambda idx: brute_force(x, x[idx], 1)[0].max()  # noqa: E731
    assert radius(a) < 0.5 * radius(random_pick)


# ------------------------------------------------------------------------------------- PatchCore
def test_channel_pool_matrix_equals_adaptive_avg_pool() -> None:
    x = torch.from_numpy(np.random.default_rng(3).random((5, 152), dtype=np.float32))
    for c_out in (128, 64, 152, 200):
        ref = F.adaptive_avg_pool1d(x[:, None, :], c_out)[:, 0]
        torch.testing.assert_close(x @ channel_pool_matrix(152, c_out).T, ref)


def test_projection_pools_each_stage_then_the_concatenation() -> None:
    a = torch.from_numpy(np.random.default_rng(4).random((3, 40), dtype=np.float32))
    b = torch.from_numpy(np.random.default_rng(5).random((3, 112), dtype=np.float32))
    ref = F.adaptive_avg_pool1d(torch.cat([F.adaptive_avg_pool1d(a[:, None], 96), F.adaptive_avg_pool1d(b[:, None], 96)], -1), 96)[:, 0]
    torch.testing.assert_close(torch.cat([a, b], 1) @ projection_matrix([40, 112], 96).T, ref)
    assert projection_matrix([40, 112], None) is None


def test_reweighting_is_equation_7() -> None:
    m_test = rng.standard_normal((2, 6)).astype(np.float32)
    support = rng.standard_normal((2, 3, 6)).astype(np.float32)
    s_star = np.array([2.0, 5.0], np.float32)
    d = np.linalg.norm(support - m_test[:, None], axis=-1)
    expected = (1 - np.exp(d[:, 0]) / np.exp(d).sum(1)) * s_star
    np.testing.assert_allclose(reweight(m_test, support, s_star), expected, rtol=1e-6)
