"""Resized against tiled scoring on high-resolution images with few-pixel defects (a benchmark, not a
unit test): image AUROC, pixel AUROC, AUPRO, fit time, megapixels per second, per method, side by side.

Data: ``adx demo-data DATA --categories weave --image-size 1024 --test-defects field --defect-scale
small --n-train 50 --n-test-good 10 --n-test-defect 4`` (50 normal training images: 40 fitted, 10
held out for calibration; 1-2 px scratches, hairline cracks, 1-3 px pits, 6-14 px stains, small burns).

Variants per method:

- ``resized``: ``adx train`` at the method's defaults (the whole image resized to its input size);
- ``tiled``: ``adx train --tile SIZE --tile-overlap 32`` (SIZE: the method's own input size);
- ``hand-cut`` (``--hand-cut``, PatchCore only): the images cut by hand into non-overlapping tiles of
  the input size, written as a dataset of their own, trained and scored untiled tile by tile; an
  image's score is its highest tile score and its map the tiles' maps laid side by side (what a
  user does without tiling support). It is cut from the same normal images the tiled model was fitted
  on (its calibration hold-out then comes out of their tiles).

Every variant is evaluated at the images' own resolution (1024 x 1024 maps and masks; a resized
model's map is brought back with the runtime's ``map_to_original``), so a defect a resize removes
counts against the model that removed it. Speed: ``adx bench`` at batch 1 on test images
(megapixels/s of the images as sent, tiles/s). ``--memory`` scores one 4000 x 3000 image (a test
image enlarged) with the tiled PatchCore bundle in a fresh process and reports peak RSS, next to the
same process scoring a 1024 x 1024 image.

    python benchmarks/tiling.py DATA --category weave --out /tmp/tiling-bench [--methods patchcore,padim]
        [--hand-cut] [--memory] [--set METHOD:KEY=VALUE ...]

Further tiled variants: ``--variants tiled,pertile --variant-arg
pertile:padim:--set=tile_gaussians=per-tile`` (PaDiM's Gaussians per tile position against the shared
default).

Results go to OUT/results.json as they finish; a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ADX = [sys.executable, "-m", "adx_cli"]


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def default_size(method: str) -> int:
    from adexport.methods import METHODS  # noqa: PLC0415

    entry = METHODS[method]
    return int(entry.config_cls().image_size)


def evaluate_full(bundle: Path, data: Path, category: str) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and AUPRO with maps and masks at the images' own resolution."""
    from adx_runtime import metrics  # noqa: PLC0415
    from adx_runtime.datasets import load_split  # noqa: PLC0415
    from adx_runtime.images import decode_mask  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415
    from adx_runtime.preprocess import map_to_original  # noqa: PLC0415

    split = load_split(data, category, need_test=True)
    pred = Predictor.load(bundle)
    labels, scores, maps, masks = [], [], [], []
    for s, r in zip(split.test, pred.predict_files([x.path for x in split.test], batch_size=4, keep_maps=True)):
        if not r.ok:
            raise SystemExit(f"{r.path}: {r.error}")
        labels.append(s.label)
        scores.append(r.image_score)
        if r.anomaly_map is not None:
            maps.append(map_to_original(r.anomaly_map, r.size, pred.preprocess))
            masks.append(decode_mask(s.mask_path) if s.mask_path else np.zeros(maps[-1].shape, bool))
    out = {"image_auroc": metrics.image_auroc(np.array(labels), np.array(scores))}
    if maps:
        m, k = np.stack(maps), np.stack(masks)
        out["pixel_auroc"] = metrics.pixel_auroc(k, m)
        out["aupro"] = metrics.aupro(k, m)
    return out


def bench(bundle: Path, images: list[Path]) -> dict[str, Any]:
    with_json = Path(bundle).parent / f"{Path(bundle).name}-bench.json"
    run(ADX + ["bench", str(bundle), *[a for p in images for a in ("--images", str(p))], "--batch-sizes", "1",
               "--runs", "6", "--warmup", "2", "--json", str(with_json), "-q"])
    r = json.loads(with_json.read_text())["results"][0]
    return {"img_per_s": r["throughput_images_per_s"], "megapixels_per_s": r["megapixels_per_s"],
            "tiles_per_s": r.get("tiles_per_s"), "tiles_per_image": r.get("tiles_per_image"),
            "stage_ms_per_image": r["stage_ms_per_image"]}


def fit_seconds(summary: str) -> float:
    m = re.search(r"fit time ([0-9.]+) s", summary)
    return float(m.group(1)) if m else float("nan")


