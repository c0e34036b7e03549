"""``adx train``: dataset -> fitted method -> calibration on held-out normal images -> folder.

The pipeline around any method's ``fit``; the epoch loop that trained networks share inside their
``fit`` is :mod:`adexport.training`."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from adexport.data import holdout_split, image_batches, image_tiles, working_tiles_source
from adexport.methods import get_method
from adexport.methods.base import FittedMethod, make_config, merge_options
from adx_runtime import calibration
from adx_runtime.datasets import GOOD, CategorySplit, Sample, load_split
from adx_runtime.errors import ConfigError, DatasetError, ImageDecodeError
from adx_runtime.images import decode_image
from adx_runtime.postprocess import image_scores_from_maps
from adx_runtime.preprocess import PreprocessConfig, TilingSpec
from adx_runtime.progress import SILENT, Progress
from adx_runtime.tiling import Stitcher, TileMaps, coarse_map, smooth, tile_layout
from adexport.training import TrainingRun

#: Images used by the export parity check (taken from test/ when it exists).
PARITY_IMAGES = 8


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an explicit ``cuda`` must exist."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"training device {device!r} is not known; valid: auto, cpu, cuda")
    return device


def parity_samples(split: CategorySplit, holdout: list[Sample], n: int = PARITY_IMAGES) -> list[Sample]:
    """A few real images for export's parity check: test images of every kind, else held-out ones."""
    if not split.test:
        return holdout[:n]
    by_kind: dict[str, list[Sample]] = {}
    for s in split.test:
        by_kind.setdefault(s.defect, []).append(s)
    kinds = [GOOD] + [k for k in sorted(by_kind) if k != GOOD] if GOOD in by_kind else sorted(by_kind)
    picked: list[Sample] = []
    depth = 0
    while len(picked) < n and any(len(by_kind[k]) > depth for k in kinds):
        picked += [by_kind[k][depth] for k in kinds if len(by_kind[k]) > depth][: n - len(picked)]
        depth += 1
    return picked


def decodable(samples: list[Sample], progress: Progress = SILENT, preprocess: PreprocessConfig | None = None
              ) -> tuple[list[Sample], list[tuple[str, str]]]:
    """(samples that decode, (file, reason) of those that do not), each bad one reported. With a
    tiled ``preprocess``, an image its contract cannot tile (smaller than a tile, or not the fixed
    working size of statistics kept per tile position) is a bad one too."""
    ok: list[Sample] = []
    bad: list[tuple[str, str]] = []
    for s in samples:
        try:
            if preprocess is not None and preprocess.tiling is not None:
                working_tiles_source(s.path, preprocess)
            else:
                decode_image(s.path)
            ok.append(s)
        except ImageDecodeError as exc:
            bad.append((exc.path, exc.reason))
            progress.note(f"skipped {exc.path}: {exc.reason}")
    return ok, bad


