"""``adx``: train, export and run industrial anomaly detectors.

Each command parses its options, calls one library function and prints. The torch side
(``adexport``) is imported only inside ``train``, ``export``, ``demo`` and ``bench-fit``, so
``infer``, ``eval``, ``calibrate`` and ``bench`` work where torch is not installed.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from adx_runtime.errors import AdxError, ConfigError
from adx_runtime.images import IMAGE_SUFFIXES

app = typer.Typer(
    name="adx",
    help="Train industrial visual anomaly detectors in PyTorch, export them to ONNX/TensorRT bundles, "
    "and score images from a bundle without PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Exit codes: 0 all fine, 1 an error stopped the command, 3 some images could not be scored.
EXIT_ERROR = 1
EXIT_SOME_FAILED = 3

F = TypeVar("F", bound=Callable[..., Any])


def _err(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def handle_errors(fn: F) -> F:
    """Print library errors as one message (no traceback) and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AdxError as exc:
            _err(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _progress(quiet: bool) -> Any:
    from adx_runtime.progress import SILENT, RichProgress  # noqa: PLC0415

    return SILENT if quiet else RichProgress()


def _parse_layers(text: Optional[str]) -> Optional[tuple[int | str, ...]]:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--layers needs stage indices or names separated by commas, got {text!r}")
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders (their images) and glob patterns -> image paths, in the order given."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            out += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            out.append(path)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise ConfigError(f"the pattern {item!r} matches no files")
            out += matches
        else:
            raise ConfigError(f"{item!r} is not a file, a folder or a glob pattern that matches files")
    if not out:
        raise ConfigError(f"no images found in {', '.join(inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------- data
@app.command("demo-data")
@handle_errors
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into (MVTec AD layout).")],
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories; default: all.")] = None,
    n_train: Annotated[int, typer.Option(help="Normal training images per category.")] = 60,
    n_test_good: Annotated[int, typer.Option(help="Normal test images per category.")] = 10,
    n_test_defect: Annotated[int, typer.Option(help="Test images per defect type.")] = 5,
    image_size: Annotated[int, typer.Option(help="Side of the square images, in pixels.")] = 160,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Generate the built-in demo dataset: textures with defects and masks, deterministic, no download."""
    from adx_runtime.synthetic import count_demo_images, generate_demo_dataset  # noqa: PLC0415

    cats = [c.strip() for c in categories.split(",")] if categories else None
    total = count_demo_images(cats, n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_defect)
    with _progress(quiet).task(f"Writing {total} images", total) as advance:
        summary = generate_demo_dataset(out, cats, n_train=n_train, n_test_good=n_test_good,
                                        n_test_per_defect=n_test_defect, image_size=image_size, seed=seed,
                                        progress=advance)
    for cat, counts in summary.items():
        typer.echo(f"{out / cat}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ---------------------------------------------------------------------------------------- train
#: What --k sets in each method's config.
K_OPTION = {"patchcore": "num_neighbors", "spade": "k"}

@app.command()
@handle_errors
def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset root in the MVTec AD layout, or one category folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the fitted model (created).")],
    category: Annotated[Optional[str], typer.Option("--category", "-c", help="Category folder inside DATASET.")] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="Method: patchcore | padim | spade.")] = "patchcore",
    backbone: Annotated[Optional[str], typer.Option(help="timm backbone [default: efficientnet_lite0, offline weights].")] = None,
    weights: Annotated[Optional[str], typer.Option(help="auto | offline | timm | random | path to .safetensors/.pth.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Feature stages by index or name, e.g. 2,3 or layer2,layer3.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square input size after resize [default: 256].")] = None,
    coreset_ratio: Annotated[Optional[float], typer.Option(help="PatchCore: coreset size / training patches [default: 0.1].")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="PatchCore: neighbours b of the image-score reweighting [default: 3]; SPADE: nearest training images [default: 50].")] = None,
    target_dim: Annotated[Optional[int], typer.Option(help="PatchCore: patch feature size [default: stages' channels].")] = None,
    projection_dim: Annotated[Optional[int], typer.Option(help="PatchCore: random projection size for the coreset [default: 128].")] = None,
    n_features: Annotated[Optional[int], typer.Option(help="PaDiM: random channel subset d [default: 100].")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="PaDiM: covariance regularisation [default: 0.01].")] = None,
    map_stride: Annotated[Optional[int], typer.Option(help="SPADE: stride of the pixel-level feature map [default: 8].")] = None,
    store_dtype: Annotated[Optional[str], typer.Option(help="PaDiM/SPADE: float32 | float16 for the stored statistics/gallery.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the holdout split and coreset [default: 0].")] = None,
    holdout: Annotated[float, typer.Option(help="Fraction of train/good kept out of the fit to calibrate thresholds.")] = 0.2,
    device: Annotated[str, typer.Option(help="Torch device: auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Fit a method on the normal images of one category and write the fitted model (safetensors + JSON)."""
    from adexport.fitted import save_fitted  # noqa: PLC0415
    from adexport.train import train as run_train  # noqa: PLC0415

    options = {"backbone": backbone, "weights": weights, "layers": _parse_layers(layers), "image_size": image_size,
               "coreset_ratio": coreset_ratio, K_OPTION.get(method, "k"): k, "target_dim": target_dim,
               "projection_dim": projection_dim, "n_features": n_features, "epsilon": epsilon,
               "map_stride": map_stride, "store_dtype": store_dtype, "seed": seed}
    t0 = time.perf_counter()
    fitted = run_train(dataset, category, method, options=options, holdout=holdout, device=device,
                       batch_size=batch_size, progress=_progress(quiet))
    fit_seconds = time.perf_counter() - t0
    save_fitted(fitted, out, overwrite=overwrite)
    r = fitted.report
    typer.echo(f"fitted {fitted.name} on {fitted.dataset['category']} ({fitted.dataset['device']}): "
               f"{r.sizes.get('fit_images')} images, {fitted.dataset['holdout_images']} held out for calibration, "
               f"backbone {fitted.backbone.weights}")
    typer.echo("fit time {:.2f} s ({})".format(fit_seconds, ", ".join(f"{k} {v:.2f} s" for k, v in r.phases.items())))
    for f, reason in r.skipped:
        typer.secho(f"skipped {f}: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo("sizes: " + ", ".join(f"{k} {v}" for k, v in r.sizes.items()))
    cal = fitted.calibration["image"]
    typer.echo(f"image threshold {cal['threshold']:.4g} ({cal['rule']})")
    typer.echo(f"wrote {out}")


# --------------------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(
    model: Annotated[Path, typer.Argument(help="Fitted model folder written by `adx train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write (atomically).")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx | tensorrt (ONNX bundle + engine for this GPU).")] = "onnx",
    bank: Annotated[str, typer.Option(help="Memory bank as a FAISS index (faiss) or numpy arrays (npz).")] = "faiss",
    index_type: Annotated[str, typer.Option(help="FAISS index factory string: Flat (exact), HNSW32, IVF64,Flat, ...")] = "Flat",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    parity_images: Annotated[Optional[list[str]], typer.Option(help="Images for the parity check [default: recorded at training].")] = None,
    parity_tolerance: Annotated[Optional[float], typer.Option(help="Relative tolerance for scores and maps [default: 1e-3 exact, 5e-2 approximate].")] = None,
    max_batch: Annotated[int, typer.Option(help="TensorRT: largest batch of the engine's shape profile.")] = 16,
    fp16: Annotated[bool, typer.Option(help="TensorRT: build a float16 engine (parity measured against float32 torch).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Export a fitted model to a bundle: ONNX graph, scoring data, manifest, parity check."""
    from adexport.export import TOLERANCE_EXACT, export_bundle  # noqa: PLC0415

    images = [str(p) for p in expand_inputs(parity_images)] if parity_images else None
    tolerance = None
    if parity_tolerance is not None:
        tolerance = {"features": TOLERANCE_EXACT["features"], "image_scores": parity_tolerance, "maps": parity_tolerance}
    manifest = export_bundle(model, out, fmt=format, bank=bank, index_type=index_type, opset=opset,
                             parity_images=images, tolerance=tolerance, max_batch=max_batch, fp16=fp16,
                             overwrite=overwrite, progress=_progress(quiet))
    p = manifest["parity"]
    size = sum(f["bytes"] for f in manifest["files"])
    typer.echo(f"wrote {out} ({size / 1e6:.1f} MB: " + ", ".join(f"{f['path']} {f['bytes'] / 1e6:.1f} MB" for f in manifest["files"]) + ")")
    typer.echo(f"parity on {p['n_images']} images, max relative error torch vs runtime: "
               + ", ".join(f"{k} {v['max_rel']:.2e} (tol {p['tolerance'][k]:.0e})" for k, v in p["errors"].items()))
    if "tensorrt" in manifest:
        tp = manifest["tensorrt"]["parity"]
        typer.echo("TensorRT parity: " + ", ".join(f"{k} {v['max_rel']:.2e}" for k, v in tp["errors"].items()))


# ---------------------------------------------------------------------------------------- infer
@app.command()
@handle_errors
def infer(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `adx export`.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quote them).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Result file, or - for standard output.")] = "-",
    fmt: Annotated[str, typer.Option("--format", help="jsonl | csv.")] = "jsonl",
    threshold: Annotated[Optional[float], typer.Option(help="Raw image-score threshold overriding the bundle's.")] = None,
    device: Annotated[str, typer.Option(help="ONNX Runtime provider: cpu | cuda | tensorrt.")] = "cpu",
    bank_device: Annotated[str, typer.Option(help="FAISS search: auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    save_maps: Annotated[Optional[Path], typer.Option(help="Folder for heatmap overlays (PNG).")] = None,
    recursive: Annotated[bool, typer.Option(help="Look into sub-folders of input folders.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Score images with a bundle, without PyTorch: one line per image (path, raw score, normalised score, label).

    A file that cannot be decoded is reported on its line and the others are still scored; the exit code is
    then 3.
    """
    from adx_runtime.images import decode_image  # noqa: PLC0415
    from adx_runtime.overlay import save_overlay  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"--format must be jsonl or csv, got {fmt!r}")
    paths = expand_inputs(inputs, recursive)
    predictor = Predictor.load(bundle, device=device, bank_device=bank_device, threshold=threshold)
    sink = sys.stdout if output == "-" else open(output, "w", newline="", encoding="utf-8")
    writer = csv.writer(sink) if fmt == "csv" else None
    if writer:
        writer.writerow(["path", "image_score", "normalized_score", "label", "error"])
    failed = flagged = 0
    names = _overlay_names(paths) if save_maps else {}
    try:
        with _progress(quiet or output == "-").task(f"Scoring {len(paths)} images", len(paths)) as advance:
            for res in predictor.predict_files(paths, batch_size=batch_size, keep_maps=save_maps is not None):
                advance(1)
                label = None if res.label is None else ("anomalous" if res.label else "normal")
                failed += not res.ok
                flagged += bool(res.label)
                if writer:
                    writer.writerow([res.path, res.image_score, res.normalized_score, label, res.error or ""])
                else:
                    row = {"path": res.path, "image_score": res.image_score, "normalized_score": res.normalized_score,
                           "label": label}
                    if res.error:
                        row = {"path": res.path, "error": res.error}
                    sink.write(json.dumps(row) + "\n")
                if save_maps is not None and res.ok and res.anomaly_map is not None:
                    save_overlay(decode_image(res.path), predictor.normalized_maps(res.anomaly_map), predictor.preprocess,
                                 save_maps / names[res.path])
    finally:
        if sink is not sys.stdout:
            sink.close()
    if not quiet:
        typer.echo(f"scored {len(paths) - failed} of {len(paths)} images: {flagged} anomalous "
                   f"(threshold {predictor.image_threshold:.4g}), {failed} failed"
                   + (f"; heatmaps in {save_maps}" if save_maps else ""), err=True)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _overlay_names(paths: list[Path]) -> dict[str, str]:
    """Unique PNG names for overlays: the file name, prefixed with its folder when names repeat
    (test/cut/000.png and test/hole/000.png), numbered if that still repeats."""
    stems = Counter(p.stem for p in paths)
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, p in enumerate(paths):
        name = p.stem if stems[p.stem] == 1 else f"{p.parent.name}_{p.stem}"
        if name in used:
            name = f"{i:05d}_{name}"
        used.add(name)
        out[str(p)] = f"{name}_heatmap.png"
    return out


# ----------------------------------------------------------------------------------------- eval
def print_evaluation(ev: Any) -> None:
    """A readable table: overall metrics, then one row per defect type and for good."""
    m = ev.metrics
    typer.echo(f"{ev.method} on {ev.category}: {m['n_images']} test images scored"
               + (f", {m['n_failed']} failed" if m["n_failed"] else ""))
    rows = [("image AUROC", m.get("image_auroc")), ("image F1-max", m.get("image_f1_max"))]
    if ev.has_masks:
        rows += [("pixel AUROC", m.get("pixel_auroc")), ("AUPRO (FPR<=0.3)", m.get("aupro")),
                 ("pixel F1-max", m.get("pixel_f1_max"))]
    for name, value in rows:
        typer.echo(f"  {name:<18} {_fmt(value)}")
    t = m["at_threshold"]
    typer.echo(f"  at the bundle threshold {t['threshold']:.4g}: detected {t['true_positive_rate']:.1%} of anomalous, "
               f"flagged {t['false_positive_rate']:.1%} of good")
    header = f"  {'kind':<14} {'n':>4} {'mean score':>11} {'flagged':>8} {'img AUROC':>10}"
    if ev.has_masks:
        header += f" {'pix AUROC':>10} {'AUPRO':>8}"
    typer.echo(header)
    for kind, e in ev.per_kind.items():
        line = f"  {kind:<14} {e['n']:>4} {e['mean_score']:>11.4g} {e['flagged_rate']:>8.1%} {_fmt(e.get('image_auroc')):>10}"
        if ev.has_masks:
            line += f" {_fmt(e.get('pixel_auroc')):>10} {_fmt(e.get('aupro')):>8}"
        typer.echo(line)
    for note in ev.notes:
        typer.secho(f"  note: {note}", fg=typer.colors.YELLOW)


@app.command("eval")
@handle_errors
def eval_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    dataset: Annotated[Path, typer.Argument(help="Dataset root (MVTec AD layout) or a category folder.")],
    category: Annotated[Optional[str], typer.Option("--category", "-c", help="Category folder inside DATASET.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every number (and each image's score) here.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Folder for ROC/PRO curves, score histogram, worst-case galleries and index.html.")] = None,
    device: Annotated[str, typer.Option(help="ONNX Runtime provider: cpu | cuda | tensorrt.")] = "cpu",
    bank_device: Annotated[str, typer.Option(help="FAISS search: auto | cpu | cuda.")] = "auto",
    threshold: Annotated[Optional[float], typer.Option(help="Raw image threshold overriding the bundle's.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score a test split with the torch-free runtime: image/pixel AUROC, AUPRO, F1-max, per defect type.

    Pixel metrics need masks in ground_truth/; without them only image metrics are reported, and the output
    says so.
    """
    from adx_runtime.evaluate import evaluate  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    predictor = Predictor.load(bundle, device=device, bank_device=bank_device, threshold=threshold)
    ev = evaluate(bundle, dataset, category, batch_size=batch_size, progress=_progress(quiet), predictor=predictor)
    print_evaluation(ev)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(ev.to_json(), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {json_out}")
    if report:
        from adx_runtime.report import write_report  # noqa: PLC0415

        files = write_report(ev, report, predictor)
        typer.echo(f"report: {', '.join(p.name for p in files)} in {report}")


# ------------------------------------------------------------------------------------ calibrate
@app.command()
@handle_errors
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder; its manifest is rewritten atomically.")],
    dataset: Annotated[Path, typer.Argument(help="Validation data in the MVTec AD layout (its test/ split is used).")],
    category: Annotated[Optional[str], typer.Option("--category", "-c", help="Category folder inside DATASET.")] = None,
    mode: Annotated[str, typer.Option(help="f1: F1-optimal thresholds; fpr: at most --fpr of good images flagged.")] = "f1",
    fpr: Annotated[float, typer.Option(help="With --mode fpr: allowed false-positive rate on good images (and pixels).")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Reset the bundle's image threshold (and pixel threshold when masks exist) from a validation split.

    The change is recorded in the manifest's calibration history. Use a validation set separate from the
    test set you report metrics on.
    """
    from adx_runtime.recalibrate import recalibrate  # noqa: PLC0415

    entry = recalibrate(bundle, dataset, category, mode=mode, fpr=fpr, batch_size=batch_size, progress=_progress(quiet))
    it = entry["image_threshold"]
    typer.echo(f"image threshold {it['old']:.4g} -> {it['new']:.4g} ({mode} on {entry['n_images']} images)")
    if entry["pixel_threshold"]:
        pt = entry["pixel_threshold"]
        typer.echo(f"pixel threshold {pt['old']:.4g} -> {pt['new']:.4g}")
    a = entry["at_new_threshold"]
    tpr = "n/a" if a["true_positive_rate"] is None else f"{a['true_positive_rate']:.1%}"
    typer.echo(f"at the new threshold on this split: {a['false_positive_rate']:.1%} of good flagged, {tpr} of anomalous detected")
    typer.echo(f"rewrote {bundle / 'manifest.json'}")


# ---------------------------------------------------------------------------------------- bench
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"expected comma-separated integers, got {text!r}")
    return values


@app.command()
@handle_errors
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    images: Annotated[Optional[list[str]], typer.Option(help="Images to time with [default: the bundle's parity images].")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to sweep.")] = "1,4,16",
    runs: Annotated[int, typer.Option(help="Timed batches per batch size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed batches first, per batch size.")] = 3,
    device: Annotated[str, typer.Option(help="ONNX Runtime provider: cpu | cuda | tensorrt.")] = "cpu",
    bank_device: Annotated[str, typer.Option(help="FAISS search: auto | cpu | cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = all cores).")] = 0,
    compare: Annotated[Optional[Path], typer.Option(help="A second bundle, printed side by side with ratios.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Latency and throughput of a bundle: batch-size sweep, p50/p90/p99, time split by stage, memory, size.

    Stages: decode+preprocess, graph (ONNX Runtime), scoring (bank search or density), post (upsample + blur).
    """
    from adx_runtime.bench import bench_in_subprocess, format_comparison, format_report, run_bench  # noqa: PLC0415

    sizes = _int_list(batch_sizes)
    if compare is None:
        result = run_bench(bundle, images=expand_inputs(images) if images else None, batch_sizes=sizes, runs=runs,
                           warmup=warmup, device=device, bank_device=bank_device, threads=threads,
                           progress=_progress(quiet))
        typer.echo(format_report(result))
    else:
        args = ["--batch-sizes", batch_sizes, "--runs", str(runs), "--warmup", str(warmup), "--device", device,
                "--bank-device", bank_device, "--threads", str(threads)]
        for img in images or []:
            args += ["--images", img]
        a, b = bench_in_subprocess(bundle, args), bench_in_subprocess(compare, args)
        typer.echo(format_report(a))
        typer.echo(format_report(b))
        typer.echo(format_comparison(a, b))
        result = {"a": a, "b": b}
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if not quiet:
            typer.echo(f"wrote {json_out}")


@app.command("bench-fit")
@handle_errors
def bench_fit_cmd(
    method: Annotated[str, typer.Option("--method", "-m", help="Method to fit.")] = "patchcore",
    n_train: Annotated[int, typer.Option(help="Normal training images to generate.")] = 60,
    data_size: Annotated[int, typer.Option(help="Side of the generated images, px.")] = 160,
    image_size: Annotated[Optional[int], typer.Option(help="Model input size [default: the method's, 256].")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="timm backbone [default: efficientnet_lite0].")] = None,
    weights: Annotated[Optional[str], typer.Option(help="auto | offline | timm | random | file.")] = None,
    coreset_ratio: Annotated[Optional[float], typer.Option(help="PatchCore coreset ratio [default: 0.1].")] = None,
    n_features: Annotated[Optional[int], typer.Option(help="PaDiM channel subset d [default: 100].")] = None,
    store_dtype: Annotated[Optional[str], typer.Option(help="PaDiM/SPADE: float32 | float16 store.")] = None,
    bank: Annotated[str, typer.Option(help="PatchCore bank: faiss | npz.")] = "faiss",
    out: Annotated[Optional[Path], typer.Option(help="Keep data, model and bundle here (then run `adx bench OUT/bundle`).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Time fit and export phases on generated data: imports, backbone, features, coreset, calibration, export."""
    t0 = time.perf_counter()
    import timm  # noqa: F401, PLC0415  (timed here so "imports" holds all of the training stack's)

    from adexport.bench import bench_fit, format_fit_report  # noqa: PLC0415

    import_seconds = time.perf_counter() - t0
    options = {"image_size": image_size, "backbone": backbone, "weights": weights, "coreset_ratio": coreset_ratio,
               "n_features": n_features, "store_dtype": store_dtype}
    result = bench_fit(method=method, options=options, n_train=n_train, data_size=data_size, out=out, bank=bank,
                       import_seconds=import_seconds, progress=_progress(quiet))
    typer.echo(format_fit_report(result))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------- demo
@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, models, bundles and heatmaps.")] = Path("demo_out"),
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated demo categories; default: all.")] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="patchcore | padim | spade.")] = "patchcore",
    n_train: Annotated[int, typer.Option(help="Normal training images per category.")] = 60,
    image_size: Annotated[int, typer.Option(help="Side of the generated images.")] = 160,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run the whole job on the built-in demo dataset: generate, train, export, infer, evaluate."""
    from adexport.demo import run_demo  # noqa: PLC0415

    cats = [c.strip() for c in categories.split(",")] if categories else None
    results = run_demo(out, cats, method=method, n_train=n_train, image_size=image_size, progress=_progress(quiet))
    typer.echo("")
    typer.echo(f"{'category':<10} {'fit s':>6} {'img AUROC':>10} {'pix AUROC':>10} {'AUPRO':>7}  heatmaps")
    for r in results:
        m = r.evaluation.metrics
        typer.echo(f"{r.category:<10} {r.fit_seconds:>6.1f} {_fmt(m.get('image_auroc'), 3):>10} "
                   f"{_fmt(m.get('pixel_auroc'), 3):>10} {_fmt(m.get('aupro'), 3):>7}  {r.heatmaps}")
    typer.echo(f"bundles in {out / 'bundles'}; score more images with: adx infer {results[0].bundle} IMAGES...")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
