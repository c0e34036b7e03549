"""``adx``: train, export and run industrial anomaly detectors.

Each command parses its options, calls one library function and prints. The torch side
(``adexport``) is imported only inside ``train``, ``methods``, ``export``, ``demo`` and ``bench-fit``,
so ``infer``, ``eval``, ``calibrate`` and ``bench`` work where torch is not installed. A command
that needs an extra checks it first (:func:`require`, table :data:`NEEDS`) and stops in one line.

The CLI knows no method by name: a method's options go through ``--set KEY=VALUE`` (listed by
``adx methods NAME``) besides a few generic shortcuts, and the export options are flags built from
the runtime's table (:data:`adx_runtime.export_options.METHOD_EXPORT_OPTIONS`), so a new method or
export option needs no edit here.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand

from adx_runtime.errors import AdxError, ConfigError, DependencyError, Interrupted
from adx_runtime.export_options import METHOD_EXPORT_OPTIONS, ExportOption
from adx_runtime.inputs import check_outputs, expand_inputs, expand_inputs_rooted
from adx_runtime.runners import RUNNERS

__all__ = ["app", "check_outputs", "expand_inputs", "expand_inputs_rooted", "main"]

app = typer.Typer(
    name="adx",
    help="Train industrial visual anomaly detectors in PyTorch, export them to ONNX/TensorRT bundles, "
    "and score images from a bundle without PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's own help layout, not rich's tables: at 80 columns rich cut flag names and squeezed the
    # help into a 20-character column; click wraps help under a long flag instead and rewraps text.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Exit codes: 0 all fine, 1 an error stopped the command, 3 some images could not be scored,
#: 130 interrupted (Ctrl-C).
EXIT_ERROR = 1
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


def _err(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def handle_errors(fn: F) -> F:
    """Print library errors as one message (no traceback) and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            _err(str(exc))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except AdxError as exc:
            _err(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except ModuleNotFoundError as exc:
            # A safety net behind require(): an optional package imported where no check named it.
            need = _NEED_BY_MODULE.get((exc.name or "").partition(".")[0])
            if need is None:
                raise
            _err(f"{need.what} is not installed (import of {exc.name!r} failed): pip install 'adexport[{need.extra}]'")
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Need:
    """An optional package a command imports: its import name, the name users know it by, and the
    adexport extra that installs it."""

    module: str
    what: str
    extra: str


TORCH = Need("torch", "PyTorch", "train")
TIMM = Need("timm", "timm", "train")
ONNX = Need("onnx", "onnx", "train")
SAFETENSORS = Need("safetensors", "safetensors", "train")
ONNXRUNTIME = Need("onnxruntime", "ONNX Runtime", "cpu")
SKLEARN = Need("sklearn", "scikit-learn", "eval")
SCIPY = Need("scipy", "scipy", "eval")
MATPLOTLIB = Need("matplotlib", "matplotlib", "eval")
_NEED_BY_MODULE = {n.module: n for n in (TORCH, TIMM, ONNX, SAFETENSORS, ONNXRUNTIME, SKLEARN, SCIPY, MATPLOTLIB)}

#: What each command needs beyond the core install, checked by require() before any work starts,
#: so a missing extra is one line at once, not a traceback (or an error after every image is scored).
#: The runtime's own commands (infer, bench, serve) check ONNX Runtime, FAISS and tritonclient as
#: they load, before scoring.
NEEDS: dict[str, tuple[Need, ...]] = {
    "train": (TORCH, TIMM, SAFETENSORS),
    "methods": (TORCH,),
    "export": (TORCH, ONNX, SAFETENSORS, ONNXRUNTIME),
    "bench-fit": (TORCH, TIMM, ONNX, SAFETENSORS, ONNXRUNTIME),
    "demo": (TORCH, TIMM, ONNX, SAFETENSORS, ONNXRUNTIME, SKLEARN, SCIPY),
    "eval": (SKLEARN, SCIPY),
    "eval --report": (SKLEARN, SCIPY, MATPLOTLIB),
    "calibrate": (SKLEARN, SCIPY),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def require(command: str) -> None:
    """Raise DependencyError naming every missing package of ``command`` (a key of NEEDS) and the
    extras that install them, in one line."""
    missing = [need for need in NEEDS[command] if not _installed(need.module)]
    if not missing:
        return
    extras = list(dict.fromkeys(need.extra for need in missing))
    hint = " (on an NVIDIA GPU box, gpu instead of cpu)" if "cpu" in extras else ""
    raise DependencyError(f"adx {command} needs {', '.join(need.what for need in missing)}, not installed here: "
                          f"pip install 'adexport[{','.join(extras)}]'{hint}")


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


# ------------------------------------------------------------------------------- shared options
# Options several commands take, declared once (typer copies the option's info for each command).
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, notes or summary lines.")]
Category = Annotated[Optional[str], typer.Option("--category", "-c", help="Category folder inside DATASET.")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Write every figure here, as JSON.")]
# The graph runners' table names the devices, so a new runtime target needs no edit here.
Device = Annotated[str, typer.Option(help=f"Where the graph runs: {' | '.join(RUNNERS)}.")]
BankDevice = Annotated[str, typer.Option(help="FAISS search: auto | cpu | cuda.")]
SearchParams = Annotated[Optional[list[str]], typer.Option("--search-param", help="FAISS search parameter NAME=VALUE overriding the bundle's, repeatable: nprobe=N (IVF), efSearch=N (HNSW) [default: the bundle's].")]
# The method: resolved by the registry when not given (its first entry), so no method is named here.
Method = Annotated[Optional[str], typer.Option("--method", "-m", help="Method; `adx methods` lists them [default: the first one listed].")]
SetOptions = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="KEY=VALUE for any method option, repeatable; `adx methods METHOD` lists options, types and defaults.")]
# Generic shortcuts for options many methods share; every other method option is --set KEY=VALUE.
Backbone = Annotated[Optional[str], typer.Option(help="Shortcut for --set backbone=... (timm name) [default: efficientnet_lite0, offline weights].")]
Weights = Annotated[Optional[str], typer.Option(help="Shortcut for --set weights=...: auto | offline | timm | random | path to a .safetensors or .pth file.")]
Layers = Annotated[Optional[str], typer.Option(help="Shortcut for --set layers=...: feature stages by index or name, e.g. 2,3 or layer2,layer3.")]
ImageSize = Annotated[Optional[int], typer.Option(help="Shortcut for --set image_size=...: square input size after resize [default: the method's].")]
Epochs = Annotated[Optional[int], typer.Option(help="Trained methods: shortcut for --set epochs=... [default: the method's].")]
Seed = Annotated[Optional[int], typer.Option(help="Shortcut for --set seed=...: holdout split, sampling, weights and shuffling [default: 0].")]


def _shortcuts(*, backbone: Optional[str], weights: Optional[str], layers: Optional[str], image_size: Optional[int],
               epochs: Optional[int], seed: Optional[int]) -> dict[str, Any]:
    """The generic shortcut flags as method options (``None``: not given)."""
    return {"backbone": backbone, "weights": weights, "layers": _parse_layers(layers), "image_size": image_size,
            "epochs": epochs, "seed": seed}


def _tiling(tile: Optional[int], overlap: int, working_size: Optional[int], image_size: Optional[int]) -> Any:
    """``--tile``/``--tile-overlap``/``--working-size`` -> a TilingSpec, or None without ``--tile``."""
    from adx_runtime.preprocess import TilingSpec  # noqa: PLC0415

    if tile is None:
        if working_size is not None or overlap != 32:
            raise ConfigError("--tile-overlap and --working-size apply to tiled training; add --tile SIZE")
        return None
    if image_size is not None and image_size != tile:
        raise ConfigError(f"--tile {tile} sets the model's input size; --image-size {image_size} contradicts it "
                          "(leave --image-size out)")
    if tile < 32:
        raise ConfigError(f"--tile must be at least 32 pixels, got {tile}")
    spec = TilingSpec(overlap=overlap, working_size=working_size)
    spec.check((tile, tile))
    return spec


def _method_name(method: Optional[str]) -> str:
    """``--method`` as given, or the registry's default (its first entry)."""
    if method is not None:
        return method
    from adexport.methods import method_names  # noqa: PLC0415

    return method_names()[0]


def _method_options(method: str, shortcuts: dict[str, Any], assignments: Optional[list[str]]) -> dict[str, Any]:
    """Shortcut flags and ``--set`` items -> the method's typed overrides."""
    from adexport.methods import get_method  # noqa: PLC0415
    from adexport.methods.base import merge_options  # noqa: PLC0415

    return merge_options(get_method(method).config_cls, shortcuts, assignments or [])


def _search_params(items: Optional[list[str]]) -> dict[str, float]:
    """``--search-param nprobe=16`` (repeatable) -> ``{"nprobe": 16}``."""
    from adx_runtime.knn import parse_search_params  # noqa: PLC0415

    return parse_search_params(items)


def _write_json(path: Path, data: Any) -> None:
    """Write a command's figures as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


_FLAG_TYPES: dict[str, Any] = {"text": Optional[str], "int": Optional[int], "switch": bool,
                               "repeated": Optional[list[str]]}


def _export_option_parameter(option: ExportOption) -> inspect.Parameter:
    # A switch keeps the --x/--no-x pair typer gives a bool option.
    decls = (f"{option.flag}/--no-{option.flag[2:]}",) if option.kind == "switch" else (option.flag,)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY,
                             default=False if option.kind == "switch" else None,
                             annotation=Annotated[_FLAG_TYPES[option.kind], typer.Option(*decls, help=option.help)])


def with_export_options(fn: F) -> F:
    """One flag per method export option (:data:`METHOD_EXPORT_OPTIONS`) in place of ``fn``'s
    ``export_options`` parameter, which receives the options given as the library takes them; so a
    new export option is a row in that table, not a flag here."""
    signature = inspect.signature(fn, eval_str=True)
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name == "export_options":
            params += [_export_option_parameter(option) for option in METHOD_EXPORT_OPTIONS]
        else:  # keyword-only, so generated options may sit between ones with and without defaults
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        given = {option.name: option.from_cli(kwargs.pop(option.name, None)) for option in METHOD_EXPORT_OPTIONS}
        return fn(**kwargs, export_options={k: v for k, v in given.items() if v is not None})

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


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
    test_defects: Annotated[str, typer.Option(help=(
        "Family of the test defects: 'demo' = each category's own kinds, painted with the primitives the "
        "training anomaly synthesis (adx_synth.anomalies) also uses (defects like the synthesis); 'field' = scratch, crack, "
        "pit, stain, burn from an independent module (defects unlike it). train/good and test/good are "
        "identical either way, so write the two families to two folders and evaluate one model on both."))] = "demo",
    defect_scale: Annotated[str, typer.Option(help=(
        "'normal' = defects sized relative to the image; 'small' = the few-pixel defects of a megapixel "
        "camera (scratches 1-2 px wide, hairline cracks, pits 1-3 px, stains 6-14 px, burns 5-12 px), "
        "with --test-defects field only. High resolution: --image-size 1024 --defect-scale small "
        "--test-defects field."))] = "normal",
    quiet: Quiet = False,
) -> None:
    """Generate the built-in demo dataset: textures with defects and masks, deterministic, no download."""
    from adx_synth import count_demo_images, generate_demo_dataset  # noqa: PLC0415

    cats = [c.strip() for c in categories.split(",")] if categories else None
    total = count_demo_images(cats, n_train=n_train, n_test_good=n_test_good, n_test_per_defect=n_test_defect,
                              test_defects=test_defects)
    with _progress(quiet).task(f"Writing {total} images", total) as advance:
        summary = generate_demo_dataset(out, cats, n_train=n_train, n_test_good=n_test_good,
                                        n_test_per_defect=n_test_defect, image_size=image_size, seed=seed,
                                        progress=advance, test_defects=test_defects,
                                        defect_scale=defect_scale)
    for cat, counts in summary.items():
        typer.echo(f"{out / cat}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command("synth-preview")
@handle_errors
def synth_preview(
    dataset: Annotated[Path, typer.Argument(help="Dataset root in the MVTec AD layout, or one category folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the grid PNGs, one per kind (created).")],
    category: Category = None,
    kind: Annotated[Optional[str], typer.Option(help="Comma-separated anomaly kinds to draw [default: every kind the generator has; a wrong name lists them].")] = None,
    n: Annotated[int, typer.Option("--n", help="Training images to draw on (the first N of train/good).")] = 8,
    image_size: Annotated[int, typer.Option(help="Side the images are resized to, in pixels; scar sizes scale with it.")] = 128,
    seed: Annotated[int, typer.Option(help="Same seed, same pictures.")] = 0,
    textures: Annotated[Optional[Path], typer.Option(help="Folder of texture images (e.g. DTD) for texture anomalies; default: the generated textures except the category's own.")] = None,
) -> None:
    """Draw synthetic anomalies (pasted patches, scars, Perlin textures) on a category's training images, as grids.

    Each PNG pairs a row of anomalous images with a row of the same images, the anomaly outlined in red.
    """
    from adx_synth.anomalies import write_preview  # noqa: PLC0415

    kinds = {"kinds": tuple(k.strip() for k in kind.split(",") if k.strip())} if kind else {}  # else the library's
    paths = write_preview(dataset, category, out, **kinds, n=n, image_size=image_size, seed=seed, textures=textures)
    for path in paths:
        typer.echo(str(path))


# ---------------------------------------------------------------------------------------- train
@app.command()
@handle_errors
def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset root in the MVTec AD layout, or one category folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the fitted model (created).")],
    category: Category = None,
    method: Method = None,
    set_: SetOptions = None,
    backbone: Backbone = None,
    weights: Weights = None,
    layers: Layers = None,
    image_size: ImageSize = None,
    epochs: Epochs = None,
    seed: Seed = None,
    holdout: Annotated[float, typer.Option(help="Fraction of train/good kept out of the fit to calibrate thresholds.")] = 0.2,
    device: Annotated[str, typer.Option(help="Torch device: auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass for feature extraction and calibration (a trained method's optimiser batch is --set batch_size=N).")] = 8,
    resume: Annotated[bool, typer.Option(help="Trained methods: go on from OUT.checkpoint.pt (written every checkpoint_every epochs and on Ctrl-C).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it is a fitted model written by `adx train` (anything else is refused).")] = False,
    tile: Annotated[Optional[int], typer.Option(help="Score at the image's own resolution, cut into tiles of this side (the model's input size, so it replaces --image-size) instead of resizing the whole image to --image-size. For small defects on large images.")] = None,
    tile_overlap: Annotated[int, typer.Option(help="With --tile: pixels neighbouring tiles share; their maps blend over it.")] = 32,
    working_size: Annotated[Optional[int], typer.Option(help="With --tile: resize each image so its longer side is this many pixels before tiling [default: its own size].")] = None,
    quiet: Quiet = False,
) -> None:
    """Fit a method on the normal images of one category and write the fitted model (safetensors + JSON).

    Every method option is --set KEY=VALUE (`adx methods METHOD` lists them); the shortcut flags cover the
    common ones. Trained networks (`adx methods` marks them) show epoch, loss and time left, write a
    checkpoint every few epochs and on Ctrl-C (resume with --resume), and draw their loss curve into
    OUT/loss_curve.png.
    """
    require("train")
    from adexport.fit_pipeline import run_training  # noqa: PLC0415

    tiling = _tiling(tile, tile_overlap, working_size, image_size)
    shortcuts = _shortcuts(backbone=backbone, weights=weights, layers=layers,
                           image_size=tile if tile is not None else image_size, epochs=epochs, seed=seed)
    text = run_training(dataset, out, category, _method_name(method), shortcuts=shortcuts, assignments=set_ or [],
                        holdout=holdout, device=device, feature_batch_size=batch_size, resume=resume,
                        overwrite=overwrite, progress=_progress(quiet), tiling=tiling)
    typer.echo(text)


@app.command()
@handle_errors
def methods(
    name: Annotated[Optional[str], typer.Argument(help="A method: list its options, types, defaults and help.")] = None,
) -> None:
    """List the methods, or one method's options (what `adx train --set KEY=VALUE` accepts).

    Without NAME, one line per method: what it computes and how it learns (one-pass fit or trained
    network). With NAME, every option with its type, default, valid values and help.
    """
    require("methods")
    from adexport.methods import METHODS  # noqa: PLC0415
    from adexport.methods.options import format_methods  # noqa: PLC0415

    typer.echo(format_methods(list(METHODS.values()), name))


# --------------------------------------------------------------------------------------- export
@app.command()
@handle_errors
@with_export_options
def export(
    model: Annotated[Path, typer.Argument(help="Fitted model folder written by `adx train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write (atomically).")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx | tensorrt (ONNX bundle + engine for this GPU) | triton (MODEL is a bundle; OUT a Triton model repository).")] = "onnx",
    export_options: Optional[dict[str, Any]] = None,  # a flag per METHOD_EXPORT_OPTIONS row (with_export_options)
    quantize: Annotated[Optional[str], typer.Option(help="int8: statically quantized graph (ONNX Runtime QDQ, per-channel int8 weights), parity checked against float32 torch [default: none, float32]. Methods that declare int8 unsafe refuse it.")] = None,
    quantize_images: Annotated[Optional[int], typer.Option(help="With --quantize int8: training images the activation ranges are measured on (not the score thresholds' held-out images) [default: 32].")] = None,
    calibration_images: Annotated[Optional[int], typer.Option(hidden=True, help="Deprecated: --quantize-images.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset, 13 to 20.")] = 17,
    parity_images: Annotated[Optional[list[str]], typer.Option(help="Images for the parity check [default: recorded at training].")] = None,
    parity_tolerance: Annotated[Optional[float], typer.Option(help="Relative tolerance for scores and maps [default: the method's, 1e-3 for exact scoring].")] = None,
    max_batch: Annotated[int, typer.Option(help="TensorRT: largest batch of the engine's shape profile; triton: max_batch_size.")] = 16,
    max_queue_delay_us: Annotated[int, typer.Option(help="triton: dynamic batching's max_queue_delay_microseconds (0: batch what queued while the model was busy).")] = 0,
    instances: Annotated[int, typer.Option(help="triton: instances of each model (instance_group count).")] = 1,
    fp16: Annotated[bool, typer.Option(help="TensorRT: build a float16 engine (parity measured against float32 torch); methods that lose accuracy in fp16 refuse it.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it is a bundle (anything else is refused); the old one is kept until the new one is in place.")] = False,
    quiet: Quiet = False,
) -> None:
    """Export a fitted model to a bundle: ONNX graph, scoring data, manifest, parity check.

    With --format triton, MODEL is a bundle folder and OUT a Triton model repository (see `adx triton-repo`).
    """
    if format == "triton":
        _triton_repo(model, out, max_batch=max_batch, delay_us=max_queue_delay_us, instances=instances, name=None)
        return
    if (quantize_images is not None or calibration_images is not None) and quantize is None:
        flag = "--quantize-images" if quantize_images is not None else "--calibration-images"
        raise ConfigError(f"{flag} sets the images int8 activation ranges are measured on and needs --quantize int8; "
                          "add --quantize int8 or drop it")
    if calibration_images is not None:  # the old name, kept for users' scripts
        if quantize_images is not None:
            raise ConfigError("--calibration-images is the old name of --quantize-images; give only --quantize-images")
        typer.secho("note: --calibration-images is now --quantize-images (int8 activation ranges, not score "
                    "thresholds); the old name will go", fg=typer.colors.YELLOW, err=True)
        quantize_images = calibration_images
    require("export")
    from adexport.export import export_bundle, format_export_summary  # noqa: PLC0415

    images = [str(p) for p in expand_inputs(parity_images)] if parity_images else None
    tolerance = None
    if parity_tolerance is not None:
        tolerance = {"image_scores": parity_tolerance, "maps": parity_tolerance}  # graph outputs keep the export's own
    manifest = export_bundle(model, out, fmt=format, opset=opset, parity_images=images, tolerance=tolerance,
                             max_batch=max_batch, fp16=fp16, quantize=quantize,
                             **({} if quantize_images is None else {"quantize_images": quantize_images}),
                             **(export_options or {}), overwrite=overwrite, progress=_progress(quiet))
    typer.echo(format_export_summary(manifest, out))


def _triton_repo(bundle: Path, out: Path, **kw: Any) -> None:
    from adx_runtime.triton_repo import write_repository  # noqa: PLC0415

    entry = write_repository(bundle, out, **kw)
    typer.echo(entry.format(out))


@app.command("triton-repo")
@handle_errors
def triton_repo(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `adx export`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Triton model repository: a new or empty folder, or one adx wrote (a new version is added).")],
    name: Annotated[Optional[str], typer.Option(help="Model name [default: METHOD_CATEGORY from the manifest].")] = None,
    max_batch: Annotated[int, typer.Option(help="max_batch_size of every model.")] = 16,
    max_queue_delay_us: Annotated[int, typer.Option(help="Dynamic batching: longest wait for a fuller batch, microseconds (0: batch what queued while the model was busy; each ensemble step waits).")] = 0,
    instances: Annotated[int, typer.Option(help="Instances of each model (instance_group count).")] = 1,
) -> None:
    """Write a bundle as a Triton model repository: graph (onnxruntime backend), scorer and decoder (Python
    backend, the runtime's own code), ensembles for float tensors and for encoded image bytes. A tiled
    bundle becomes its graph and one Python-backend NAME_image that cuts, scores and stitches each image
    (maps at the image's size; no float-tensor ensemble).

    A new export of the same model becomes the next version folder; the generated README.md says how to run it.
    A folder holding anything adx did not write (or changed since) is refused before anything is written.
    """
    _triton_repo(bundle, out, name=name, max_batch=max_batch, delay_us=max_queue_delay_us, instances=instances)


@app.command()
@handle_errors
def serve(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folders to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    max_batch: Annotated[int, typer.Option(help="Dynamic batching: largest batch (1 = no batching).")] = 16,
    max_queue_delay_us: Annotated[int, typer.Option(help="Dynamic batching: longest wait for a fuller batch, microseconds (0: batch what queued while the model was busy; each ensemble step waits).")] = 0,
    instances: Annotated[int, typer.Option(help="Instances of each model (parallel executions).")] = 1,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per graph instance (0 = all cores).")] = 0,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 180.0,
    verbose: Annotated[bool, typer.Option(help="Show Triton's own log.")] = False,
) -> None:
    """Serve bundles on Triton Inference Server (PyTriton's tritonserver) until SIGTERM or Ctrl-C.

    Each bundle is verified and served as NAME (preprocessed float input) and NAME_image (encoded image bytes);
    a bundle that fails is reported and the others still serve. Needs `pip install 'adexport[serve]'`.
    """
    from adx_runtime.serve import ServeOptions, serve as run_serve  # noqa: PLC0415

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, max_batch=max_batch,
                           delay_us=max_queue_delay_us, instances=instances, threads=threads,
                           startup_timeout=startup_timeout, verbose=verbose)
    raise typer.Exit(run_serve([str(b) for b in bundles], options, lambda line: typer.echo(line, err=line.startswith(("error", "note")))))


# ---------------------------------------------------------------------------------------- infer
@app.command()
@handle_errors
def infer(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `adx export`; with --server, the served model's name (or a bundle folder, whose manifest names it).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quote them).")],
    server: Annotated[Optional[str], typer.Option(help="Score on a Triton server (`adx serve`): http://HOST:PORT or grpc://HOST:PORT; images go as encoded bytes.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Result file, or - for standard output.")] = "-",
    fmt: Annotated[str, typer.Option("--format", help="jsonl | csv.")] = "jsonl",
    threshold: Annotated[Optional[float], typer.Option(help="Raw image-score threshold overriding the bundle's.")] = None,
    device: Device = "cpu",
    bank_device: BankDevice = "auto",
    search_param: SearchParams = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    save_maps: Annotated[Optional[Path], typer.Option(help="Folder for heatmap overlays (PNG), each at its image's own size.")] = None,
    raw_maps: Annotated[Optional[str], typer.Option(help="Also write each raw map into --save-maps at the image's size: npy (float32 raw scores) or png16 (16-bit normalised map, pixel threshold = 32768).")] = None,
    recursive: Annotated[bool, typer.Option(help="Look into sub-folders of input folders.")] = False,
    quiet: Quiet = False,
) -> None:
    """Score images with a bundle, without PyTorch: one line per image (path, raw score, normalised score, label).

    A file that cannot be decoded is reported on its line and the others are still scored; the exit code is
    then 3.
    """
    from adx_runtime.infer import score_files  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    rooted = expand_inputs_rooted(inputs, recursive)
    paths = [path for path, _ in rooted]
    check_outputs(output, save_maps, paths)
    if server is not None:
        remote = _remote_model(server, bundle, threshold=threshold, save_maps=save_maps, device=device,
                               search_param=search_param, bank_device=bank_device, batch_size=batch_size)
    else:
        predictor = Predictor.load(bundle, device=device, bank_device=bank_device, threshold=threshold,
                                   search_params=_search_params(search_param))
    sink = sys.stdout if output == "-" else open(output, "w", newline="", encoding="utf-8")
    try:
        if server is not None:
            from adx_runtime.infer import score_files_remote  # noqa: PLC0415

            summary = score_files_remote(remote, paths, sink, fmt=fmt, progress=_progress(quiet or output == "-"))
        else:
            summary = score_files(predictor, paths, sink, fmt=fmt, batch_size=batch_size, save_maps=save_maps,
                                  raw_maps=raw_maps, roots=[root for _, root in rooted],
                                  progress=_progress(quiet or output == "-"))
    finally:
        if sink is not sys.stdout:
            sink.close()
    if not quiet:
        typer.echo(summary.format(), err=True)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _remote_model(server: str, bundle: Path, *, threshold: Optional[float], save_maps: Optional[Path],
                  device: str, search_param: Optional[list[str]] = None, bank_device: str = "auto",
                  batch_size: int = 8) -> Any:
    from adx_runtime.client import RemoteModel  # noqa: PLC0415

    # Every option that changes local scoring is refused here: ignored, it would score with the
    # server's settings while the user believes their own applied.
    unsupported = [flag for flag, given in (("--threshold", threshold is not None), ("--save-maps", save_maps is not None),
                                            ("--device", device != "cpu"), ("--search-param", bool(search_param)),
                                            ("--bank-device", bank_device != "auto"),
                                            ("--batch-size", batch_size != 8)) if given]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)} act on local inference; with --server the server's bundle decides "
                          "(serve a recalibrated bundle, or drop --server)")
    name = str(bundle)
    if (bundle / "manifest.json").is_file():
        from adx_runtime.bundle import read_manifest  # noqa: PLC0415
        from adx_runtime.triton_repo import model_name  # noqa: PLC0415

        name = model_name(read_manifest(bundle))
    return RemoteModel(server, name)


# ---------------------------------------------------------------------------------------- watch
@app.command()
@handle_errors
def watch(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `adx export`.")],
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="A hot folder (every image that appears in it is scored once; sub-folders are not watched), a video file, a stream URL (rtsp://, http(s):// MJPEG, ...) or a camera (/dev/video0 or 0).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Result file (JSON lines, appended), or - for standard output.")] = "-",
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for the journal of scored files and the dead-letter files of --webhook and --mqtt [default: FOLDER/.adx-watch; ./.adx-watch for a video source].")] = None,
    no_journal: Annotated[bool, typer.Option("--no-journal", help="Keep no journal: a restart scores every image in the folder again.")] = False,
    move: Annotated[bool, typer.Option("--move", help="Move each scored image into FOLDER/done/ (or FOLDER/failed/ when it could not be scored).")] = False,
    poll: Annotated[bool, typer.Option("--poll", help="Poll the folder instead of using file events (network shares).")] = False,
    settle_ms: Annotated[float, typer.Option(help="Without a close or rename event, a file is complete once its size and time stay unchanged this long.")] = 1000.0,
    max_batch: Annotated[int, typer.Option(help="Images or frames scored together at most; a live source keeps only this many newest frames.")] = 8,
    max_delay_ms: Annotated[float, typer.Option(help="How long a waiting image may wait for others to fill a batch.")] = 50.0,
    max_images: Annotated[Optional[int], typer.Option(help="Stop after this many images.")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
    status_every: Annotated[float, typer.Option(help="Seconds between status lines on standard error.")] = 10.0,
    every: Annotated[int, typer.Option("--every", help="Video: score every Nth frame read (1: every frame).")] = 1,
    roi: Annotated[Optional[str], typer.Option("--roi", help="Region x,y,w,h (pixels of the source image or frame) cut out before the bundle's own preprocessing [default: the whole picture].")] = None,
    realtime: Annotated[bool, typer.Option("--realtime", help="Read a video file at its own frame rate, as a live camera (frames dropped when scoring lags), to rehearse a line with a recording.")] = False,
    save_anomalies: Annotated[Optional[Path], typer.Option("--save-anomalies", help="Save each anomalous image or frame with its heatmap overlay (JPEG) in this folder; the record gets its path as 'saved'.")] = None,
    save_normal_every: Annotated[int, typer.Option("--save-normal-every", help="With --save-anomalies: also save every Nth normal one, for audits (0: none).")] = 0,
    webhook: Annotated[Optional[str], typer.Option("--webhook", help="Also POST each record as JSON to this http(s) URL, in order, retried with backoff on its own thread.")] = None,
    webhook_timeout: Annotated[float, typer.Option(help="At stop, seconds the webhook may take to deliver what it holds; the rest goes to OUT/webhook-undelivered.jsonl and the exit status is 3.")] = 10.0,
    mqtt: Annotated[Optional[str], typer.Option("--mqtt", help="Also publish each record as JSON to an MQTT broker, QoS 1, on TOPIC-PREFIX/SOURCE-NAME (the folder's, stream's or camera's last name part): mqtt://[USER:PASSWORD@]HOST[:PORT]/TOPIC-PREFIX, port 1883 by default; needs the mqtt extra.")] = None,
    mqtt_timeout: Annotated[float, typer.Option(help="At stop, seconds the broker may take to acknowledge (PUBACK) what is pending; the rest goes to OUT/mqtt-undelivered.jsonl and the exit status is 3.")] = 10.0,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics (images, anomalies, errors, dropped frames, latency histogram, FPS) at http://METRICS-HOST:PORT/metrics; 0 picks a free port, and the start line says which; needs the metrics extra [default: off].")] = None,
    metrics_host: Annotated[str, typer.Option("--metrics-host", help="Address the metrics endpoint listens on; 0.0.0.0 lets other machines scrape it (it has no authentication).")] = "127.0.0.1",
    threshold: Annotated[Optional[float], typer.Option(help="Raw image-score threshold overriding the bundle's.")] = None,
    device: Device = "cpu",
    bank_device: BankDevice = "auto",
    search_param: SearchParams = None,
    quiet: Quiet = False,
) -> None:
    """Score images as they arrive in a folder, or the frames of a video file, stream or camera: one JSON line per image or frame (the `adx infer` fields plus source, timestamp, latency; frames also their index).

    SIGTERM or Ctrl-C stops taking input, finishes what is in hand and exits 0. For a folder, a journal makes a
    restart score nothing twice and miss nothing. A live stream that ends is reconnected; frames that arrive
    while scoring lags are dropped (newest kept) and counted.
    """
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from adx_runtime.predictor import Predictor  # noqa: PLC0415
    from adx_runtime.watch import JsonLinesSink, WatchOptions, frame_source, parse_roi  # noqa: PLC0415
    from adx_runtime.watch import watch as run_watch  # noqa: PLC0415

    folder = Path(source)
    is_folder = folder.is_dir()
    state_dir = out or (folder / ".adx-watch" if is_folder else Path(".adx-watch"))
    options = WatchOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, settle_ms=settle_ms, poll=poll, move=move,
                           journal_dir=None if no_journal else state_dir,
                           max_images=max_images, max_seconds=max_seconds, status_s=status_every,
                           every=every, roi=parse_roi(roi), realtime=realtime, save_dir=save_anomalies,
                           save_normal_every=save_normal_every)
    options.check()
    log = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
    # A video source is classified (and PyAV looked for) before the bundle loads: a typo is the first error.
    watched: Any = folder if is_folder else frame_source(source, every=every, roi=options.roi, capacity=max_batch,
                                                         realtime=realtime, log=log)
    sinks: list[Any] = [JsonLinesSink(output)]
    if webhook is not None:  # a bad URL is refused here, before the bundle loads
        from adx_runtime.watch.sinks import WebhookSink  # noqa: PLC0415

        sinks.append(WebhookSink(webhook, state_dir, flush_timeout_s=webhook_timeout))
    if mqtt is not None:  # a bad URL or a missing paho-mqtt is refused here, before the bundle loads
        from adx_runtime.watch.mqtt import MqttSink  # noqa: PLC0415

        sinks.append(MqttSink(mqtt, state_dir, flush_timeout_s=mqtt_timeout))
    if metrics_port is not None:  # second, after the output file: a taken port fails before any sink thread starts
        from adx_runtime.watch.metrics import MetricsSink  # noqa: PLC0415

        sinks.insert(1, MetricsSink(metrics_port, metrics_host))
    predictor = Predictor.load(bundle, device=device, bank_device=bank_device, threshold=threshold,
                               search_params=_search_params(search_param))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_watch(predictor, watched, sinks, options, stop=stop, log=log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if any(getattr(sink, "lost", 0) for sink in sinks):
        raise typer.Exit(EXIT_SOME_FAILED)  # records were scored but not delivered (dead-letter file)


# ----------------------------------------------------------------------------------------- eval
@app.command("eval")
@handle_errors
def eval_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    dataset: Annotated[Path, typer.Argument(help="Dataset root (MVTec AD layout) or a category folder.")],
    category: Category = None,
    json_out: JsonOut = None,
    report: Annotated[Optional[Path], typer.Option(help="Folder for ROC/PRO curves, score histogram, worst-case galleries and index.html.")] = None,
    device: Device = "cpu",
    bank_device: BankDevice = "auto",
    search_param: SearchParams = None,
    threshold: Annotated[Optional[float], typer.Option(help="Raw image threshold overriding the bundle's.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    compare: Annotated[Optional[Path], typer.Option(help="A second bundle of the same model (e.g. the float32 one of an int8 bundle): both scored, metrics side by side with differences.")] = None,
    quiet: Quiet = False,
) -> None:
    """Score a test split with the torch-free runtime: image/pixel AUROC, AUPRO, F1-max, per defect type.

    Pixel metrics need masks in ground_truth/; without them only image metrics are reported, and the output
    says so.
    """
    require("eval --report" if report else "eval")
    from adx_runtime.evaluate import evaluate, format_evaluation  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    params = _search_params(search_param)
    predictor = Predictor.load(bundle, device=device, bank_device=bank_device, threshold=threshold, search_params=params)
    ev = evaluate(bundle, dataset, category, batch_size=batch_size, progress=_progress(quiet), predictor=predictor)
    typer.echo(format_evaluation(ev))
    # Warnings on stderr (and in --json): numbers that are no verdict must not pass as one.
    for warning in ev.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if compare is not None:
        from adx_runtime.evaluate import format_eval_comparison  # noqa: PLC0415

        other = evaluate(compare, dataset, category, batch_size=batch_size, progress=_progress(quiet),
                         predictor=Predictor.load(compare, device=device, bank_device=bank_device, threshold=threshold,
                                                  search_params=params))
        typer.echo(format_evaluation(other))
        for warning in other.warnings:
            typer.secho(f"warning: {compare}: {warning}", fg=typer.colors.YELLOW, err=True)
        typer.echo(format_eval_comparison(ev, other))
    if json_out:
        _write_json(json_out, ev.to_json())
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
    category: Category = None,
    mode: Annotated[str, typer.Option(help="f1: F1-optimal thresholds; fpr: at most --fpr of good images flagged.")] = "f1",
    fpr: Annotated[float, typer.Option(help="With --mode fpr: allowed false-positive rate on good images (and pixels).")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    force: Annotated[bool, typer.Option("--force", help="Write a threshold that flags every good image or detects no anomalous one (refused otherwise).")] = False,
    quiet: Quiet = False,
) -> None:
    """Reset the bundle's image threshold (and pixel threshold when masks exist) from a validation split.

    The change is recorded in the manifest's calibration history. Use a validation set separate from the
    test set you report metrics on. A threshold that flags every good image of the split, or detects none of
    its anomalous images, is refused unless --force.
    """
    require("calibrate")
    from adx_runtime.recalibrate import format_recalibration, recalibrate  # noqa: PLC0415

    entry = recalibrate(bundle, dataset, category, mode=mode, fpr=fpr, batch_size=batch_size, progress=_progress(quiet),
                        force=force)
    typer.echo(format_recalibration(entry, bundle))
    for warning in entry["warnings"]:  # also kept in the manifest's calibration history
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


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
    device: Device = "cpu",
    bank_device: BankDevice = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = all cores).")] = 0,
    search_param: SearchParams = None,
    compare: Annotated[Optional[Path], typer.Option(help="A second bundle, printed side by side with ratios.")] = None,
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    """Latency and throughput of a bundle: batch-size sweep, p50/p90/p99, time split by stage, memory, size.

    Stages: decode+preprocess, graph (ONNX Runtime), scoring (bank search or density), post (upsample + blur).
    """
    from adx_runtime.bench import compare_bundles, format_report, run_bench  # noqa: PLC0415

    options = dict(images=expand_inputs(images) if images else None, batch_sizes=_int_list(batch_sizes), runs=runs,
                   warmup=warmup, device=device, bank_device=bank_device, threads=threads,
                   search_params=_search_params(search_param) or None)
    if compare is None:
        result = run_bench(bundle, **options, progress=_progress(quiet))
        typer.echo(format_report(result))
    else:
        result, text = compare_bundles(bundle, compare, **options)
        typer.echo(text)
    if json_out:
        _write_json(json_out, result)
        if not quiet:
            typer.echo(f"wrote {json_out}")


@app.command("bench-fit")
@handle_errors
@with_export_options
def bench_fit_cmd(
    method: Method = None,
    set_: SetOptions = None,
    backbone: Backbone = None,
    weights: Weights = None,
    layers: Layers = None,
    image_size: ImageSize = None,
    epochs: Epochs = None,
    seed: Seed = None,
    export_options: Optional[dict[str, Any]] = None,  # a flag per METHOD_EXPORT_OPTIONS row (with_export_options)
    n_train: Annotated[int, typer.Option(help="Normal training images to generate.")] = 60,
    data_size: Annotated[int, typer.Option(help="Side of the generated images, px.")] = 160,
    out: Annotated[Optional[Path], typer.Option(help="Keep data, model and bundle here (then run `adx bench OUT/bundle`).")] = None,
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    """Time fit and export phases on generated data: imports, backbone, features, coreset, calibration, export.

    Method options as for `adx train` (--set KEY=VALUE and the shortcut flags); export options as for `adx export`.
    """
    require("bench-fit")
    t0 = time.perf_counter()
    import timm  # noqa: F401, PLC0415  (timed here so "imports" holds all of the training stack's)

    from adexport.fit_bench import bench_fit, format_fit_report  # noqa: PLC0415

    import_seconds = time.perf_counter() - t0
    name = _method_name(method)
    shortcuts = _shortcuts(backbone=backbone, weights=weights, layers=layers, image_size=image_size, epochs=epochs,
                           seed=seed)
    result = bench_fit(method=name, options=_method_options(name, shortcuts, set_), n_train=n_train,
                       data_size=data_size, out=out, export_options=export_options,
                       import_seconds=import_seconds, progress=_progress(quiet))
    typer.echo(format_fit_report(result))
    if json_out:
        _write_json(json_out, result)


# ----------------------------------------------------------------------------------------- demo
@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, models, bundles and heatmaps.")] = Path("demo_out"),
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated demo categories; default: all.")] = None,
    method: Method = None,
    set_: SetOptions = None,
    n_train: Annotated[int, typer.Option(help="Normal training images per category.")] = 60,
    image_size: Annotated[int, typer.Option(help="Side of the generated images.")] = 160,
    quiet: Quiet = False,
) -> None:
    """Run the whole job on the built-in demo dataset: generate, train, export, infer, evaluate."""
    require("demo")
    from adexport.demo import format_demo, run_demo  # noqa: PLC0415

    cats = [c.strip() for c in categories.split(",")] if categories else None
    name = _method_name(method)
    results = run_demo(out, cats, method=name, options=_method_options(name, {}, set_) or None, n_train=n_train,
                       image_size=image_size, progress=_progress(quiet))
    typer.echo(format_demo(results, out))


# `adx select` lives in its own module, which imports nothing from this one (no cycle).
from adx_cli import select_cmd  # noqa: E402

app.command("select")(handle_errors(select_cmd.select))


class AdxCommand(TyperCommand):
    """Every command's help: arguments upper case (``MODEL``, ``INPUTS...``) in the usage line and
    the argument list, as click writes them, where typer writes ``{model}``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            # `adx --help` lists each command by the docstring's first paragraph, in full and wrapped:
            # click would otherwise cut it to the width left after the longest command name.
            self.short_help = " ".join(self.help.split("\n\n")[0].split())
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


for _info in app.registered_commands:  # typer fills in TyperCommand where a command names no class
    if _info.cls in (None, TyperCommand):
        _info.cls = AdxCommand


def main() -> None:
    app()


if __name__ == "__main__":
    main()
