"""The runtime Predictor: batches, bad images in a batch, thresholds and normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import list_test_images

from adx_runtime.calibration import normalise_scores
from adx_runtime.errors import ConfigError, ImageDecodeError
from adx_runtime.knn import FaissBank
from adx_runtime.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor.load(bundle)


def test_batched_equals_one_by_one(predictor: Predictor, dataset: Path) -> None:
    files = list_test_images(dataset)[:6]
    batch = predictor.predict(files)
    single = np.concatenate([predictor.predict([f]).image_scores for f in files])
    np.testing.assert_allclose(batch.image_scores, single, rtol=1e-5)
    assert batch.anomaly_maps.shape == (6, 64, 64) and batch.normalized_scores.shape == (6,)


def test_a_bad_image_in_a_batch_is_reported_and_the_rest_scored(predictor: Predictor, dataset: Path,
                                                                tmp_path: Path) -> None:
    files = list_test_images(dataset)[:5]
    bad = tmp_path / "broken.png"
    bad.write_bytes(files[0].read_bytes()[:150])
    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image")
    mixed = [files[0], bad, files[1], files[2], junk, files[3], files[4]]
    results = list(predictor.predict_files(mixed, batch_size=3))
    assert [r.path for r in results] == [str(p) for p in mixed]  # order kept
    assert [r.ok for r in results] == [True, False, True, True, False, True, True]
    assert "truncated or corrupt" in results[1].error and "not a recognised image" in results[4].error
    clean = predictor.predict(files).image_scores
    np.testing.assert_allclose([r.image_score for r in results if r.ok], clean, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_decoding_ahead_changes_nothing_but_the_overlap(predictor: Predictor, dataset: Path, tmp_path: Path,
                                                        batch_size: int) -> None:
    """The decode-ahead thread keeps input order, reports bad files in place, gives the scores of
    decoding on the calling thread, and an abandoned stream leaves no decode thread behind."""
    import threading

    files = list_test_images(dataset)[:6]
    bad = tmp_path / "broken.png"
    bad.write_bytes(files[0].read_bytes()[:150])
    mixed = [files[0], bad, *files[1:], bad, files[0]]
    runs = {ahead: list(predictor.predict_files(iter(mixed), batch_size=batch_size, decode_ahead=ahead))
            for ahead in (0, None, 4)}
    for ahead, results in runs.items():
        assert [r.path for r in results] == [str(p) for p in mixed], ahead
        assert [r.ok for r in results] == [p != bad for p in mixed], ahead
        np.testing.assert_array_equal([r.image_score for r in results if r.ok],
                                      [r.image_score for r in runs[0] if r.ok])
    stream = predictor.predict_files(mixed * 3, batch_size=batch_size, decode_ahead=3)
    next(stream)
    stream.close()  # the consumer stops early
    assert not [t for t in threading.enumerate() if t.name.startswith("adx-decode")]


def test_predict_raises_on_a_bad_image(predictor: Predictor, tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError, match="x.png"):
        predictor.predict([tmp_path / "x.png"])


def test_pil_and_array_inputs(predictor: Predictor, dataset: Path) -> None:
    f = list_test_images(dataset)[0]
    img = Image.open(f)
    a = predictor.predict([f]).image_scores
    np.testing.assert_array_equal(predictor.predict([img]).image_scores, a)
    np.testing.assert_array_equal(predictor.predict([np.asarray(img.convert("RGB"))]).image_scores, a)
    with pytest.raises(ConfigError, match=r"\(H, W, 3\) uint8"):
        predictor.predict([np.zeros((8, 8), np.float32)])


def test_threshold_override_moves_labels_and_keeps_half_at_threshold(bundle: Path, dataset: Path) -> None:
    files = list_test_images(dataset)
    default = Predictor.load(bundle)
    scores = default.predict(files).image_scores
    middle = float(np.median(scores))
    custom = Predictor.load(bundle, threshold=middle)
    pred = custom.predict(files)
    np.testing.assert_array_equal(pred.labels, scores >= middle)
    assert pred.threshold == middle
    assert float(normalise_scores(np.array([middle]), middle, custom.image_scale)[0]) == 0.5
    assert np.all((pred.normalized_scores >= 0.5) == pred.labels)


def test_normalised_scores_follow_the_manifest_rule(predictor: Predictor) -> None:
    cal = predictor.calibration["image"]
    t, s, med = cal["threshold"], cal["scale"], cal["stats"]["median"]
    raw = np.array([med, t, t + s, t + 10 * s, med - 10 * s], np.float32)
    np.testing.assert_allclose(normalise_scores(raw, t, s), [0.0, 0.5, 1.0, 1.0, 0.0], atol=1e-6)
    maps = predictor.normalized_maps(np.full((1, 64, 64), predictor.pixel_threshold, np.float32))
    np.testing.assert_allclose(maps, 0.5, atol=1e-6)


def test_npz_bank_scores_like_the_faiss_bank(bundle: Path, npz_bundle: Path, dataset: Path) -> None:
    """The npz bank (numpy brute force) against FAISS's own search of the FAISS bank. On the CPU the
    runtime searches a Flat FAISS bank with numpy as well, so the FAISS side is given FAISS's search
    back; otherwise both sides would run the same numpy code and the test would prove nothing."""
    files = list_test_images(dataset)
    with_faiss = Predictor.load(bundle)
    assert with_faiss.scorer.bank.backend.startswith("numpy")  # what the runtime picks on the CPU
    with_faiss.scorer.bank = FaissBank.load(bundle / with_faiss.manifest["scoring"]["bank"]["file"])
    assert with_faiss.scorer.bank.backend == "faiss-cpu"
    a = with_faiss.predict(files)
    b = Predictor.load(npz_bundle).predict(files)
    assert Predictor.load(npz_bundle).scorer.backend == "numpy"
    np.testing.assert_allclose(a.image_scores, b.image_scores, rtol=1e-4)
    np.testing.assert_allclose(a.anomaly_maps, b.anomaly_maps, rtol=1e-4, atol=1e-6)


def test_wrong_input_shape_is_refused(predictor: Predictor) -> None:
    with pytest.raises(ConfigError, match=r"input must be \(B, 3, 64, 64\)"):
        predictor.predict_tensor(np.zeros((1, 3, 32, 32), np.float32))
