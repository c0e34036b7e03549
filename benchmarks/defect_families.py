"""Every method on both test-defect families of the demo data: defects like the synthesis, and unlike it.

CutPaste and PRNet learn from anomalies made by ``adx_synth.anomalies``, which paints with the same
primitives as the demo generator's test defects (family ``demo``). The ``field`` family draws
scratches, cracks, pits, stains and burns with ``adx_synth/field_defects.py``, which shares no code
with that synthesis. train/good and test/good are byte-identical for the same seed in both families,
so each method is trained once per category, exported, and its bundle evaluated torch-free on both
test sets: the difference is the defects alone.

Settings are exactly those of ``adx demo`` (``adexport/demo.py``): every method's default options,
60 train/good images of 160 px per category (48 fitted, 12 held out for calibration), 10 test/good
and 5 per defect type, seed 0, the four demo categories. Torch runs on ``--threads`` threads (1 by
default, as the README's trained-method fit times).

Resumable: results go into ``OUT/defect_families.json`` after every method/category pair, and a pair
already there is skipped (the trained methods take minutes per category on a 2-core CPU).

Run (bank methods: seconds per category; trained methods: 3-9 minutes per category each):

    python benchmarks/defect_families.py --out families --methods patchcore,padim,spade
    python benchmarks/defect_families.py --out families --methods cutpaste,cutpaste_patch,prnet,rd4ad,riad
    python benchmarks/defect_families.py --out families --report     # the table from the JSON only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

#: Table rows: key -> (registered method, options, label). CutPaste appears twice, as the README shows it.
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "patchcore": ("patchcore", {}, "PatchCore"),
    "padim": ("padim", {}, "PaDiM"),
    "spade": ("spade", {}, "SPADE"),
    "rd4ad": ("rd4ad", {}, "RD4AD"),
    "riad": ("riad", {}, "RIAD"),
    "cutpaste": ("cutpaste", {}, "CutPaste, image level"),
    "cutpaste_patch": ("cutpaste", {"level": "patch"}, "CutPaste, patch level"),
    "prnet": ("prnet", {}, "PRNet"),
}
FAMILIES = ("demo", "field")
#: ``--synthesis thin``: the experiment of part 3 (README): the scar of CutPaste's 3-way task and of
#: PRNet's anomaly batch replaced, each time, by one of scar / curved stroke / speck cluster.
SYNTHESES = ("default", "thin")


ORIGINAL_SCAR: list[Any] = []  # the library's scar, kept before it is patched


def thin_or_scar(image: Any, rng: Any, **scar_args: Any) -> Any:
    """CutPaste's scar, a thin curved stroke or a cluster of specks, one third each."""
    from adx_synth.anomalies import strokes  # noqa: PLC0415

    scar = ORIGINAL_SCAR[0]
    pick = int(rng.integers(3))
    if pick == 0:
        return scar(image, rng, **scar_args)
    return strokes.stroke(image, rng) if pick == 1 else strokes.specks(image, rng)


def use_synthesis(name: str) -> None:
    """Patch the synthesis the trainers call (both look ``scar`` up in their module at call time)."""
    if name == "default":
        return
    from adx_synth.anomalies.cutpaste import scar  # noqa: PLC0415

    ORIGINAL_SCAR[:] = [scar]
    import importlib  # noqa: PLC0415

    # The modules themselves: the package's name ``cutpaste`` is the function, not the module.
    for module_name in ("adx_synth.anomalies.cutpaste", "adx_synth.anomalies.segmentation"):
        module = importlib.import_module(module_name)
        assert hasattr(module, "scar"), module_name  # cutpaste_batch's scar class; anomaly_batch's scar kind (PRNet)
        module.scar = thin_or_scar

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def make_data(root: Path, categories: list[str], seed: int) -> dict[str, Path]:
    """Both families with the demo's counts and seed (``adx demo-data A``, ``... B --test-defects field``)."""
    from adx_synth import generate_demo_dataset  # noqa: PLC0415

    roots = {fam: root / f"data_{fam}" for fam in FAMILIES}
    for fam, path in roots.items():
        if not all((path / c / "test").is_dir() for c in categories):
            generate_demo_dataset(path, categories, n_train=60, n_test_good=10, n_test_per_defect=5,
                                  image_size=160, seed=seed, test_defects=fam)
    return roots


class EpochLog:
    """Progress that prints a training loop's text every ``every`` changes (a log line per 10 epochs)."""

    def __init__(self, every: int = 10) -> None:
        self.every = every

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        seen = [0]

        def advance(n: int = 1, description: str | None = None) -> None:
            if description:
                seen[0] += 1
                if seen[0] % self.every == 0:
                    print(f"    {description}", flush=True)

        yield advance

    def note(self, message: str) -> None:
        pass


