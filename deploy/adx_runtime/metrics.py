"""Evaluation metrics for anomaly detection: image/pixel AUROC, F1-max, PRO curve and AUPRO.

Runs in the torch-free runtime. numpy is imported here; scikit-learn and scipy are imported only
when a metric is computed (they come with ``pip install 'adexport[eval]'``), so importing this
module costs nothing and works on a scoring-only install.

Conventions shared by every function:

* label / mask value 1 (or True) means anomalous, 0 (or False) normal;
* a higher score means more anomalous, and a threshold ``t`` flags a sample or pixel when
  ``score >= t``;
* a metric that cannot be defined for the data given (one class only, no anomalous region, ...)
  raises :class:`MetricUndefined`, whose message says why; callers print ``n/a (<message>)``;
* inputs of the wrong shape, non-binary labels or non-finite scores raise
  :class:`~adx_runtime.errors.ConfigError`.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from adx_runtime.errors import AdxError, ConfigError, DependencyError

__all__ = [
    "MetricUndefined",
    "aupro",
    "f1_max",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
]


class MetricUndefined(AdxError):
    """The metric has no value for this data (for example AUROC with a single class present)."""


# --------------------------------------------------------------------------------------------
# Optional dependencies
# --------------------------------------------------------------------------------------------


def _eval_deps(feature: str) -> tuple[ModuleType, ModuleType]:
    """Import ``sklearn.metrics`` and ``scipy.ndimage`` for ``feature`` or raise DependencyError.

    Imported lazily so that scoring-only installs (no ``eval`` extra) can import this module.
    """
    try:
        import scipy.ndimage
        import sklearn.metrics
    except ImportError as exc:
        # The CLI prints the message without a traceback, so the cause goes into the message.
        raise DependencyError(
            f"{feature} needs scikit-learn and scipy: pip install 'adexport[eval]' ({exc})"
        ) from exc
    return sklearn.metrics, scipy.ndimage


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _as_binary(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as a bool array; it must be bool or hold only the values 0 and 1."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ConfigError(f"{name} must be bool or numeric 0/1; got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        examples = ", ".join(str(v) for v in np.unique(arr[bad])[:5])
        raise ConfigError(
            f"{name} must be bool or contain only 0 (normal) and 1 (anomalous); got values such "
            f"as {examples} (for 8-bit mask images use mask > 0)"
        )
    return arr != 0


def _as_scores(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as a finite floating array (float32 is kept: sorting it is cheaper)."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must be real numbers; got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        raise ConfigError(
            f"{name} contain {int(arr.size - finite.sum())} NaN or infinite values; "
            "every score must be a finite number"
        )
    return arr


def _check_shapes(
    a: np.ndarray, b: np.ndarray, names: tuple[str, str], ndim: int, layout: str
) -> None:
    """Raise ConfigError unless ``a`` and ``b`` have the same shape with ``ndim`` axes."""
    if a.ndim != ndim or b.ndim != ndim or a.shape != b.shape:
        raise ConfigError(
            f"{names[0]} and {names[1]} must both have shape {layout}; "
            f"got {names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)}"
        )


def _labels_and_scores(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-image ``labels`` (N,) and ``scores`` (N,)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    _check_shapes(labels, scores, ("labels", "scores"), 1, "(N,)")
    return _as_binary(labels, "labels"), _as_scores(scores, "scores")


def _masks_and_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ground-truth ``masks`` (N, H, W) and anomaly ``maps`` (N, H, W)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    _check_shapes(masks, maps, ("masks", "maps"), 3, "(N, H, W)")
    return _as_binary(masks, "masks"), _as_scores(maps, "maps")


# --------------------------------------------------------------------------------------------
# AUROC and F1
# --------------------------------------------------------------------------------------------


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image-level scores.

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous image.
        scores: (N,) image anomaly scores, higher = more anomalous.

    Returns:
        ``sklearn.metrics.roc_auc_score(labels, scores)``: the probability that a random
        anomalous image scores above a random normal one, ties counting one half. Exact (every
        distinct score is a threshold; no binning).

    Raises:
        MetricUndefined: unless both classes are present.
        ConfigError: shapes differ or are not (N,), labels not binary, scores not finite.
    """
    labels, scores = _labels_and_scores(labels, scores)
    n_anomalous = int(labels.sum())
    n_normal = labels.size - n_anomalous
    if n_anomalous == 0 or n_normal == 0:
        raise MetricUndefined(
            "image AUROC needs both normal and anomalous images; "
            f"got {n_normal} normal, {n_anomalous} anomalous"
        )
    skm, _ = _eval_deps("image AUROC")
    return float(skm.roc_auc_score(labels, scores))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Area under the ROC curve of all pixels of all images pooled together.

    Args:
        masks: (N, H, W) bool or 0/1 ground truth, 1 = anomalous pixel.
        maps: (N, H, W) anomaly maps, higher = more anomalous.

    Returns:
        ``roc_auc_score(masks.ravel(), maps.ravel())``. Exact (no binning of the scores).

    Raises:
        MetricUndefined: unless there are both normal and anomalous pixels.
        ConfigError: shapes differ or are not (N, H, W), masks not binary, maps not finite.
    """
    masks, maps = _masks_and_maps(masks, maps)
    n_anomalous = int(masks.sum())
    n_normal = masks.size - n_anomalous
    if n_anomalous == 0 or n_normal == 0:
        why = " (all masks are empty)" if n_anomalous == 0 and masks.size else ""
        raise MetricUndefined(
            "pixel AUROC needs both normal and anomalous pixels; "
            f"got {n_normal} normal, {n_anomalous} anomalous{why}"
        )
    skm, _ = _eval_deps("pixel AUROC")
    return float(skm.roc_auc_score(masks.ravel(), maps.ravel()))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 score over all thresholds, and the threshold that reaches it.

    F1(t) = 2 P R / (P + R) with P, R the precision and recall of the rule ``score >= t``
    (0 where P + R = 0). Every distinct score is tried (``sklearn.metrics.precision_recall_curve``).

    Args:
        labels: (N,) bool or 0/1, 1 = anomalous.
        scores: (N,) anomaly scores, higher = more anomalous.

    Returns:
        ``(best_f1, threshold)``; ``threshold`` is one of the scores. When several thresholds
        reach the same best F1, the lowest of them is returned.

    Raises:
        MetricUndefined: no anomalous sample (recall, hence F1, is undefined).
        ConfigError: shapes differ or are not (N,), labels not binary, scores not finite.
    """
    labels, scores = _labels_and_scores(labels, scores)
    n_anomalous = int(labels.sum())
    if n_anomalous == 0:
        raise MetricUndefined(
            "F1 needs at least one anomalous sample; "
            f"got {labels.size} normal, 0 anomalous"
        )
    skm, _ = _eval_deps("F1")
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    # The final (precision 1, recall 0) point has no threshold; thresholds are increasing.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))  # first maximum = lowest threshold among ties
    return float(f1[best]), float(thresholds[best])


