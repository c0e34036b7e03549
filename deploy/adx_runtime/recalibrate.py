"""``adx calibrate``: reset a bundle's thresholds from a validation split, atomically, with history.

Two rules:

- ``f1``: the image threshold (and, with masks, the pixel threshold) that maximises F1 on the
  split's labelled images;
- ``fpr``: the lowest threshold at which at most a fraction ``fpr`` of the split's good images
  (good pixels, for the pixel threshold) is flagged.

A threshold that gives no verdict is refused unless ``force``: one that flags every good image of
the split (F1 is highest there when the model does not separate the classes and anomalous images
outnumber good ones) or detects none of its anomalous images. Warnings (kept in the history entry)
say when a large share of good images is flagged, when too few good images were given to measure
the asked ``fpr``, and when the data's category is not the one the bundle was trained on.

The split is the dataset's ``test/`` folder; keep a separate validation set in the same layout to
leave the test set untouched. Only the manifest's ``calibration`` section changes (it is not among
the sections whose digest is recorded), so the graph, bank and protected sections stay verified.
The section is changed in the manifest as it is on disk: a bundle of an older schema keeps its
schema. The read-modify-write holds the bundle's ``.manifest.lock``: two runs at once both land.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime import calibration, metrics
from adx_runtime.bundle import MANIFEST, load_manifest, manifest_lock, read_manifest, write_json_atomic
from adx_runtime.errors import ConfigError
from adx_runtime.evaluate import category_warning, evaluate
from adx_runtime.progress import SILENT, Progress

MODES = ("f1", "fpr")

#: Above this share of good images flagged, a new threshold is written with a warning: on a line
#: it would reject that share of good parts.
HIGH_FALSE_POSITIVE_RATE = 0.2

#: A false-positive rate is resolved by a split whose good images would show at least this many
#: false positives at that rate; with fewer, one image more or less moves the rate past it.
EXPECTED_FALSE_POSITIVES = 3


def fpr_threshold(normal_scores: np.ndarray, fpr: float) -> float:
    """Lowest threshold flagging at most ``floor(fpr * n)`` of ``n`` normal scores (score >= t)."""
    s = np.sort(np.asarray(normal_scores, np.float64).ravel())[::-1]
    allowed = int(np.floor(fpr * len(s) + 1e-9))
    if allowed >= len(s):
        return float(s[-1])
    # Just above the first normal score that must not be flagged; ties above it stay unflagged too.
    return float(np.nextafter(s[allowed], np.inf))


def rate_resolution_warning(n_good: int, fpr: float) -> str | None:
    """A warning when ``n_good`` good images are too few to measure a false-positive rate ``fpr``."""
    if fpr <= 0.0:
        return None  # "flag none of these good images" is what fpr 0 asks, and any n measures it
    need = math.ceil(EXPECTED_FALSE_POSITIVES / fpr - 1e-9)
    if n_good >= need:
        return None
    allowed = math.floor(fpr * n_good + 1e-9)
    return (f"{n_good} good images cannot measure a false-positive rate of {fpr:g}: at that rate they would show "
            f"{n_good * fpr:.2g} false positives, so the threshold only ensures that "
            f"{'none' if allowed == 0 else f'at most {allowed}'} of these {n_good} are flagged; measuring {fpr:g} "
            f"needs at least {need} good images (about {EXPECTED_FALSE_POSITIVES} false positives at that rate): "
            "add good images to the validation split")


def recalibrate(
    bundle: str | Path,
    dataset: str | Path,
    category: str | None = None,
    *,
    mode: str = "f1",
    fpr: float = 0.01,
    device: str = "cpu",
    batch_size: int = 8,
    progress: Progress = SILENT,
    force: bool = False,
) -> dict[str, Any]:
    """Compute new thresholds, rewrite the manifest atomically; returns the history entry.

    Raises ConfigError, with the manifest unchanged, for a threshold that gives no verdict (see the
    module's docstring) unless ``force``; the entry's ``warnings`` say what to look at otherwise.
    """
    if mode not in MODES:
        raise ConfigError(f"calibration mode {mode!r} is not known; valid: {', '.join(MODES)}")
    if mode == "fpr" and not 0.0 <= fpr < 1.0:
        raise ConfigError(f"--fpr must be in [0, 1), got {fpr}")
    root = Path(bundle)
    load_manifest(root)  # refuses a bad or tampered bundle before anything is scored
    ev = evaluate(root, dataset, category, device=device, bank_device="cpu", batch_size=batch_size, progress=progress)
    # Read, change and write the manifest under its lock, reading it again there: a second
    # `adx calibrate` that finished meanwhile has its history entry kept, not overwritten.
    with manifest_lock(root):
        read_manifest(root)  # still a valid, untampered manifest
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))  # as on disk, not upgraded
        entry = _apply(manifest, ev, mode, fpr, force=force)
        write_json_atomic(root / MANIFEST, manifest)
    return entry


def _apply(manifest: dict[str, Any], ev: Any, mode: str, fpr: float, *, force: bool = False) -> dict[str, Any]:
    """Set new thresholds from the scored split ``ev`` in ``manifest``; returns the history entry.

    Raises ConfigError before ``manifest`` is changed when the new image threshold gives no verdict
    and not ``force``."""
    ok = ev.scored
    labels = np.array([r.label for r in ok])
    scores = np.array([r.score for r in ok], np.float64)
    if not (labels == 0).any():
        raise ConfigError("the validation split has no good images; calibration needs test/good/")
    if mode == "f1" and not (labels == 1).any():
        raise ConfigError(f"--mode f1 needs anomalous images in test/<defect>/ and {ev.dataset} has only good ones; "
                          "add anomalous images, or use --mode fpr (it needs good images only)")

    if mode == "f1":
        new_image = metrics.f1_max(labels, scores)[1]
    else:
        new_image = fpr_threshold(scores[labels == 0], fpr)
    refusals = _no_verdict(labels, scores >= new_image, mode, ev)
    if refusals and not force:
        raise ConfigError(f"refusing the new image threshold {new_image:.4g} ({mode} on {len(ok)} images of "
                          f"{ev.dataset}): it {'; and it '.join(refusals)}; the bundle is unchanged. "
                          "Use more or other validation data of the bundle's category, or --mode fpr --fpr RATE; "
                          "--force writes it anyway")
    warnings = [w for w in [category_warning(manifest, ev.category)] if w]
    warnings += [f"the new image threshold {new_image:.4g}, written with --force, {r}" for r in refusals]
    n_good, n_good_flagged = int((labels == 0).sum()), int((scores[labels == 0] >= new_image).sum())
    # --mode fpr flags at most the share asked for; F1 picks one, and it can be most good parts.
    if mode == "f1" and HIGH_FALSE_POSITIVE_RATE < n_good_flagged / n_good < 1.0:
        warnings.append(f"the new image threshold {new_image:.4g} flags {n_good_flagged} of the {n_good} good images "
                        f"({n_good_flagged / n_good:.0%}) of this split: on a line it would reject about that share of "
                        "good parts (F1 weighs good and anomalous images by their counts in the split); to choose "
                        "the share, use --mode fpr --fpr RATE")
    if mode == "fpr" and (w := rate_resolution_warning(n_good, fpr)):
        warnings.append(w)

    cal = manifest["calibration"]
    old_image, old_pixel = cal["image"]["threshold"], (cal.get("pixel") or {}).get("threshold")
    new_pixel = None
    if ev.masks is not None and ev.maps is not None and cal.get("pixel"):
        if mode == "f1":
            new_pixel = metrics.f1_max(ev.masks.ravel(), ev.maps.ravel())[1]
        else:
            new_pixel = fpr_threshold(ev.maps[~ev.masks], fpr)

    cal["image"]["threshold"] = float(new_image)
    cal["image"]["scale"] = calibration.scale_for(new_image, cal["image"]["stats"])
    rule = f"F1-optimal on {len(ok)} images of {ev.dataset}" if mode == "f1" else \
        f"false-positive rate <= {fpr:g} on {int((labels == 0).sum())} good images of {ev.dataset}"
    cal["image"]["rule"] = rule
    if new_pixel is not None:
        cal["pixel"]["threshold"] = float(new_pixel)
        cal["pixel"]["scale"] = calibration.scale_for(
            new_pixel, {"median": cal["pixel"].get("normal_pixel_median", cal["pixel"]["stats"]["median"]),
                        "std": cal["pixel"]["stats"]["std"]})
        cal["pixel"]["rule"] = rule.replace("images", "images' pixels")
    predicted = scores >= new_image
    entry = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "action": "calibrate", "mode": mode, **({"fpr": fpr} if mode == "fpr" else {}),
        "dataset": ev.dataset, "category": ev.category, "n_images": len(ok),
        "image_threshold": {"old": old_image, "new": float(new_image)},
        "pixel_threshold": {"old": old_pixel, "new": new_pixel} if new_pixel is not None else None,
        "at_new_threshold": {
            "false_positive_rate": float(predicted[labels == 0].mean()),
            "true_positive_rate": float(predicted[labels == 1].mean()) if (labels == 1).any() else None,
        },
        "warnings": warnings,
        **({"forced": True} if force and refusals else {}),
    }
    cal.setdefault("history", []).append(entry)
    return entry


def _no_verdict(labels: np.ndarray, predicted: np.ndarray, mode: str, ev: Any) -> list[str]:
    """Why an image threshold gives no verdict on this split, each a phrase after "it" (empty when
    it does give one): it flags every good image, or it detects none of the anomalous ones."""
    out = []
    n_good, n_bad = int((labels == 0).sum()), int((labels == 1).sum())
    auroc = ev.metrics.get("image_auroc")
    separation = f" (image AUROC {auroc:.3f})" if isinstance(auroc, float) else ""
    if predicted[labels == 0].all():
        # --mode fpr with fpr < 1 always leaves the highest good score unflagged: this is F1's case.
        out.append(f"flags all {n_good} good images (100%) of the split, so every verdict would be 'anomalous' "
                   f"(F1 is highest when everything is flagged, as when the scores do not separate good from "
                   f"anomalous images here{separation} and anomalous images outnumber good ones)")
    if n_bad and not predicted[labels == 1].any():
        out.append(f"detects none of the {n_bad} anomalous images, so every verdict would be 'good' (they all score "
                   f"below what the good images allow{separation})")
    return out


def format_recalibration(entry: dict[str, Any], bundle: str | Path) -> str:
    """What ``adx calibrate`` prints: old and new thresholds and the rates at the new one."""
    it = entry["image_threshold"]
    lines = [f"image threshold {it['old']:.4g} -> {it['new']:.4g} ({entry['mode']} on {entry['n_images']} images)"]
    if entry["pixel_threshold"]:
        pt = entry["pixel_threshold"]
        lines.append(f"pixel threshold {pt['old']:.4g} -> {pt['new']:.4g}")
    a = entry["at_new_threshold"]
    tpr = "n/a" if a["true_positive_rate"] is None else f"{a['true_positive_rate']:.1%}"
    lines.append(f"at the new threshold on this split: {a['false_positive_rate']:.1%} of good flagged, "
                 f"{tpr} of anomalous detected")
    lines.append(f"rewrote {Path(bundle) / MANIFEST}")
    return "\n".join(lines)