def train_export(data: Path, category: str, method: str, out: Path, extra: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = run(ADX + ["train", str(data), "-c", category, "--method", method, "-o", str(out / "model"), "-q",
                         "--overwrite"] + extra)
    wall = time.perf_counter() - t0
    run(ADX + ["export", str(out / "model"), "-o", str(out / "bundle"), "-q", "--overwrite"])
    sizes = re.search(r"sizes: (.*)", summary)
    return {"fit_s": fit_seconds(summary), "train_wall_s": wall, "sizes": sizes.group(1) if sizes else "",
            "fit_line": next((ln for ln in summary.splitlines() if ln.startswith("fit time")), "")}


def hand_cut_dataset(data: Path, category: str, tile: int, out: Path, fit_images: set[str]) -> Path:
    """The category cut into non-overlapping ``tile`` tiles (images and masks), MVTec layout; only the
    training images the tiled model was fitted on (``fit_images``, names under train/good), so both
    see the same normal pictures (their tiles are then split again into fit and calibration parts)."""
    from PIL import Image  # noqa: PLC0415

    root = out / "data"
    if (root / category).is_dir():
        return root
    src = data / category
    for img in sorted(src.rglob("*.png")):
        rel = img.relative_to(src)
        if rel.parts[:2] == ("train", "good") and rel.name not in fit_images:
            continue
        with Image.open(img) as im:
            w, h = im.size
            for y in range(0, h - tile + 1, tile):
                for x in range(0, w - tile + 1, tile):
                    if rel.parts[0] == "ground_truth":
                        name = rel.name.replace("_mask.png", f"_y{y}_x{x}_mask.png")
                    else:
                        name = f"{rel.stem}_y{y}_x{x}.png"
                    dest = root / category / rel.parent / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    im.crop((x, y, x + tile, y + tile)).save(dest)
    return root


def evaluate_hand_cut(bundle: Path, data: Path, tiles_root: Path, category: str, tile: int) -> dict[str, Any]:
    """Each original test image: the max of its tiles' scores and their maps laid side by side."""
    from adx_runtime import metrics  # noqa: PLC0415
    from adx_runtime.datasets import load_split  # noqa: PLC0415
    from adx_runtime.images import decode_mask  # noqa: PLC0415
    from adx_runtime.predictor import Predictor  # noqa: PLC0415
    from adx_runtime.preprocess import map_to_original  # noqa: PLC0415

    split = load_split(data, category, need_test=True)
    pred = Predictor.load(bundle)
    labels, scores, maps, masks = [], [], [], []
    for s in split.test:
        parts = sorted((tiles_root / category / "test" / s.defect).glob(f"{s.path.stem}_y*_x*.png"))
        full = None
        best = -np.inf
        for part, r in zip(parts, pred.predict_files(parts, batch_size=16, keep_maps=True)):
            y, x = map(int, re.search(r"_y(\d+)_x(\d+)", part.name).groups())
            m = map_to_original(r.anomaly_map, r.size, pred.preprocess)
            if full is None:
                mask = decode_mask(s.mask_path) if s.mask_path else None
                shape = mask.shape if mask is not None else (1024, 1024)
                full = np.zeros(shape, np.float32)
            full[y:y + tile, x:x + tile] = m
            best = max(best, r.image_score)
        labels.append(s.label)
        scores.append(best)
        maps.append(full)
        masks.append(decode_mask(s.mask_path) if s.mask_path else np.zeros(full.shape, bool))
    m, k = np.stack(maps), np.stack(masks)
    return {"image_auroc": metrics.image_auroc(np.array(labels), np.array(scores)),
            "pixel_auroc": metrics.pixel_auroc(k, m), "aupro": metrics.aupro(k, m)}


# Peak RSS from /proc/self/status VmHWM: it belongs to the address space exec created, whereas
# getrusage's ru_maxrss survives exec and would report the (large) parent's peak.
MEMORY_SCRIPT = r"""
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from adx_runtime.predictor import Predictor
pred = Predictor.load(sys.argv[1])
out = {"rss_after_load_mb": hwm()}
for path in sys.argv[2:]:
    t, before = time.perf_counter(), pred.tiles_scored
    r = next(pred.predict_files([path], batch_size=1, keep_maps=True))
    assert r.ok, r.error
    out[path] = {"seconds": time.perf_counter() - t, "size": r.size,
                 "peak_rss_mb": hwm(),
                 "tiles": pred.tiles_scored - before}  # this image's (the counter counts them all)
print(json.dumps(out))
"""


def memory(bundle: Path, small: Path, out: Path) -> dict[str, Any]:
    from PIL import Image  # noqa: PLC0415

    big = out / "12mp.png"
    if not big.exists():
        with Image.open(small) as im:
            im.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(big)
    res = json.loads(run([sys.executable, "-c", MEMORY_SCRIPT, str(bundle), str(small), str(big)]).strip().splitlines()[-1])
    return {"rss_after_load_mb": res["rss_after_load_mb"], "1mp": res[str(small)], "12mp": res[str(big)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--category", default="weave")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default="patchcore")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--hand-cut", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--variants", default="resized,tiled")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="METHOD:KEY=VALUE, an option for one method's runs (both variants), e.g. rd4ad:epochs=20")
    ap.add_argument("--resized-arg", dest="resized_args", action="append", default=[],
                    help="METHOD:ARG, a train argument for one method's resized run only, e.g. rd4ad:--set=epochs=50")
    ap.add_argument("--tile-arg", dest="tile_args", action="append", default=[],
                    help="METHOD:ARG, a train argument for one method's tiled run only, e.g. rd4ad:--working-size=512")
    ap.add_argument("--variant-arg", dest="variant_args", action="append", default=[],
                    help="VARIANT:METHOD:ARG, a further tiled variant named in --variants (the tiled run's arguments "
                         "plus these), e.g. pertile512:padim:--set=tile_gaussians=per-tile")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}

    def save() -> None:  # merged with what is on disk: another run may be adding other methods to the file
        on_disk = json.loads(results_file.read_text()) if results_file.exists() else {}
        on_disk.update(results)
        results.update(on_disk)
        results_file.write_text(json.dumps(on_disk, indent=1))

    from adx_runtime.datasets import load_split  # noqa: PLC0415

    split = load_split(args.data, args.category, need_test=True)
    bench_images = [s.path for s in split.test[:: max(1, len(split.test) // 6)]][:6]
    for method in args.methods.split(","):
        sets = [a for s in args.sets if s.startswith(f"{method}:") for a in ("--set", s.split(":", 1)[1])]
        size = default_size(method)
        tile_args = [s.split(":", 1)[1] for s in args.tile_args if s.startswith(f"{method}:")]
        resized_args = [s.split(":", 1)[1] for s in args.resized_args if s.startswith(f"{method}:")]
        variants = {"resized": resized_args, "tiled": ["--tile", str(size), "--tile-overlap", str(args.overlap)] + tile_args}
        for item in args.variant_args:
            name, for_method, arg = item.split(":", 2)
            if for_method == method:
                variants.setdefault(name, list(variants["tiled"])).append(arg)
        for variant in args.variants.split(","):
            key = f"{method}/{variant}"
            if key in results:
                continue
            where = args.out / method / variant
            print(f"[{time.strftime('%H:%M:%S')}] {key}: training", flush=True)
            entry = train_export(args.data, args.category, method, where, variants[variant] + sets)
            entry["options"] = sets + variants[variant]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {entry['fit_line']}; evaluating", flush=True)
            entry.update(evaluate_full(where / "bundle", args.data, args.category))
            entry.update(bench(where / "bundle", bench_images))
            results[key] = entry
            save()
        if args.hand_cut and method == "patchcore" and f"{method}/hand-cut" not in results:
            where = args.out / method / "hand-cut"
            meta = json.loads((args.out / method / "tiled" / "model" / "model.json").read_text())
            held = {Path(p).name for p in meta["dataset"]["holdout_files"]}
            fit_images = {p.name for p in (args.data / args.category / "train" / "good").glob("*.png")} - held
            tiles_root = hand_cut_dataset(args.data, args.category, size, where, fit_images)
            print(f"[{time.strftime('%H:%M:%S')}] {method}/hand-cut: training on {size}-px tiles", flush=True)
            entry = train_export(tiles_root, args.category, method, where, sets)
            entry.update(evaluate_hand_cut(where / "bundle", args.data, tiles_root, args.category, size))
            results[f"{method}/hand-cut"] = entry
            save()
    if args.memory and "memory" not in results and "patchcore/tiled" in results:
        results["memory"] = memory(args.out / "patchcore" / "tiled" / "bundle", split.test[0].path, args.out)
        save()

    print(f"\n{'method / variant':<26} {'img AUROC':>9} {'pix AUROC':>9} {'AUPRO':>7} {'fit s':>8} {'MP/s':>6} "
          f"{'tiles/s':>8} {'img/s':>6}")
    for key, r in results.items():
        if key == "memory":
            continue
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{key:<26} {fmt(r.get('image_auroc'), '.3f'):>9} {fmt(r.get('pixel_auroc'), '.3f'):>9} "
              f"{fmt(r.get('aupro'), '.3f'):>7} {fmt(r.get('fit_s'), '.1f'):>8} {fmt(r.get('megapixels_per_s'), '.2f'):>6} "
              f"{fmt(r.get('tiles_per_s'), '.1f'):>8} {fmt(r.get('img_per_s'), '.2f'):>6}")
    if "memory" in results:
        m = results["memory"]
        print(f"\ntiled PatchCore, one image in a fresh process: after load {m['rss_after_load_mb']:.0f} MB; "
              f"1024 x 1024: {m['1mp']['seconds']:.2f} s, peak RSS {m['1mp']['peak_rss_mb']:.0f} MB; "
              f"4000 x 3000: {m['12mp']['seconds']:.2f} s, {m['12mp']['tiles']} tiles, "
              f"peak RSS {m['12mp']['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