# --------------------------------------------------------------------------------------------
# PRO curve and AUPRO
# --------------------------------------------------------------------------------------------


def _pro_curve(masks: np.ndarray, maps: np.ndarray, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """PRO curve of validated bool ``masks`` and finite ``maps`` (both (N, H, W))."""
    _, ndimage = _eval_deps(feature)
    n_images = masks.shape[0]
    if masks.size == 0:
        raise MetricUndefined(
            f"{feature} needs at least one pixel; got masks of shape {tuple(masks.shape)}"
        )

    # Regions are the 8-connected components of each image's mask. Labelling the whole stack at
    # once with a structure that has neighbours only inside the middle slice keeps components
    # from connecting across images and numbers them globally (1..n_regions, 0 = normal).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, n_regions = ndimage.label(masks, structure=structure)
    if n_regions == 0:
        raise MetricUndefined(
            f"{feature} needs at least one anomalous region; all {n_images} masks are empty"
        )
    regions = regions.ravel()
    region_size = np.bincount(regions, minlength=n_regions + 1)
    n_normal = int(region_size[0])
    if n_normal == 0:
        raise MetricUndefined(
            f"{feature} needs normal pixels to measure false positives; every pixel of the "
            f"{n_images} masks is anomalous"
        )
    # A pixel of region r adds 1/|r| to that region's overlap; PRO is the mean over regions, so
    # the sum of these weights over the flagged pixels, divided by n_regions at the end.
    weight = np.empty(n_regions + 1, dtype=np.float64)
    weight[0] = 0.0
    weight[1:] = 1.0 / region_size[1:]

    # Lower the threshold through every pixel score once, from the highest score down.
    scores = maps.ravel()
    order = np.argsort(scores)[::-1]
    scores = scores[order]
    regions = regions[order]
    del order
    overlap_sum = np.cumsum(weight[regions])
    false_pos = np.cumsum(regions == 0)  # integer counts keep the FPR exact
    del regions
    # Pixels with equal scores switch together: keep the last index of each run of equal scores.
    last = np.flatnonzero(scores[1:] != scores[:-1])
    last = np.append(last, scores.size - 1)

    fprs = np.empty(last.size + 1, dtype=np.float64)
    pros = np.empty(last.size + 1, dtype=np.float64)
    fprs[0] = pros[0] = 0.0  # threshold above every score: nothing flagged
    fprs[1:] = false_pos[last] / n_normal
    # Rounding in the running sum may push PRO a hair above 1; it is a fraction.
    np.minimum(overlap_sum[last] / n_regions, 1.0, out=pros[1:])
    # The lowest threshold flags every pixel: exactly (1, 1), whatever the rounding.
    fprs[-1] = pros[-1] = 1.0
    return fprs, pros


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap (PRO) against false positive rate, as in the MVTec AD evaluation.

    Definition (Bergmann et al. 2021, "The MVTec Anomaly Detection Dataset"): the ground-truth
    regions are the 8-connected components of each image's mask. For a threshold t a pixel is
    flagged when ``map >= t``, and

    * PRO(t) = mean over all regions of all images of (flagged pixels of the region / its size);
    * FPR(t) = flagged pixels among all mask == 0 pixels / number of mask == 0 pixels.

    Images whose mask is empty contribute normal pixels only.

    Args:
        masks: (N, H, W) bool or 0/1 ground truth, 1 = anomalous pixel.
        maps: (N, H, W) anomaly maps, higher = more anomalous.

    Returns:
        ``(fprs, pros)``, float64 arrays of equal length: one point for every distinct score
        (all pixels with that score flagged at once), preceded by (0, 0). FPR and PRO do not
        decrease along the curve, which ends at (1, 1). Exact apart from float rounding in the
        running sum of PRO (about 1e-16 per anomalous pixel).

    Raises:
        MetricUndefined: no anomalous region in any mask, or no normal pixel.
        ConfigError: shapes differ or are not (N, H, W), masks not binary, maps not finite.
    """
    masks, maps = _masks_and_maps(masks, maps)
    return _pro_curve(masks, maps, "PRO curve")


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the polyline (x, y) for x in [x[0], limit].

    ``x`` is non-decreasing with ``x[0] <= limit <= x[-1]``. When ``limit`` falls inside a
    segment, the curve is interpolated linearly there. A vertical step at ``x == limit`` adds no
    area.
    """
    k = int(np.searchsorted(x, limit, side="right"))  # x[:k] <= limit < x[k:]
    xs, ys = x[:k], y[:k]
    if xs[-1] < limit:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs = np.append(xs, limit)
        ys = np.append(ys, y_limit)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AU-PRO).

    The area under :func:`pro_curve` for FPR from 0 to ``fpr_limit`` (trapezoid rule; the curve
    is interpolated linearly at ``fpr_limit``), divided by ``fpr_limit``, so that a map scoring
    every anomalous pixel above every normal pixel gets 1.0 and a constant map gets
    ``fpr_limit / 2``.

    Args:
        masks: (N, H, W) bool or 0/1 ground truth, 1 = anomalous pixel.
        maps: (N, H, W) anomaly maps, higher = more anomalous.
        fpr_limit: upper integration limit, in (0, 1]; 0.3 is the MVTec AD standard.

    Raises:
        MetricUndefined: no anomalous region in any mask, or no normal pixel.
        ConfigError: bad ``fpr_limit``, shapes differ or are not (N, H, W), masks not binary,
            maps not finite.
    """
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ConfigError(f"fpr_limit must be in (0, 1]; got {fpr_limit!r}")
    masks, maps = _masks_and_maps(masks, maps)
    fprs, pros = _pro_curve(masks, maps, "AUPRO")
    return _area_up_to(fprs, pros, limit) / limit
