"""Tests for adx_runtime.metrics: AUROC, F1-max, PRO curve and AUPRO.

Expected values are worked out by hand; the arithmetic is in the comment next to each literal.
Float results are compared to 1e-12 (the literals are exact fractions; the code divides floats).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from adx_runtime.errors import ConfigError, DependencyError
from adx_runtime.metrics import (
    MetricUndefined,
    aupro,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
)

TOL = 1e-12

# --------------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------------

# One 4x4 image, one region: the 2x2 block top left (4 pixels); 12 normal pixels.
SINGLE_MASK = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)[None]
# Region pixels score 0.9, 0.8, 0.5, 0.2. Normal pixels: 0.7, 0.5 (tied with a region pixel),
# and ten at 0.1.
SINGLE_MAP = np.array(
    [
        [0.9, 0.8, 0.7, 0.1],
        [0.5, 0.2, 0.5, 0.1],
        [0.1, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.1],
    ]
)[None]
# Thresholds, highest first:      (FPR,   PRO)
#   0.9: region 1/4              -> (0,     1/4)
#   0.8: region 2/4              -> (0,     1/2)
#   0.7: + normal 1              -> (1/12,  1/2)
#   0.5: + normal 1 and region 1 -> (2/12,  3/4)   the tie switches both at once
#   0.2: region 4/4              -> (1/6,   1)
#   0.1: all pixels              -> (1,     1)
SINGLE_FPRS = [0.0, 0.0, 0.0, 1 / 12, 1 / 6, 1 / 6, 1.0]
SINGLE_PROS = [0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]


# Two 2x4 images (16 pixels, 12 normal) with regions of different sizes at the same place:
# A = image 0 pixel (0,0), size 1; B = image 1 pixels (0,0), (0,1), (1,0), size 3.
MULTI_MASKS = np.array(
    [
        [[1, 0, 0, 0], [0, 0, 0, 0]],
        [[1, 1, 0, 0], [1, 0, 0, 0]],
    ],
    dtype=bool,
)
# A scores 0.2; B scores 0.9, 0.8, 0.3; one normal pixel 0.5 (image 0, (1,3)), the rest 0.1.
MULTI_MAPS = np.array(
    [
        [[0.2, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.5]],
        [[0.9, 0.8, 0.1, 0.1], [0.3, 0.1, 0.1, 0.1]],
    ]
)
# Thresholds:  PRO = mean(A overlap, B overlap)
#   0.9: B 1/3          -> (0,    (0 + 1/3)/2 = 1/6)
#   0.8: B 2/3          -> (0,    (0 + 2/3)/2 = 1/3)
#   0.5: normal 1       -> (1/12, 1/3)
#   0.3: B 1            -> (1/12, (0 + 1)/2 = 1/2)
#   0.2: A 1            -> (1/12, 1)
#   0.1: everything     -> (1,    1)
MULTI_FPRS = [0.0, 0.0, 0.0, 1 / 12, 1 / 12, 1 / 12, 1.0]
MULTI_PROS = [0.0, 1 / 6, 1 / 3, 1 / 3, 1 / 2, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# Slow references straight from the definitions
# --------------------------------------------------------------------------------------------


def _reference_pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loop over every distinct threshold and evaluate PRO and FPR from the definition."""
    from scipy import ndimage

    # (image index, boolean region mask) for every 8-connected component, image by image.
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        pros.append(float(np.mean([flagged[i][r].sum() / r.sum() for i, r in regions])))
        fprs.append(flagged[normal].sum() / normal.sum())
    return np.array(fprs), np.array(pros)