def run_pair(key: str, category: str, roots: dict[str, Path], out: Path, suffix: str = "",
             model_seed: int | None = None) -> dict[str, Any]:
    """Train one method on one category (demo settings), export, evaluate the bundle on both families."""
    from adexport.export import export_bundle  # noqa: PLC0415
    from adexport.fit_pipeline import train  # noqa: PLC0415
    from adexport.fitted import save_fitted  # noqa: PLC0415
    from adx_runtime.evaluate import evaluate  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415

    method, options, _ = VARIANTS[key]
    options = dict(options) | ({} if model_seed is None else {"seed": model_seed})
    t0 = time.perf_counter()
    # Exactly adx demo's call: default options (None when there are none), the demo family's train/good
    # (the same bytes as the field family's).
    fitted = train(roots["demo"], category, method, options=options or None, progress=EpochLog())
    fit_s = time.perf_counter() - t0
    model_dir = save_fitted(fitted, out / "models" / (key + suffix) / category, overwrite=True)
    bundle = out / "bundles" / (key + suffix) / category
    export_bundle(model_dir, bundle, overwrite=True)
    predictor = Predictor.load(bundle)
    row: dict[str, Any] = {"fit_seconds": round(fit_s, 1), "bundle": str(bundle)}
    for fam in FAMILIES:
        ev = evaluate(bundle, roots[fam], category, predictor=predictor)
        row[fam] = {m: ev.metrics.get(m) for m in METRICS}
        row[fam]["n_test"] = len(ev.scored)
        # Per defect type (against test/good): which field defects a method misses, for the why.
        row[fam]["per_defect_image_auroc"] = {k: e.get("image_auroc") for k, e in ev.per_kind.items() if k != "good"}
        if ev.warnings:
            row[fam]["warnings"] = ev.warnings
    return row


