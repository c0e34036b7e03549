"""``adx select``: which method's bundle should go on this box (registered by :mod:`adx_cli.app`).

Its own module so that ``app.py`` stays a list of short commands; it imports nothing from
``app.py`` (which imports it), and ``app.py`` wraps it in the same error handling as every command.
The flags ``--category`` and ``--quiet`` repeat the help texts of ``app.py``'s shared declarations
word for word (``tests/test_cli_generic.py`` checks that shared flags read the same everywhere).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Optional

import typer

from adx_runtime.errors import DependencyError

#: Import name -> what users know it by; ``adx select`` trains, exports and evaluates.
_NEEDS = {"torch": "PyTorch", "timm": "timm", "onnx": "onnx", "safetensors": "safetensors",
          "onnxruntime": "ONNX Runtime", "sklearn": "scikit-learn", "scipy": "scipy"}


def _require() -> None:
    missing = [what for module, what in _NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise DependencyError(f"adx select needs {', '.join(missing)}, not installed here: "
                              "pip install 'adexport[train,cpu,eval]' (on an NVIDIA GPU box, gpu instead of cpu)")


def select(
    dataset: Annotated[Path, typer.Argument(help="Dataset root in the MVTec AD layout, or one category folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run: candidates/, bundles/, best/, select.json, select.html (created; rerun with the same arguments to resume).")],
    category: Annotated[Optional[str], typer.Option("--category", "-c", help="Category folder inside DATASET.")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated candidate methods [default: every method `adx methods` lists].")] = None,
    budget: Annotated[Optional[str], typer.Option(help="Wall time for all candidates, e.g. 30m, 1h30m, 90s; trained networks get their epochs scaled to their share of it (measured by a 1-epoch probe fit), candidates that find it spent are skipped [default: none, every method's default epochs].")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option(help="Latency budget: pick the most accurate candidate whose p50 per image at batch 1 is at most this [default: none, the most accurate on the Pareto front].")] = None,
    device: Annotated[str, typer.Option(help="The target box: cpu | cuda, where candidates are fitted and benchmarked.")] = "cpu",
    metric: Annotated[str, typer.Option(help="Accuracy to rank by, on the selection set: image_auroc | aupro | f1 (image F1-max).")] = "image_auroc",
    seed: Annotated[int, typer.Option(help="Seed of the selection/report split of test/ (and of every method's seed option).")] = 0,
    option: Annotated[Optional[list[str]], typer.Option("--option", help="METHOD.KEY=VALUE: one method's option (`adx methods METHOD` lists them), repeatable; a bad one fails that candidate only.")] = None,
    fresh: Annotated[bool, typer.Option(help="Discard the finished candidates of an earlier run in OUT that had other arguments or data.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, notes or summary lines.")] = False,
) -> None:
    """Which bundle should go on this box: fit, export, evaluate and benchmark every candidate method, then pick.

    The pick is made on a selection set and reported on images it was not made on: validation/ of
    the category if present, else a seeded split of test/ in two halves stratified by defect type;
    with no defective images at all, synthetic defects on held-out normal images (a proxy, said so).
    Each candidate is fitted with its defaults, exported to ONNX, evaluated without torch and timed
    on --device at batch 1 and larger batches. A failing candidate is reported and the others go on;
    finished candidates are kept in OUT/candidates/ and a rerun with the same arguments skips them.
    Prints the ranked table, the Pareto front (accuracy up, latency down) and the pick, copies the
    pick's bundle to OUT/best and writes OUT/select.json and OUT/select.html (table and scatter).
    Exits 1 when nothing qualifies (all failed, or none within --max-latency-ms).
    """
    _require()
    from adexport.methods import method_names  # noqa: PLC0415
    from adexport.select.rank import parse_duration  # noqa: PLC0415
    from adexport.select.report import format_select  # noqa: PLC0415
    from adexport.select.run import SelectOptions, parse_set_items, run_select  # noqa: PLC0415
    from adx_runtime.errors import ConfigError  # noqa: PLC0415
    from adx_runtime.progress import SILENT, RichProgress  # noqa: PLC0415

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else method_names()
    if methods is not None and not names:
        raise ConfigError(f"--methods {methods!r} names no method; `adx methods` lists them")
    opts = SelectOptions(methods=names, budget_s=parse_duration(budget) if budget else None,
                         max_latency_ms=max_latency_ms, device=device, metric=metric, seed=seed,
                         assignments=parse_set_items(option or [], names), fresh=fresh)
    result = run_select(dataset, category, out, opts, progress=SILENT if quiet else RichProgress())
    typer.echo(format_select(result))
    if result.pick.name is None:
        raise ConfigError(f"no pick: {result.pick.reason}; the table and {out / 'select.json'} have every figure")
