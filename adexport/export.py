"""``adx export``: a fitted model -> a bundle (docs/ARCHITECTURE.md, "The bundle").

The bundle is assembled in a hidden temporary folder: ONNX graph, scoring data, manifest. Then the
parity check loads it with the torch-free runtime and scores real dataset images both ways; above
the tolerance nothing is written. Only then is the folder renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import tempfile
import time
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Collection, Sequence

import numpy as np
import torch

from adexport.backbones import static_same_padding
from adexport.data import image_tiles
from adx_runtime.export_options import given_export_options
from adexport.fitted import load_fitted
from adexport.methods.base import (EXPORT_OPTIONS, TOLERANCE_EXACT, TOLERANCE_FP16, TOLERANCE_INT8, FittedMethod,
                                   config_to_dict)
from adexport.quantize import DEFAULT_QUANTIZE_IMAGES, QUANTIZE, quantize_image_subset, quantize_int8
from adx_runtime import __version__
from adx_runtime.bundle import (BUNDLE_FORMAT, MANIFEST, SCHEMA_VERSION, atomic_dir, check_replaceable, file_entry,
                                integrity_section, load_manifest, write_json_atomic)
from adx_runtime.datasets import load_split
from adx_runtime.errors import AdxError, BundleError, ConfigError, ExportError, ProviderError
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import PreprocessConfig, load_image, stack
from adx_runtime.progress import SILENT, Progress
from adx_runtime.kinds import SECTIONS, ScoringSection, parse_scoring
from adx_runtime.scorers import check_ef_search_covers_k
from adx_runtime.runners import OnnxRuntimeRunner
from adx_runtime.sessions import available_devices, tensorrt_provider_options

GRAPH_FILE = "model.onnx"
INPUT_NAME = "image"
DEFAULT_OPSET = 17
#: Opsets export accepts: 13 is the first with the Resize and reduction forms the graphs use; 20 is
#: the newest the TorchScript exporter (``dynamo=False``) writes.
OPSETS = range(13, 21)

__all__ = ["TOLERANCE_EXACT", "export_bundle", "export_onnx", "format_export_summary", "parity_check"]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cuvs",
                 "faiss-gpu-cu12", "numpy", "pillow", "tensorrt-cu13", "tensorrt-cu12"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def export_onnx(fitted: FittedMethod, path: Path, opset: int = DEFAULT_OPSET, *,
                static_padding: bool = True) -> dict[str, Any]:
    """Trace the method's graph to ONNX with a dynamic batch axis; returns the manifest ``graph`` section.

    ``static_padding``: trace TF-"same" convolutions with constant pads
    (:func:`adexport.backbones.static_same_padding`); ``False`` gives the graph earlier releases
    exported, for benchmarks that compare the two."""
    import onnx  # noqa: PLC0415

    graph = fitted.graph().eval().cpu()
    h, w = fitted.preprocess.input_size
    dummy = torch.zeros(2, fitted.preprocess.channels, h, w)  # batch 2 so nothing specialises on a batch of one
    padding = static_same_padding(graph, dummy) if static_padding else contextlib.nullcontext()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), padding:
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not actionable for users
        try:
            torch.onnx.export(
                graph, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(fitted.output_names),
                dynamic_axes={INPUT_NAME: {0: "batch"}, **fitted.output_axes()}, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        except Exception as exc:  # noqa: BLE001  (the exporter raises anything; the user needs one line)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ExportError(f"tracing {fitted.name}'s graph to ONNX opset {opset} failed ({type(exc).__name__}: "
                              f"{reason}); opset {DEFAULT_OPSET} is the tested default: drop --opset or choose "
                              "another") from None
    # The exporter loses static sizes through transposes and matmuls ("Transpose..._dim_1"); pin every
    # non-batch output dimension to what the traced graph produced, for readers and TensorRT alike.
    with torch.no_grad():
        traced = graph(dummy)
    traced = (traced,) if isinstance(traced, torch.Tensor) else tuple(traced)
    model = onnx.load(str(path))
    for value, tensor in zip(model.graph.output, traced):
        for dim, size in zip(list(value.type.tensor_type.shape.dim)[1:], tensor.shape[1:]):
            dim.Clear()
            dim.dim_value = int(size)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": "float32"})
        return out

    return {
        "file": GRAPH_FILE,
        "opset": opset,
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "dynamic_axes": {INPUT_NAME: {"0": "batch"}, **{k: {str(a): n for a, n in v.items()} for k, v in fitted.output_axes().items()}},
    }


def _errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    err = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
    scale = float(np.abs(ref).max())
    return {"max_abs": err, "max_rel": err / scale if scale > 0 else err, "scale": scale}


def parity_check(fitted: FittedMethod, bundle_dir: Path, images: Sequence[str | Path], *, device: str,
                 tolerance: dict[str, float]) -> dict[str, Any]:
    """Score ``images`` with PyTorch and with the runtime on ``bundle_dir``; compare.

    ``device`` names the runtime target (a row of :data:`adx_runtime.runners.RUNNERS`) whose runner
    computes the graph outputs compared under ``features``; the scores and maps are the runtime's
    :class:`Predictor` on the same runner, compared with the method's own torch ``reference``.
    """
    x, tiles = parity_inputs(fitted.preprocess, images)
    ref = fitted.reference(torch.from_numpy(x), **({} if tiles is None else {"tiles": torch.from_numpy(tiles)}))
    predictor = Predictor.load(bundle_dir, device=device, bank_device="cpu", export_in_progress=True)
    assert predictor.runner is not None  # loaded with its graph
    raw = predictor.runner.run(x)
    run = predictor.predict_tensor(x, tiles)
    feature_errs = [_errors(ref.outputs[n].numpy(), raw[n]) for n in fitted.output_names]
    errors = {
        "features": max(feature_errs, key=lambda e: e["max_rel"]),
        "image_scores": _errors(ref.image_scores.numpy(), run.image_scores),
    }
    if (ref.anomaly_maps is None) != (run.anomaly_maps is None):
        raise ExportError("the torch model and the runtime disagree on whether this method has a map; "
                          "the method's postprocess() and reference() do not match")
    if ref.anomaly_maps is not None:
        errors["maps"] = _errors(ref.anomaly_maps.numpy(), run.anomaly_maps)
    failed = [k for k, e in errors.items() if e["max_rel"] > tolerance.get(k, TOLERANCE_EXACT[k])]
    return {
        "n_images": len(images),
        "n_tiles": len(x) if fitted.preprocess.tiling is not None else None,  # what a tiled graph was compared on
        "images": [Path(p).name for p in images],
        "device": device,
        "providers": predictor.providers,
        "errors": errors,
        "tolerance": dict(tolerance),
        "measure": "max |torch - runtime| / max |torch| over the images",
        "passed": not failed,
        "failed": failed,
    }


def parity_inputs(preprocess: PreprocessConfig, images: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray | None]:
    """The graph inputs parity compares and, for a tiled contract, each one's tile position: each
    image preprocessed, or real tiles cut by the runtime's layout (each image's first and last tile:
    a corner and the shifted-inward border tile), which the torch model and the runtime both score
    as images (statistics kept per tile position at that position's)."""
    if preprocess.tiling is None:
        return stack([load_image(p, preprocess) for p in images]), None
    tiles, where = [], []
    for p in images:
        cut = image_tiles(p, preprocess)
        picked = [0, len(cut) - 1] if len(cut) > 1 else [0]
        tiles += [cut[j] for j in picked]
        where += picked
    return stack(tiles), np.array(where, np.int64)


def _parity_images(fitted: FittedMethod, images: Sequence[str | Path] | None) -> list[Path]:
    if images:
        paths = [Path(p) for p in images]
    else:
        paths = [Path(p) for p in fitted.dataset.get("parity_images", [])]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        where = f" (missing: {missing[0]})" if missing else ""
        raise ExportError(
            f"the parity check needs real images of the dataset{where}; they were recorded at training time "
            f"from {fitted.dataset.get('root', '?')!r}. Pass --parity-images FOLDER_OR_FILES to use others."
        )
    return paths


def export_bundle(
    model: FittedMethod | str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    opset: int = DEFAULT_OPSET,
    parity_images: Sequence[str | Path] | None = None,
    tolerance: dict[str, float] | None = None,
    max_batch: int = 16,
    fp16: bool = False,
    quantize: str | None = None,
    quantize_images: int = DEFAULT_QUANTIZE_IMAGES,
    overwrite: bool = False,
    static_padding: bool = True,
    progress: Progress = SILENT,
    **export_options: Any,
) -> dict[str, Any]:
    """Write a bundle; returns its manifest.

    Args:
        model: a fitted method or the folder ``adx train`` wrote.
        fmt: ``onnx``, or ``tensorrt`` (the ONNX bundle plus a TensorRT engine built on this GPU).
        tolerance: parity tolerances (``features``, ``image_scores``, ``maps``) overriding, key by key,
            the ones this export would use (the method's, loosened for int8 and fp16); a key not
            given keeps that default. ``adx export --parity-tolerance T`` sets ``image_scores`` and
            ``maps``.
        max_batch: largest batch the TensorRT engine's shape profile accepts.
        quantize: ``int8``: a statically quantized graph (QDQ, per-channel weights), its activation
            ranges measured on ``quantize_images`` training images; refused by methods that declare
            int8 unsafe.
        static_padding: see :func:`export_onnx` (``False`` only to benchmark the earlier graphs).
        export_options: the method export options, one keyword per row of
            :data:`adx_runtime.export_options.METHOD_EXPORT_OPTIONS` (``bank``, ``index_type``,
            ``search_params``, ``shards``, ``accept_approximate``; ``None`` = not given), so a new
            option is one row there and the method that reads it. A keyword the table lacks is a
            ``TypeError``; one the method does not honour is refused by its flag.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not known; valid: {', '.join(FORMATS)}")
    target = FORMATS[fmt]
    if fp16 and not target.fp16:
        fp16_targets = " and ".join(f"{f.artefact}s" for f in FORMATS.values() if f.fp16)
        raise ConfigError(f"--fp16 applies to {fp16_targets}; the ONNX graph is exported in float32")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize {quantize!r} is not known; valid: {', '.join(QUANTIZE)} (or leave it out for float32)")
    if quantize_images < 1:
        raise ConfigError(f"--quantize-images must be >= 1, got {quantize_images}")
    if type(opset) is not int or opset not in OPSETS:
        raise ConfigError(f"--opset {opset!r} is outside what export writes ({OPSETS.start} to {OPSETS.stop - 1}); "
                          f"drop it for the tested default {DEFAULT_OPSET}")
    user_tolerance = _checked_tolerance(tolerance)
    fitted = model if isinstance(model, FittedMethod) else load_fitted(model)
    options = given_export_options(**export_options)
    search_params = options.get("search_params")
    props = fitted.export_properties(**options)
    refused = sorted(set(options) - props.options)
    if refused:
        flags = ", ".join(EXPORT_OPTIONS[k] for k in refused)
        honoured = ", ".join(sorted(EXPORT_OPTIONS[k] for k in props.options)) or "none of them"
        raise ConfigError(f"{fitted.name} does not use {flags} (of the export options it honours: {honoured}); "
                          "drop the option")
    if fp16 and not props.fp16:
        raise ConfigError(f"{fitted.name} refuses float16 TensorRT engines: {props.fp16_reason}")
    if quantize == "int8" and not props.int8:
        raise ConfigError(f"{fitted.name} refuses --quantize int8: {props.int8_reason}")
    target.check_available()
    images = _parity_images(fitted, parity_images)
    check_replaceable(out, overwrite)
    previous = _previous_calibration(Path(out)) if overwrite else None
    seconds: dict[str, float] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        with progress.task("Exporting ONNX graph", None):
            graph = export_onnx(fitted, tmp / GRAPH_FILE, opset, static_padding=static_padding)
        graph["max_batch"] = max_batch if target.batch_profile else None
        quantization = None
        tq = time.perf_counter()
        if quantize == "int8":
            calib = quantize_image_subset(_training_images(fitted), quantize_images)
            with progress.task(f"Quantizing the graph to int8 (activation ranges from {len(calib)} training images)", None), \
                    tempfile.TemporaryDirectory(prefix="adx-export-") as scratch:
                float_graph = Path(scratch) / "float32.onnx"
                (tmp / GRAPH_FILE).replace(float_graph)
                quantization = quantize_int8(float_graph, tmp / GRAPH_FILE, calib, fitted.preprocess, INPUT_NAME)
            graph["precision"] = "int8"
            seconds["quantization"] = time.perf_counter() - tq
        t1 = time.perf_counter()
        with progress.task("Writing scoring data", None):
            scoring, files = fitted.write_scoring_data(tmp, **options)
        section = _scoring_section(fitted, scoring)
        check_ef_search_covers_k(section, fitted.name, search_params)  # refused as --search-param, not later
        seconds.update(onnx_export=tq - t0, scoring_data=time.perf_counter() - t1)
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "adexport_version": __version__,
            "method": fitted.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": fitted.preprocess.to_dict(),
            "graph": graph,
            "files": [file_entry(tmp, GRAPH_FILE, "onnx-graph", opset=opset, **({"precision": "int8"} if quantization else {})),
                      *files],
            "scoring": section.to_dict(),
            "postprocess": fitted.postprocess().to_dict(),
            "calibration": fitted.calibration,
            "method_config": config_to_dict(fitted.config),
            "backbone": fitted.backbone.to_dict() if fitted.backbone else None,
            "training": {**fitted.dataset, "fit_seconds": fitted.report.phases, "sizes": fitted.report.sizes},
            "provenance": _versions(),
        }
        if quantization is not None:
            manifest["quantization"] = quantization
        _write_manifest(tmp, manifest)  # no parity section yet: the runtime refuses it until the check passed
        defaults = dict(props.tolerance)
        if quantization is not None:  # the looser of the two per quantity: both errors add up
            defaults = {k: max(v, TOLERANCE_INT8.get(k, v)) for k, v in defaults.items()}
        # What the user gave wins key by key; the rest keep this export's defaults (before, a
        # --parity-tolerance pinned the graph outputs to 1e-4, which no int8 graph can meet).
        tolerance = {**defaults, **user_tolerance}
        precision = "int8" if quantization is not None else "float32"
        t2 = time.perf_counter()
        with progress.task(f"Parity check on {len(images)} images (torch vs ONNX Runtime)", None):
            parity = parity_check(fitted, tmp, images, device="cpu", tolerance=tolerance)
        seconds["parity_check"] = time.perf_counter() - t2
        manifest["parity"] = parity
        manifest["export_seconds"] = seconds
        if quantization is not None:
            quantization["measured_error"] = {k: e["max_rel"] for k, e in parity["errors"].items()}
            quantization["tolerance"] = dict(tolerance)
            quantization["measure"] = "max |torch float32 - int8 runtime| / max |torch| over the parity images"
        _refuse_if_failed(parity, "ONNX Runtime (cpu)" + (", int8 graph" if quantization else ""),
                          set(user_tolerance), precision)
        if target.section is not None and target.device is not None:
            section, built_files = target.build(tmp, manifest, max_batch=max_batch, fp16=fp16)
            manifest[target.section] = section
            manifest["files"] += built_files
            _write_manifest(tmp, manifest)
            target_defaults = {k: max(v, TOLERANCE_FP16.get(k, v)) for k, v in defaults.items()} if fp16 else defaults
            target_tol = {**target_defaults, **user_tolerance}  # the user's tolerance applies to the build too
            with progress.task(f"Parity check on the {target.artefact}", None):
                section["parity"] = parity_check(fitted, tmp, images, device=target.device, tolerance=target_tol)
            _refuse_if_failed(section["parity"], target.title, set(user_tolerance), "fp16" if fp16 else precision)
        if previous is not None:
            manifest["export_notes"] = [_carry_calibration(previous, manifest, Path(out))]
        _write_manifest(tmp, manifest)
    return manifest


def _scoring_section(fitted: FittedMethod, scoring: dict[str, Any]) -> ScoringSection:
    """The method's ``scoring`` section, checked by its kind's typed section as the runtime will
    check it on load: a writer that leaves out a field its scorer reads fails here, naming it."""
    kind = fitted.scoring_kind
    if kind not in SECTIONS:
        raise ExportError(f"{fitted.name} scores with kind {kind!r}, which the runtime does not know "
                          f"(known: {', '.join(SECTIONS)}); add it to adx_runtime.kinds and adx_runtime.scorers")
    try:
        return SECTIONS[kind].build(**scoring)
    except BundleError as exc:
        raise ExportError(f"{fitted.name} wrote a scoring section the runtime would refuse: {exc}") from None


def _previous_calibration(out: Path) -> dict[str, Any] | None:
    """What ``--overwrite`` is about to replace, when it holds thresholds set by ``adx calibrate``:
    its calibration section, its protected-section digests, and why it did not verify (if it did
    not). None when it has no such thresholds: nothing a user set is lost."""
    try:
        raw = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        cal = raw["calibration"]
        calibrated = any(isinstance(e, dict) and e.get("action") == "calibrate" for e in cal.get("history") or [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not a readable manifest: check_replaceable has said whether it may be replaced
    if not calibrated:
        return None
    previous: dict[str, Any] = {"calibration": cal, "sections": None, "unverified": None}
    try:
        old = load_manifest(out)  # checksums and digests: only a bundle that verifies passes its thresholds on
    except AdxError as exc:
        previous["unverified"] = str(exc)
        return previous
    previous["calibration"] = old["calibration"]
    previous["sections"] = (old.get("integrity") or {}).get("sections")
    return previous


def _thresholds(cal: dict[str, Any]) -> str:
    image = (cal.get("image") or {}).get("threshold")
    pixel = (cal.get("pixel") or {}).get("threshold")
    return f"image {image:.4g}" + (f", pixel {pixel:.4g}" if isinstance(pixel, (int, float)) else "")


def _carry_calibration(previous: dict[str, Any], manifest: dict[str, Any], out: Path) -> str:
    """Keep the replaced bundle's ``adx calibrate`` thresholds when the new bundle scores exactly as
    it did (every protected section has the same digest), else keep the export's own; returns the
    note that says which. A threshold is only meaningful for the scores it was set on."""
    old = _thresholds(previous["calibration"])
    rerun = f"run `adx calibrate {out} DATASET` to set them again"
    if previous["unverified"] is not None:
        return (f"calibration: the bundle this replaced had thresholds set by `adx calibrate` ({old}) but did not "
                f"verify ({previous['unverified']}), so they were not kept; the thresholds are the export's "
                f"({_thresholds(manifest['calibration'])}); {rerun}")
    new_sections = integrity_section(manifest)["sections"]
    old_sections = previous["sections"] or {}
    changed = sorted(n for n in set(new_sections) | set(old_sections) if new_sections.get(n) != old_sections.get(n))
    if not changed:
        manifest["calibration"] = previous["calibration"]
        return (f"calibration: kept the calibration set by `adx calibrate` on the bundle this replaced ({old}, with "
                "its history): the graph, scoring data and preprocessing are unchanged (same digests)")
    why = f"the model changed ({', '.join(changed)} differ)" if old_sections else \
        "the bundle this replaced records no digests to compare (schema 1)"
    return (f"calibration: the thresholds set by `adx calibrate` on the bundle this replaced ({old}) were not kept: "
            f"{why}; the thresholds are the export's ({_thresholds(manifest['calibration'])}); {rerun}")


def _write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Record the digests of the protected sections as they are now, and write the manifest."""
    manifest["integrity"] = integrity_section(manifest)
    write_json_atomic(bundle_dir / MANIFEST, manifest)


def _training_images(fitted: FittedMethod) -> list[Path]:
    """The training images (``train/good``) recorded at fit time, for the int8 activation ranges."""
    root, category = fitted.dataset.get("root"), fitted.dataset.get("category")
    try:
        split = load_split(root, category, need_test=False)
    except AdxError as exc:  # the dataset moved or changed: say what was looked for
        raise ExportError(f"int8 activation ranges need the training images of {root!r} (category {category!r}), "
                          f"which could not be read ({exc}); restore the dataset there or export without --quantize") from None
    return [s.path for s in split.train]


def _checked_tolerance(tolerance: dict[str, float] | None) -> dict[str, float]:
    """The user's parity tolerances, each a known quantity with a finite value >= 0 (a NaN would
    make every comparison pass)."""
    out: dict[str, float] = {}
    for key, value in (tolerance or {}).items():
        if key not in TOLERANCE_EXACT:
            raise ConfigError(f"parity tolerance {key!r} is not known; valid: {', '.join(TOLERANCE_EXACT)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ConfigError(f"parity tolerance {key} must be a number >= 0, got {value!r} "
                              "(a relative error: 0.05 allows 5% of the largest torch value)")
        out[key] = float(value)
    return out


def _refuse_if_failed(parity: dict[str, Any], where: str, user_set: Collection[str] = (),
                      precision: str = "float32") -> None:
    """One line naming each quantity above its tolerance, who set that tolerance, and the option
    that changes it (``--parity-tolerance`` sets scores and maps only, never the graph outputs)."""
    if parity["passed"]:
        return
    default = {"int8": "this method's default loosened for int8", "fp16": "this method's default loosened for fp16"}
    parts, fixes = [], []
    for k in parity["failed"]:
        tol = parity["tolerance"][k]
        if k in user_set:
            source = "set by --parity-tolerance" if k != "features" else "set by tolerance['features']"
        else:
            source = default.get(precision, "this method's default")
        parts.append(f"{k} {parity['errors'][k]['max_rel']:.3g} > tolerance {tol:.3g} ({source})")
    if "features" in parity["failed"]:
        how = {"int8": "more --quantize-images, or export without --quantize",
               "fp16": "export the engine without --fp16"}.get(
            precision, "the graph does not reproduce the model: try another --opset, or report it")
        fixes.append(f"features (the graph's raw outputs): --parity-tolerance does not change this tolerance ({how}"
                     + ("; or raise tolerance['features'] in export_bundle()" if "features" in user_set else "") + ")")
    scores = [k for k in parity["failed"] if k != "features"]
    if scores:
        verb = "a looser --parity-tolerance" if set(scores) & user_set else "--parity-tolerance T"
        fixes.append(f"{' and '.join(scores)}: pass {verb} (it sets the image_scores and maps tolerance; an approximate "
                     "FAISS index, an int8 graph or fp16 may need one"
                     + (", or more --quantize-images" if precision == "int8" else "") + ")")
    raise ExportError(
        f"parity check failed on {where}: the exported bundle scores differently from the trained model "
        f"(relative max error over {parity['n_images']} images): {'; '.join(parts)}. No bundle was written. "
        f"To fix: {'; '.join(fixes)}."
    )


class ExportFormat:
    """A ``--format``: what it adds to the ONNX bundle every export writes. A row of :data:`FORMATS`.

    A format that builds something (an engine, another runtime's model file) names the manifest
    ``section`` its :meth:`build` returns and the runtime target (``device``, a row of
    :data:`adx_runtime.runners.RUNNERS`) that serves it, on which export runs a second parity check.
    """

    name: ClassVar[str]
    title: ClassVar[str]  #: what runs it, in messages ("parity check failed on TensorRT")
    artefact: ClassVar[str]  #: what it builds, in messages ("TensorRT engine")
    section: ClassVar[str | None] = None
    device: ClassVar[str | None] = None
    fp16: ClassVar[bool] = False  #: accepts --fp16
    batch_profile: ClassVar[bool] = False  #: built for batches up to --max-batch (recorded as graph.max_batch)

    def check_available(self) -> None:
        """Refuse before any work when this machine cannot build the format."""

    def build(self, bundle_dir: Path, manifest: dict[str, Any], *, max_batch: int,
              fp16: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Build into ``bundle_dir``; returns the manifest ``section`` and the ``files`` entries it wrote."""
        raise NotImplementedError(f"--format {self.name} builds nothing beyond the ONNX graph")


class OnnxFormat(ExportFormat):
    """The ONNX graph and scoring data alone: what every bundle holds."""

    name = "onnx"
    title = "ONNX Runtime"
    artefact = "ONNX graph"


class TensorRTFormat(ExportFormat):
    """The ONNX bundle plus a TensorRT engine built on this GPU by ONNX Runtime's TensorRT provider."""

    name = "tensorrt"
    title = "TensorRT"
    artefact = "TensorRT engine"
    section = "tensorrt"
    device = "tensorrt"
    fp16 = True
    batch_profile = True

    def check_available(self) -> None:
        if "tensorrt" not in available_devices():
            raise ProviderError(
                "--format tensorrt builds a TensorRT engine for this machine's GPU through ONNX Runtime's "
                "TensorrtExecutionProvider, which is not available here "
                f"(available: {', '.join(available_devices())}). Run this on the target NVIDIA box with "
                "pip install 'adexport[gpu,tensorrt]', or export --format onnx here and build the engine there."
            )

    def build(self, bundle_dir: Path, manifest: dict[str, Any], *, max_batch: int,
              fp16: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return _build_tensorrt(bundle_dir, manifest, max_batch, fp16)


#: ``--format`` -> what it builds: a new export target is one :class:`ExportFormat` and one row here.
FORMATS: dict[str, ExportFormat] = {f.name: f for f in (OnnxFormat(), TensorRTFormat())}


def _build_tensorrt(bundle_dir: Path, manifest: dict[str, Any], max_batch: int, fp16: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the TensorRT engine with ONNX Runtime's TensorRT provider into ``engines/``.

    The engine is a cache of the ONNX graph for one TensorRT version and GPU compute capability,
    named after both; ONNX Runtime rebuilds it when either differs. It is built through the same
    runner (same session options, same provider options) that later reads it, so the two agree on
    the cache key.
    """
    trt_version = _trt_version()
    cc = _compute_capability()
    prefix = f"model_trt{trt_version}_sm{cc}{'_fp16' if fp16 else ''}"
    engine_dir = bundle_dir / "engines"
    engine_dir.mkdir()
    h, w = manifest["input"]["input_size"]
    c = manifest["input"].get("channels", 3)
    shape = f"{INPUT_NAME}:{{}}x{c}x{h}x{w}"
    profile = {"min": shape.format(1), "opt": shape.format(min(8, max_batch)), "max": shape.format(max_batch)}
    options = tensorrt_provider_options(engine_dir, profile, fp16=fp16, prefix=prefix)
    # create_session refuses a session that did not start on the TensorRT provider
    runner = OnnxRuntimeRunner.open(bundle_dir / GRAPH_FILE, "tensorrt", trt_options=options)
    runner.run(np.zeros((1, c, h, w), np.float32))  # builds and caches the engine
    engines = sorted(p for p in engine_dir.iterdir() if p.is_file())
    if not engines:
        raise ExportError("ONNX Runtime's TensorRT provider ran but wrote no engine file into the bundle")
    files = [file_entry(bundle_dir, str(p.relative_to(bundle_dir)), "tensorrt-engine",
                        tensorrt_version=trt_version, compute_capability=cc) for p in engines]
    section = {"engine_dir": "engines", "engine_prefix": prefix, "tensorrt_version": trt_version,
               "compute_capability": cc, "fp16": fp16, "profile": profile}
    return section, files


def _trt_version() -> str:
    for dist in ("tensorrt-cu13", "tensorrt-cu12", "tensorrt", "tensorrt-libs"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    raise ProviderError("TensorRT is not installed; pip install 'adexport[gpu,tensorrt]' with NVIDIA's own package "
                        "index added (TensorRT's libraries are not on the public index)")


def _compute_capability() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return f"{major}{minor}"
    raise ProviderError("no CUDA GPU is visible to name the TensorRT engine by its compute capability")


def format_export_summary(manifest: dict[str, Any], out: str | Path) -> str:
    """What ``adx export`` prints: files and sizes, parity errors against their tolerances."""
    p = manifest["parity"]
    compared = f"{p['n_images']} images" + (f" ({p['n_tiles']} tiles)" if p.get("n_tiles") else "")
    size = sum(f["bytes"] for f in manifest["files"])
    lines = [f"wrote {out} ({size / 1e6:.1f} MB: "
             + ", ".join(f"{f['path']} {f['bytes'] / 1e6:.1f} MB" for f in manifest["files"]) + ")",
             f"scoring kind {manifest['scoring']['kind']}; "
             + ("anomaly maps" if manifest["postprocess"]["map"] else
                ("image scores; under tiling, a coarse map from the tile scores" if manifest["input"].get("tiling")
                 else "image scores only (no anomaly map)")),
             f"parity on {compared}, max relative error torch vs runtime: "
             + ", ".join(f"{k} {v['max_rel']:.2e} (tol {p['tolerance'][k]:.0e})" for k, v in p["errors"].items())]
    if "quantization" in manifest:
        q = manifest["quantization"]
        lines.append(f"int8 graph ({q['format']}): " + ", ".join(f"{n} {t}" for t, n in q["op_types_quantized"].items())
                     + f" quantized, activation ranges from {q['calibration']['images']} training images; "
                     + f"{sum(q['op_types_in_float'].values())} other ops in float32")
    for index in parse_scoring(manifest["scoring"], manifest.get("method")).searched_indexes():
        label, bank = index.label, index.bank
        if "approximation" in bank:
            a = bank["approximation"]
            params = " ".join(f"{k}={v}" for k, v in (bank.get("search_params") or {}).items())
            lines.append(f"approximate {label} {bank['index_type']}{' ' + params if params else ''}: recall@1 "
                         f"{a['recall_at_1']:.3f}, mean distance error {a['distance_rel_error']:.4f} on "
                         f"{a['queries']} held-out normal queries"
                         + ("" if a["passed"] else " (above tolerance, written because --accept-approximate)"))
    if "tensorrt" in manifest:
        tp = manifest["tensorrt"]["parity"]
        lines.append("TensorRT parity: " + ", ".join(f"{k} {v['max_rel']:.2e}" for k, v in tp["errors"].items()))
    lines.extend(manifest.get("export_notes") or [])  # e.g. whether --overwrite kept `adx calibrate` thresholds
    return "\n".join(lines)