def load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def save_results(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")  # write then rename: an interrupted run never leaves half a file
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def mean(vals: list[float | None]) -> float | None:
    got = [v for v in vals if v is not None]
    # A mean over some categories only would compare unlike things: n/a unless every category has it.
    return sum(got) / len(got) if got and len(got) == len(vals) else None


def _rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(JSON key, label) of every row measured, in VARIANTS order, variants (``+thin``, ``+seedN``) after each."""
    out = []
    for k, v in VARIANTS.items():
        out += [(key, v[2] + key[len(k):]) for key in sorted(results) if key == k or key.startswith(k + "+")]
    return out


def report(results: dict[str, Any], categories: list[str]) -> str:
    """Method x category, image AUROC / pixel AUROC / AUPRO per family, then the mean per method."""
    head = (f"{'method':<27} {'category':<8} | {'demo: img':>9} {'pix':>6} {'AUPRO':>6} | "
            f"{'field: img':>10} {'pix':>6} {'AUPRO':>6} | {'fit s':>6}")
    lines = [head, "-" * len(head)]
    for key, label in _rows(results):
        rows = results.get(key, {})
        if not rows:
            continue
        for cat in categories + ["mean"]:
            if cat == "mean":
                if not all(c in rows for c in categories):
                    lines.append(f"{label:<27} {'mean':<8} | only {', '.join(c for c in categories if c in rows)}")
                    continue
                vals = {fam: {m: mean([rows[c][fam][m] for c in categories]) for m in METRICS} for fam in FAMILIES}
                fit = ""
            elif cat in rows:
                vals = {fam: rows[cat][fam] for fam in FAMILIES}
                fit = f"{rows[cat]['fit_seconds']:>6.1f}"
            else:
                continue
            d, f = vals["demo"], vals["field"]
            lines.append(f"{label:<27} {cat:<8} | {fmt(d['image_auroc']):>9} {fmt(d['pixel_auroc']):>6} "
                         f"{fmt(d['aupro']):>6} | {fmt(f['image_auroc']):>10} {fmt(f['pixel_auroc']):>6} "
                         f"{fmt(f['aupro']):>6} | {fit}")
    return "\n".join(lines)


def markdown(results: dict[str, Any], categories: list[str]) -> str:
    """The README's tables: means per method with the image-AUROC gap to PatchCore on each family, then
    image AUROC per category. A method measured on only some categories shows those, and no mean."""
    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    keys = _rows(results)
    means: dict[str, dict[str, dict[str, float | None]]] = {}
    for key, _ in keys:
        rows = results[key]
        if all(c in rows for c in categories):
            means[key] = {fam: {m: mean([rows[c][fam][m] for c in categories]) for m in METRICS} for fam in FAMILIES}
    ref = means.get("patchcore")
    out = ["| method | like the synthesis (demo): image AUROC | pixel AUROC | AUPRO | unlike it (field): image AUROC "
           "| pixel AUROC | AUPRO | field image AUROC - PatchCore's |", "| --- " * 8 + "|"]
    for key, label in keys:
        if key not in means:
            got = ", ".join(c for c in categories if c in results[key])
            out.append(f"| {label} | only {got}: see below | | | | | | |")
            continue
        d, f = means[key]["demo"], means[key]["field"]
        gap = "" if ref is None or f["image_auroc"] is None else f"{f['image_auroc'] - ref['field']['image_auroc']:+.3f}"
        out.append(f"| {label} | {cell(d['image_auroc'])} | {cell(d['pixel_auroc'])} | {cell(d['aupro'])} | "
                   f"{cell(f['image_auroc'])} | {cell(f['pixel_auroc'])} | {cell(f['aupro'])} | {gap} |")
    out += ["", "| method | " + " | ".join(f"{c}: demo / field" for c in categories) + " |",
            "| --- " * (len(categories) + 1) + "|"]
    for key, label in keys:
        rows = results[key]
        out.append(f"| {label} | " + " | ".join(
            f"{cell(rows[c]['demo']['image_auroc'])} / {cell(rows[c]['field']['image_auroc'])}" if c in rows else "not run"
            for c in categories) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from adx_synth import DEMO_CATEGORIES  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("defect_families_out"),
                    help="Folder for both datasets, models, bundles and the JSON [default: defect_families_out].")
    ap.add_argument("--methods", default=",".join(VARIANTS),
                    help=f"Comma-separated rows to measure, in this order [default: all: {','.join(VARIANTS)}].")
    ap.add_argument("--categories", default=",".join(DEMO_CATEGORIES),
                    help=f"Comma-separated demo categories [default: {','.join(DEMO_CATEGORIES)}].")
    ap.add_argument("--seed", type=int, default=0, help="Dataset seed, as adx demo [default: 0].")
    ap.add_argument("--threads", type=int, default=1, help="Torch threads [default: 1].")
    ap.add_argument("--synthesis", choices=SYNTHESES, default="default",
                    help="default: the library's synthesis; thin: scars mixed with curved strokes and specks "
                         "(rows saved as METHOD+thin) [default: default].")
    ap.add_argument("--model-seed", type=int, default=None,
                    help="The method's own seed (weights, shuffling, synthesis), for the run-to-run spread; rows "
                         "saved as METHOD+seedN [default: the method's default, 0].")
    ap.add_argument("--markdown", action="store_true", help="Also print the README's tables (markdown).")
    ap.add_argument("--report", action="store_true", help="Only print the table of what the JSON holds.")
    args = ap.parse_args(argv)

    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        print(f"error: unknown method row(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "defect_families.json"
    results = load_results(path)
    if results.get("_meta", {}).get("seed", args.seed) != args.seed:
        print(f"error: {path} holds results for seed {results['_meta']['seed']}, not {args.seed}", file=sys.stderr)
        return 2
    if not args.report:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
        roots = make_data(args.out, cats, args.seed)
        results["_meta"] = {"seed": args.seed, "n_train": 60, "n_test_good": 10, "n_test_per_defect": 5,
                            "image_size": 160, "torch_threads": args.threads}
        use_synthesis(args.synthesis)
        suffix = "" if args.synthesis == "default" else f"+{args.synthesis}"
        suffix += "" if args.model_seed is None else f"+seed{args.model_seed}"
        for key in keys:
            for cat in cats:
                if cat in results.get(key + suffix, {}):
                    continue  # resumable: measured already
                print(f"[{key}{suffix}/{cat}] training ...", flush=True)
                try:
                    row = run_pair(key, cat, roots, args.out, suffix, args.model_seed)
                except Exception as exc:  # noqa: BLE001 - one failing pair is reported, the others go on
                    print(f"[{key}/{cat}] FAILED: {type(exc).__name__}: {exc}", flush=True)
                    continue
                results.setdefault(key + suffix, {})[cat] = row
                save_results(path, results)
                print(f"[{key}/{cat}] fit {row['fit_seconds']} s; demo {row['demo']}; field {row['field']}",
                      flush=True)
    print(report(results, cats))
    if args.markdown:
        print()
        print(markdown(results, cats))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