def _reference_batches(fitted: FittedMethod, samples: list[Sample], batch_size: int,
                       progress: Progress) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(raw image scores ``(b,)``, final maps ``(b, H, W)`` or None) of the torch model, per batch.

    A tiled model scores each image's tiles with the torch model and stitches their raw maps with
    the runtime's own code (:mod:`adx_runtime.tiling`), so thresholds come from the same stitched
    scores the runtime computes; each image is one batch (its maps may differ in size)."""
    if fitted.preprocess.tiling is None:
        for x in image_batches([s.path for s in samples], fitted.preprocess, batch_size, progress=progress,
                               description="Calibrating on held-out normal images"):
            ref = fitted.reference(x, exact=False)
            yield ref.image_scores.numpy(), None if ref.anomaly_maps is None else ref.anomaly_maps.numpy()
        return
    spec = fitted.postprocess()
    tile_maps = TileMaps(spec, fitted.preprocess.input_size) if spec.has_map else None
    with progress.task("Calibrating on held-out normal images (tiled)", len(samples)) as advance:
        for s in samples:
            source = working_tiles_source(s.path, fitted.preprocess)
            layout = tile_layout(source.shape[:2], fitted.preprocess)
            tiles = image_tiles(s.path, fitted.preprocess)
            stitcher = Stitcher(layout) if tile_maps is not None else None
            tile_scores = []
            for start in range(0, len(tiles), batch_size):
                ref = fitted.reference(torch.from_numpy(np.stack(tiles[start:start + batch_size])), exact=False,
                                       tiles=torch.arange(start, min(start + batch_size, len(tiles))))
                tile_scores.append(ref.image_scores.numpy())
                if stitcher is not None:
                    if ref.patch_maps is None:
                        raise ConfigError(f"{fitted.name}'s reference gives no raw maps to stitch; it cannot be tiled")
                    for j, tile in enumerate(tile_maps(ref.patch_maps.numpy()), start):  # type: ignore[misc]
                        stitcher.add(j, tile)
            if stitcher is not None:
                full = smooth(stitcher.result(), spec)[None]
            else:  # an image-level-only method: the coarse map of its tile scores, as the runtime makes it
                full = coarse_map(layout, np.concatenate(tile_scores))[None]
            if spec.image_score == "scorer":
                score = np.array([np.concatenate(tile_scores).max()], np.float32)
            else:
                score = image_scores_from_maps(full, spec)  # type: ignore[arg-type]
            advance(1)
            yield score, full


@torch.no_grad()
def calibrate(fitted: FittedMethod, samples: list[Sample], *, batch_size: int = 8,
              progress: Progress = SILENT, sigmas: float = calibration.DEFAULT_SIGMAS) -> dict[str, Any]:
    """Raw-score statistics of held-out normal images, thresholds and normalisation."""
    scores, maxima, pixels = [], [], []
    rng = np.random.default_rng(0)
    for image_scores, full in _reference_batches(fitted, samples, batch_size, progress):
        scores.append(image_scores)
        if full is not None:
            maps = full.reshape(len(full), -1)
            maxima.append(maps.max(axis=1))
            pixels.append(rng.choice(maps.ravel(), size=min(maps.size, 4096), replace=False))
    image = calibration.threshold_entry(np.concatenate(scores), sigmas)
    pixel = None  # an image-level-only method has no pixel threshold
    if maxima:
        pixel = calibration.threshold_entry(np.concatenate(maxima), sigmas)
        pix = np.concatenate(pixels)
        pixel["normal_pixel_median"] = float(np.median(pix))
        pixel["scale"] = calibration.scale_for(pixel["threshold"], {"median": pixel["normal_pixel_median"],
                                                                    "std": float(pix.std())})
        pixel["rule"] += " (per-image map maxima); scale from the median held-out pixel"
    return {
        "holdout_images": len(samples),
        "image": image,
        "pixel": pixel,
        "normalisation": calibration.NORMALISATION_RULE,
        "history": [{"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "action": "fit",
                     "image_threshold": image["threshold"],
                     "pixel_threshold": pixel["threshold"] if pixel else None}],
    }


def train(
    dataset: str | Path,
    category: str | None = None,
    method: str = "patchcore",
    *,
    options: dict[str, Any] | None = None,
    holdout: float = 0.2,
    device: str = "cpu",
    feature_batch_size: int = 8,
    progress: Progress = SILENT,
    run: TrainingRun | None = None,
    tiling: TilingSpec | None = None,
) -> FittedMethod:
    """Fit ``method`` on ``train/good`` of one category and calibrate it on a held-out part.

    Args:
        options: method config overrides (``None`` values mean "the method's default").
        holdout: fraction of ``train/good`` kept out of the fit to calibrate thresholds.
        feature_batch_size: images per forward pass when extracting features or calibrating (a
            trained method's optimiser batch is its own ``batch_size`` option).
        run: a trained method's checkpoint file and resume flag (ignored by one-pass methods).
        tiling: cut images into tiles of the method's input size (``image_size``) instead of resizing
            them to it (:class:`adx_runtime.preprocess.TilingSpec`); recorded in the input contract.
    """
    entry = get_method(method)
    config = make_config(entry.config_cls, options or {})
    if (isinstance(feature_batch_size, bool) or not isinstance(feature_batch_size, int)
            or not 1 <= feature_batch_size <= 65536):
        raise ConfigError(f"--batch-size (images per forward pass) must be an integer >= 1 and at most 65536, got "
                          f"{feature_batch_size!r}; the default is 8")
    split = load_split(dataset, category, need_test=False)
    fit_samples, held_out = holdout_split(split.train, holdout, seed=getattr(config, "seed", 0))
    device = resolve_device(device)
    # The hold-out is decoded before the fit (it is small): a bad file there is skipped and
    # reported like one in the fit part, and none decodable stops here, not after the whole fit.
    held_out, held_bad = decodable(held_out, progress)
    if not held_out:
        raise DatasetError(
            f"none of the {len(held_bad)} train/good images held out for calibration could be decoded "
            f"({held_bad[0][0]}: {held_bad[0][1]}{' and others' if len(held_bad) > 1 else ''}); "
            "fix or remove the broken files in train/good (nothing was fitted)"
        )
    extra = {"run": run} if entry.trained else {}
    if tiling is not None:
        extra["tiling"] = tiling
    fitted = entry.fit(config, fit_samples, device=device, feature_batch_size=feature_batch_size, progress=progress,
                       **extra)
    if fitted.preprocess.tiling is not None and fitted.preprocess.tiling.fixed_size is not None:
        # statistics per tile position: the fit fixed the working size, which the hold-out must have too
        held_out, wrong = decodable(held_out, progress, fitted.preprocess)
        held_bad += wrong
        if not held_out:
            raise DatasetError(f"none of the train/good images held out for calibration can be scored by this model "
                               f"({wrong[0][0]}: {wrong[0][1]}); give images of one size (nothing was saved)")
    t0 = time.perf_counter()
    fitted.calibration = calibrate(fitted, held_out, batch_size=feature_batch_size, progress=progress)
    fitted.report.phases["calibration"] = time.perf_counter() - t0
    fit_bad = list(fitted.report.skipped)
    if fitted.preprocess.tiling is not None:  # a method that counts what it fitted on counts tiles
        fitted.report.sizes["fit_images"] = len(fit_samples) - len(fit_bad)
    fitted.report.skipped = fit_bad + held_bad
    fitted.report.sizes["skipped_images"] = len(fitted.report.skipped)
    if held_bad:
        fitted.calibration["skipped_images"] = [{"file": f, "reason": r} for f, r in held_bad]
    fitted.dataset = {
        "root": str(Path(dataset).resolve()),
        "category": split.category,
        "train_images": len(split.train),
        "fit_images": len(fit_samples) - len(fit_bad),
        "holdout_images": len(held_out),
        "holdout_files": [str(s.path.resolve()) for s in held_out],
        "parity_images": [str(s.path.resolve()) for s in parity_samples(split, held_out)],
        "device": device,
    }
    return fitted


def format_fit_summary(fitted: FittedMethod, fit_seconds: float, out: str | Path) -> str:
    """What ``adx train`` prints after a fit: data, time per phase, sizes, loss, threshold."""
    r = fitted.report
    source = f"backbone {fitted.backbone.weights}" if fitted.backbone else "no backbone"
    lines = [f"fitted {fitted.name} on {fitted.dataset['category']} ({fitted.dataset['device']}): "
             f"{r.sizes.get('fit_images')} images, {fitted.dataset['holdout_images']} held out for calibration, "
             f"{source}",
             "fit time {:.2f} s ({})".format(fit_seconds, ", ".join(f"{k} {v:.2f} s" for k, v in r.phases.items())),
             "sizes: " + ", ".join(f"{k} {v}" for k, v in r.sizes.items())]
    if r.loss_history:
        h = r.loss_history
        shown = h if len(h) <= 12 else h[:6] + h[-6:]
        lines.append(f"loss per epoch ({len(h)} epochs{', first and last 6' if len(h) > 12 else ''}): "
                     + " ".join(f"{v:.4g}" for v in shown) + f"; curve in {Path(out) / 'loss_curve.png'}")
    if r.skipped:
        shown = "; ".join(f"{Path(f).name}: {why}" for f, why in r.skipped[:3])
        more = f" and {len(r.skipped) - 3} more" if len(r.skipped) > 3 else ""
        lines.append(f"skipped {len(r.skipped)} undecodable train/good images ({shown}{more}); listed in "
                     f"{Path(out) / 'model.json'}")
    lines += r.notes
    cal = fitted.calibration["image"]
    lines.append(f"image threshold {cal['threshold']:.4g} ({cal['rule']})")
    if not fitted.calibration.get("pixel"):
        lines.append("no pixel threshold: this method scores whole images and has no anomaly map")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def run_training(
    dataset: str | Path,
    out: str | Path,
    category: str | None = None,
    method: str = "patchcore",
    *,
    shortcuts: dict[str, Any] | None = None,
    assignments: Sequence[str] = (),
    holdout: float = 0.2,
    device: str = "auto",
    feature_batch_size: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress = SILENT,
    tiling: TilingSpec | None = None,
) -> str:
    """``adx train``: options from shortcut flags and ``--set KEY=VALUE``, fit, save; returns the
    summary to print. A trained method checkpoints into ``OUT.checkpoint.pt`` (removed once the
    model folder is written) and resumes from it with ``resume``."""
    from adexport.fitted import check_replaceable, save_fitted  # noqa: PLC0415
    from adexport.training import checkpoint_path  # noqa: PLC0415

    entry = get_method(method)
    options = merge_options(entry.config_cls, shortcuts, assignments)
    out = Path(out)
    check_replaceable(out, overwrite)  # before the fit, not after it
    run = None
    if entry.trained:
        run = TrainingRun(checkpoint_path(out), resume=resume)
    elif resume:
        raise ConfigError(f"--resume applies to trained networks; {method} fits in one pass and has no checkpoints")
    t0 = time.perf_counter()
    fitted = train(dataset, category, method, options=options, holdout=holdout, device=device,
                   feature_batch_size=feature_batch_size, progress=progress, run=run, tiling=tiling)
    fit_seconds = time.perf_counter() - t0
    save_fitted(fitted, out, overwrite=overwrite)
    if run is not None and run.checkpoint is not None:
        run.checkpoint.unlink(missing_ok=True)  # the finished model folder supersedes it
    return format_fit_summary(fitted, fit_seconds, out)