def _reference_area(fprs: np.ndarray, pros: np.ndarray, limit: float) -> float:
    """Segment by segment: integrate each linear piece over its part of [0, limit]."""
    area = 0.0
    for x0, y0, x1, y1 in zip(fprs[:-1], pros[:-1], fprs[1:], pros[1:]):
        if x0 >= limit:
            break
        if x1 == x0:
            continue  # vertical step, no area
        x_end = min(x1, limit)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        area += (x_end - x0) * (y0 + y_end) / 2
    return area / limit


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int, blobs: int) -> np.ndarray:
    """Masks with up to ``blobs`` random rectangles each (they may touch or overlap)."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, blobs + 1)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            dy, dx = rng.integers(1, 4), rng.integers(1, 4)
            masks[i, y : y + dy, x : x + dx] = True
    return masks


# --------------------------------------------------------------------------------------------
# PRO curve / AUPRO
# --------------------------------------------------------------------------------------------


def test_pro_curve_single_region_points():
    fprs, pros = pro_curve(SINGLE_MASK, SINGLE_MAP)
    np.testing.assert_allclose(fprs, SINGLE_FPRS, rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, SINGLE_PROS, rtol=0, atol=TOL)


def test_aupro_single_region():
    # Area to 0.3: segments (0,1/2)-(1/12,1/2): 1/12 * 1/2 = 1/24;
    # (1/12,1/2)-(1/6,3/4): 1/12 * (1/2+3/4)/2 = 5/96; (1/6,1)-(0.3,1): 0.3 - 1/6 = 2/15.
    # 1/24 + 5/96 + 2/15 = 109/480; / 0.3 = 109/144.
    assert aupro(SINGLE_MASK, SINGLE_MAP) == pytest.approx(109 / 144, abs=TOL)
    # Whole curve: 1/24 + 5/96 + (1 - 1/6) = 89/96.
    assert aupro(SINGLE_MASK, SINGLE_MAP, fpr_limit=1.0) == pytest.approx(89 / 96, abs=TOL)


def test_aupro_limit_on_a_vertical_step_adds_nothing_from_the_step():
    # fpr_limit = 1/6 is where PRO jumps from 3/4 to 1: area 1/24 + 5/96 = 3/32;
    # / (1/6) = 9/16. Counting the jump's top (1) instead would not change a trapezoid area, but
    # stopping before the point (1/6, 3/4) would give (1/24)/(1/6) = 1/4.
    assert aupro(SINGLE_MASK, SINGLE_MAP, fpr_limit=1 / 6) == pytest.approx(9 / 16, abs=TOL)


def test_pro_curve_several_regions_points():
    fprs, pros = pro_curve(MULTI_MASKS, MULTI_MAPS)
    np.testing.assert_allclose(fprs, MULTI_FPRS, rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, MULTI_PROS, rtol=0, atol=TOL)


def test_aupro_is_a_per_region_mean_not_a_pixel_mean():
    # Per region: (1/12)*(1/3) + (0.3 - 1/12)*1 = 1/36 + 13/60 = 11/45; / 0.3 = 22/27 = 0.8148...
    # Pooling the 4 anomalous pixels instead (PRO 1/4, 1/2, 1/2, 3/4, 1 at the same thresholds):
    # (1/12)*(1/2) + 13/60 = 31/120; / 0.3 = 31/36 = 0.8611...
    # The same result also shows that A and B, at the same place in two different images, are
    # not merged into one region of size 4 (that would be the pooled value).
    value = aupro(MULTI_MASKS, MULTI_MAPS)
    assert value == pytest.approx(22 / 27, abs=TOL)
    assert abs(value - 31 / 36) > 0.04


def test_regions_use_8_connectivity():
    # (0,0) touches (1,1) only diagonally: with 8-connectivity {(0,0),(1,1),(1,2)} is one region
    # of size 3; with 4-connectivity it would be {(0,0)} and {(1,1),(1,2)}.
    mask = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)[None]
    amap = np.array([[0.9, 0.5, 0.5], [0.5, 0.1, 0.1], [0.5, 0.5, 0.5]])[None]
    # 0.9: one pixel of three -> (0, 1/3)   [4-connectivity: mean(1, 0) = 1/2]
    # 0.5: all six normal pixels -> (1, 1/3); 0.1: everything -> (1, 1)
    fprs, pros = pro_curve(mask, amap)
    np.testing.assert_allclose(fprs, [0, 0, 1, 1], rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, [0, 1 / 3, 1 / 3, 1], rtol=0, atol=TOL)
    # PRO is 1/3 all the way from FPR 0 to 0.3: area 0.3 * 1/3, / 0.3 = 1/3.
    assert aupro(mask, amap) == pytest.approx(1 / 3, abs=TOL)


def test_empty_mask_adds_normal_pixels_only():
    # SINGLE plus an image with an empty mask: one pixel 0.95, fifteen 0.0. Normal pixels 12 + 16.
    empty_map = np.zeros((1, 4, 4))
    empty_map[0, 3, 3] = 0.95
    masks = np.concatenate([SINGLE_MASK, np.zeros((1, 4, 4), dtype=bool)])
    maps = np.concatenate([SINGLE_MAP, empty_map])
    # 0.95: (1/28, 0); 0.9: (1/28, 1/4); 0.8: (1/28, 1/2); 0.7: (2/28, 1/2);
    # 0.5: (3/28, 3/4); 0.2: (3/28, 1); 0.1: 3 + 10 normals -> (13/28, 1); 0.0: (1, 1).
    fprs, pros = pro_curve(masks, maps)
    expected_fprs = [0, 1 / 28, 1 / 28, 1 / 28, 2 / 28, 3 / 28, 3 / 28, 13 / 28, 1]
    expected_pros = [0, 0, 1 / 4, 1 / 2, 1 / 2, 3 / 4, 1, 1, 1]
    np.testing.assert_allclose(fprs, expected_fprs, rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, expected_pros, rtol=0, atol=TOL)
    # Area to 0.3: (1/28)*(1/2) = 1/56; (1/28)*(1/2+3/4)/2 = 5/224; (0.3 - 3/28)*1 = 27/140.
    # 4/224 + 5/224 + 27/140 = 261/1120; / 0.3 = 87/112.
    assert aupro(masks, maps) == pytest.approx(87 / 112, abs=TOL)


def test_all_masks_empty_is_undefined():
    masks = np.zeros((3, 4, 4), dtype=bool)
    maps = np.random.default_rng(0).random((3, 4, 4))
    with pytest.raises(MetricUndefined, match="all 3 masks are empty"):
        aupro(masks, maps)
    with pytest.raises(MetricUndefined, match="anomalous region"):
        pro_curve(masks, maps)


def test_no_normal_pixel_is_undefined():
    masks = np.ones((2, 3, 3), dtype=bool)
    maps = np.random.default_rng(0).random((2, 3, 3))
    with pytest.raises(MetricUndefined, match="normal pixels"):
        aupro(masks, maps)


def test_perfect_map_gives_one():
    rng = np.random.default_rng(1)
    masks = _random_masks(rng, 4, 12, 12, blobs=3)
    masks[0, 2:4, 2:4] = True  # at least one region
    # Every anomalous pixel in [0.6, 1), every normal one in [0, 0.5): PRO reaches 1 at FPR 0.
    maps = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.5 * rng.random(masks.shape))
    assert aupro(masks, maps) == pytest.approx(1.0, abs=TOL)
    assert aupro(masks, maps, fpr_limit=0.05) == pytest.approx(1.0, abs=TOL)


def test_constant_map_is_the_diagonal():
    maps = np.full(MULTI_MASKS.shape, 0.5)
    fprs, pros = pro_curve(MULTI_MASKS, maps)
    # One threshold flags everything at once: (0,0) -> (1,1).
    np.testing.assert_array_equal(fprs, [0.0, 1.0])
    np.testing.assert_array_equal(pros, [0.0, 1.0])
    # (0.5 * 0.3 * 0.3) / 0.3 = 0.15
    assert aupro(MULTI_MASKS, maps) == pytest.approx(0.15, abs=TOL)


def test_aupro_interpolates_at_the_limit():
    # 2x2: region = top row (2 pixels), 2 normal pixels. Scores: region 0.9, 0.5; normal 0.5, 0.1.
    mask = np.array([[1, 1], [0, 0]], dtype=bool)[None]
    amap = np.array([[0.9, 0.5], [0.5, 0.1]])[None]
    # 0.9: (0, 1/2); 0.5: (1/2, 1); 0.1: (1, 1). The limit 0.3 falls inside (0,1/2)-(1/2,1).
    fprs, pros = pro_curve(mask, amap)
    np.testing.assert_allclose(fprs, [0, 0, 0.5, 1], rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, [0, 0.5, 1, 1], rtol=0, atol=TOL)
    # PRO(0.3) = 1/2 + (1 - 1/2) * 0.3 / 0.5 = 0.8; area 0.3 * (0.5 + 0.8)/2 = 0.195; / 0.3 = 0.65.
    # (Stopping at the last point with FPR <= 0.3 would give 0; holding PRO at 1/2 would give 0.5.)
    assert aupro(mask, amap, fpr_limit=0.3) == pytest.approx(0.65, abs=TOL)
    # PRO(0.4) = 1/2 + 1/2 * 0.4/0.5 = 0.9; area 0.4 * (0.5 + 0.9)/2 = 0.28; / 0.4 = 0.7.
    assert aupro(mask, amap, fpr_limit=0.4) == pytest.approx(0.7, abs=TOL)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    masks = _random_masks(rng, 4, 9, 11, blobs=4)
    masks[0, 0, 0] = True  # at least one region
    masks[-1] = False  # and one image with an empty mask
    # Scores on a coarse grid so that many pixels tie, inside and across regions and normals.
    maps = np.round(rng.random(masks.shape), 1)
    maps = np.where(masks, np.minimum(maps + 0.2, 1.0), maps)  # a somewhat informative map
    ref_fprs, ref_pros = _reference_pro_curve(masks, maps)
    fprs, pros = pro_curve(masks, maps)
    assert fprs.shape == ref_fprs.shape
    np.testing.assert_allclose(fprs, ref_fprs, rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, ref_pros, rtol=0, atol=TOL)
    for limit in (0.3, 0.05, 0.5, 1.0):
        expected = _reference_area(ref_fprs, ref_pros, limit)
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=TOL)


def test_pro_curve_accepts_float32_and_int_masks():
    fprs, pros = pro_curve(SINGLE_MASK.astype(np.uint8), SINGLE_MAP.astype(np.float32))
    # Same ties in float32, so the same points.
    np.testing.assert_allclose(fprs, SINGLE_FPRS, rtol=0, atol=TOL)
    np.testing.assert_allclose(pros, SINGLE_PROS, rtol=0, atol=TOL)


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.5, float("nan")])
def test_aupro_rejects_bad_fpr_limit(limit):
    with pytest.raises(ConfigError, match="fpr_limit"):
        aupro(SINGLE_MASK, SINGLE_MAP, fpr_limit=limit)


# --------------------------------------------------------------------------------------------
# Validation shared by the pixel metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("func", [pixel_auroc, pro_curve, aupro])
def test_pixel_metrics_reject_mismatched_shapes(func):
    masks = np.zeros((2, 4, 4), dtype=bool)
    maps = np.zeros((2, 4, 5))
    with pytest.raises(ConfigError, match=r"masks \(2, 4, 4\) and maps \(2, 4, 5\)"):
        func(masks, maps)


@pytest.mark.parametrize("func", [pixel_auroc, pro_curve, aupro])
def test_pixel_metrics_reject_2d_input(func):
    with pytest.raises(ConfigError, match=r"\(N, H, W\).*masks \(4, 4\) and maps \(4, 4\)"):
        func(SINGLE_MASK[0], SINGLE_MAP[0])


@pytest.mark.parametrize("func", [pixel_auroc, aupro])
def test_pixel_metrics_reject_non_binary_masks(func):
    masks = SINGLE_MASK.astype(np.uint8) * 255
    with pytest.raises(ConfigError, match="255"):
        func(masks, SINGLE_MAP)


@pytest.mark.parametrize("func", [pixel_auroc, aupro])
def test_pixel_metrics_reject_nan_maps(func):
    maps = SINGLE_MAP.copy()
    maps[0, 3, 3] = np.nan
    with pytest.raises(ConfigError, match="1 NaN or infinite"):
        func(SINGLE_MASK, maps)


# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------


def test_image_auroc_hand_case():
    # Pairs (anomalous, normal): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4.
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(
        0.75, abs=TOL
    )
    # A tie counts one half: (0.5 vs 0.5) -> 1/2; with (0.5 vs 0.2) too -> (1/2 + 1)/2 = 3/4.
    assert image_auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5, abs=TOL)
    assert image_auroc(
        np.array([False, True, False]), np.array([0.5, 0.5, 0.2])
    ) == pytest.approx(0.75, abs=TOL)


def test_pixel_auroc_hand_case():
    # One anomalous pixel (0.9) against normals 0.2, 0.95, 0.1: wins 2 of 3 -> 2/3.
    masks = np.array([[[1, 0], [0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.2], [0.95, 0.1]]])
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3, abs=TOL)


def test_auroc_matches_sklearn_and_pair_count_on_random_data():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(42)
    masks = _random_masks(rng, 6, 16, 16, blobs=3)
    masks[0, :2, :2] = True
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 2)  # rounded: ties exist
    assert pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9
    )

    labels = rng.integers(0, 2, 80)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(80) + 0.4 * labels, 1)
    value = image_auroc(labels, scores)
    assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    # And from the definition, over all (anomalous, normal) pairs, ties counting 1/2.
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    pairs = np.mean((pos > neg) + 0.5 * (pos == neg))
    assert value == pytest.approx(pairs, abs=1e-12)


def test_auroc_one_class_is_undefined():
    with pytest.raises(MetricUndefined, match="got 12 normal, 0 anomalous"):
        image_auroc(np.zeros(12), np.linspace(0, 1, 12))
    with pytest.raises(MetricUndefined, match="got 0 normal, 3 anomalous"):
        image_auroc(np.ones(3, dtype=bool), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(MetricUndefined, match="all masks are empty"):
        pixel_auroc(np.zeros((2, 3, 3), dtype=bool), np.zeros((2, 3, 3)))
    with pytest.raises(MetricUndefined, match="0 normal"):
        pixel_auroc(np.ones((2, 3, 3), dtype=bool), np.zeros((2, 3, 3)))


def test_image_auroc_rejects_mismatched_shapes():
    with pytest.raises(ConfigError, match=r"labels \(3,\) and scores \(4,\)"):
        image_auroc(np.array([0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4]))


# --------------------------------------------------------------------------------------------
# F1-max
# --------------------------------------------------------------------------------------------


def test_f1_max_hand_case():
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    # F1 = 2TP / (2TP + FP + FN), 3 anomalous:
    #   t=0.8: TP0 FP1 -> 0;  t=0.7: TP1 FP1 FN2 -> 2/5;  t=0.6: TP2 FP1 FN1 -> 4/6;
    #   t=0.3: TP2 FP2 FN1 -> 4/7;  t=0.2: TP3 FP2 FN0 -> 6/8 = 0.75;  t=0.1: TP3 FP3 -> 6/9.
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(0.75, abs=TOL)
    assert threshold == 0.2


def test_f1_max_ties_pick_the_lowest_threshold():
    # Descending: 0.9 (1), 0.7 (0), 0.5 (0), 0.3 (1).
    #   t=0.9: TP1 FN1 -> 2/3;  t=0.7: TP1 FP1 FN1 -> 1/2;  t=0.5: 2/5;  t=0.3: TP2 FP2 -> 4/6.
    best, threshold = f1_max(np.array([1, 0, 0, 1]), np.array([0.9, 0.7, 0.5, 0.3]))
    assert best == pytest.approx(2 / 3, abs=TOL)
    assert threshold == 0.3


def test_f1_max_threshold_means_score_at_least_t_on_random_data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 60).astype(bool)
    labels[0] = True
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # ties
    best, threshold = f1_max(labels, scores)

    def f1_at(t: float) -> float:
        flagged = scores >= t
        tp = np.sum(flagged & labels)
        return 2 * tp / (2 * tp + np.sum(flagged & ~labels) + np.sum(~flagged & labels))

    assert best == pytest.approx(max(f1_at(t) for t in np.unique(scores)), abs=TOL)
    assert f1_at(threshold) == pytest.approx(best, abs=TOL)


def test_f1_max_without_anomalous_samples_is_undefined():
    with pytest.raises(MetricUndefined, match="at least one anomalous"):
        f1_max(np.zeros(5), np.linspace(0, 1, 5))


# --------------------------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------------------------


def test_missing_eval_extra_raises_dependency_error(monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    with pytest.raises(DependencyError, match=r"image AUROC needs scikit-learn and scipy: "
                       r"pip install 'adexport\[eval\]'"):
        image_auroc(np.array([0, 1]), np.array([0.1, 0.2]))
    with pytest.raises(DependencyError, match=r"^AUPRO needs scikit-learn and scipy"):
        aupro(SINGLE_MASK, SINGLE_MAP)


def test_import_loads_neither_torch_nor_the_eval_extra():
    code = (
        "import sys, adx_runtime.metrics\n"
        "loaded = [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
