"""What does PatchCore's coreset pre-sample cost, against the exact greedy coreset, at tiled scale?

Features are real PatchCore patch features (the default config: efficientnet_lite0, stages 2+3,
D = 152, projected to 128 only while selecting): demo ``weave`` images of 1024 px, cut into 25 tiles
of 256 px (stride 192, as a tiled fit sees them), 32 x 32 patches per tile: 40 images give
1,024,000 patches. The last image is held out and scored.

1. Subset (the first ``--subset-images`` images, about 100k patches): the exact greedy (the
   selection before the pre-sample existed, ``coreset_presample=0``) and its blocked form, against
   the pre-sample (``coreset_presample=P``: the blocked greedy on a random ``P`` of them), the
   greedy on all patches at the pre-sample's bank size (what the pre-sample loses at an equal
   bank), and a chunked alternative (the union of greedy coresets of random chunks, bank as large
   as the exact one). For each: selection time (wall and CPU seconds), bank size, the coverage radius in the original feature space (max and mean over every
   subset patch of the distance to its nearest bank vector: what the bank fails to cover), and the
   held-out nearest-neighbour scores against the exact bank's (mean |s_exact - s| / mean s_exact,
   per patch and for the per-tile maximum, the image score's raw input).
2. Full set (all but the held-out image): the default pre-sample alone, time and peak memory of
   the selection (tracemalloc: numpy's allocations), coverage on a random sample of the patches;
   the exact greedy's time there is extrapolated from timed steps, not run.

Run (about 4 minutes on 2 cores):

    python benchmarks/coreset_scaling.py [--images 40] [--subset-images 4] [--presample 20000,50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adexport.coreset import blocked_greedy_coreset, random_projection, select_coreset
from adexport.methods.base import backbone_and_preprocess
from adexport.methods.patchcore import PatchCoreConfig, PatchCoreGraph, projection_matrix
from adx_synth import generate_demo_dataset


def tiled_features(n_images: int, image_size: int, tile: int, stride: int, cache: Path | None) -> np.ndarray:
    """``(n_images, tiles, patches, D)`` PatchCore features of tiles cut from demo images."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    cfg = PatchCoreConfig(image_size=tile)
    extractor, _ = backbone_and_preprocess(cfg)
    graph = PatchCoreGraph(extractor, (tile, tile), projection_matrix(list(extractor.info.channels), cfg.target_dim)).eval()
    mean = torch.tensor(extractor.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(extractor.info.std).view(1, 3, 1, 1)
    starts = list(range(0, image_size - tile + 1, stride))
    out = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        generate_demo_dataset(tmp, ["weave"], n_train=n_images, n_test_good=1, n_test_per_defect=1,
                              image_size=image_size, seed=0)
        for f in sorted((Path(tmp) / "weave" / "train" / "good").glob("*.png")):
            a = np.asarray(Image.open(f).convert("RGB"))
            tiles = np.stack([a[y:y + tile, x:x + tile] for y in starts for x in starts])
            x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255 - mean) / std
            feats = torch.cat([graph(x[i:i + 8]) for i in range(0, len(x), 8)])  # (tiles, patches, D)
            out.append(feats.numpy())
    features = np.stack(out)
    if cache is not None:
        np.save(cache, features)
    return features


def nn_distance(queries: np.ndarray, bank: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Exact Euclidean distance of each query to its nearest bank vector (float64 accumulation of
    the norms would not change a figure at 3 digits; float32 GEMM keeps this fast)."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    bsq = np.einsum("nd,nd->n", bank, bank)
    out = np.empty(len(queries), dtype=np.float32)
    for s in range(0, len(queries), chunk):
        q = np.ascontiguousarray(queries[s:s + chunk], dtype=np.float32)
        d2 = (q @ bank.T) * np.float32(-2.0)
        d2 += bsq
        out[s:s + len(q)] = np.einsum("nd,nd->n", q, q) + d2.min(axis=1)
    return np.sqrt(np.maximum(out, 0.0))


def chunked_coreset(features: np.ndarray, ratio: float, chunk: int, seed: int) -> np.ndarray:
    """The streaming alternative: a random partition into chunks, the exact greedy in each, the union."""
    perm = np.random.default_rng([seed, 2]).permutation(len(features))
    parts = []
    for s in range(0, len(perm), chunk):
        part = np.sort(perm[s:s + chunk])
        parts.append(part[blocked_greedy_coreset(features[part], max(1, round(ratio * len(part))), seed=seed)])
    return np.concatenate(parts)


def timed(fn):  # type: ignore[no-untyped-def]
    """``fn()`` and its wall-clock seconds; the CPU seconds (all threads) go to ``CPU_SECONDS`` as
    well, since on a shared machine they vary less than the wall clock."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS.append(time.process_time() - c)
    return out, time.perf_counter() - t


CPU_SECONDS: list[float] = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="demo images of --image-size px (default 40)")
    ap.add_argument("--image-size", type=int, default=1024, help="default 1024")
    ap.add_argument("--tile", type=int, default=256, help="tile side, px (default 256)")
    ap.add_argument("--stride", type=int, default=192, help="tile stride, px (default 192: 25 tiles of 1024 px)")
    ap.add_argument("--subset-images", type=int, default=4, help="images in the exact-vs-pre-sample subset (default 4)")
    ap.add_argument("--ratio", type=float, default=0.1, help="coreset_ratio (default 0.1, PatchCore's default)")
    ap.add_argument("--presample", default="20000,50000", help="pre-sample sizes tried on the subset (default 20000,50000)")
    ap.add_argument("--chunk", type=int, default=25_600, help="chunk size of the chunked alternative (default 25600)")
    ap.add_argument("--full-presample", type=int, default=PatchCoreConfig.coreset_presample,
                    help=f"pre-sample on the full set (default {PatchCoreConfig.coreset_presample}, the option's default)")
    ap.add_argument("--coverage-sample", type=int, default=50_000, help="patches the full-set coverage is measured on")
    ap.add_argument("--cache", type=Path, default=None, help="reuse/save the features here (.npy)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    seed = 0

    feats, t_feat = timed(lambda: tiled_features(args.images, args.image_size, args.tile, args.stride, args.cache))
    n_img, n_tiles, n_patches, dim = feats.shape
    print(f"features: {n_img} images x {n_tiles} tiles x {n_patches} patches, D = {dim} ({t_feat:.0f} s to build)")
    held = feats[-1].reshape(-1, dim)
    sub = feats[:args.subset_images].reshape(-1, dim)

    # ---- 1. subset: exact against the alternatives
    (exact, t_exact) = timed(lambda: select_coreset(sub, args.ratio, presample=0, seed=seed))
    candidates = [("exact greedy (presample=0, as before)", exact, t_exact, CPU_SECONDS[-1])]
    k = len(exact)
    idx, t = timed(lambda: blocked_greedy_coreset(sub, k, seed=seed))
    candidates.append(("the same, blocked form", idx, t, CPU_SECONDS[-1]))
    sizes = [int(v) for v in args.presample.split(",") if v]
    for p in sizes:
        idx, t = timed(lambda p=p: select_coreset(sub, args.ratio, presample=p, seed=seed))
        candidates.append((f"pre-sample {p:,}", idx, t, CPU_SECONDS[-1]))
        if p == max(sizes):  # the pre-sample's loss at an equal bank size
            same, t_same = timed(lambda k=len(idx): blocked_greedy_coreset(sub, k, seed=seed))
            candidates.append((f"greedy on all, {len(idx):,} (blocked)", same, t_same, CPU_SECONDS[-1]))
    idx, t = timed(lambda: chunked_coreset(sub, args.ratio, args.chunk, seed))
    candidates.append((f"chunked: greedy per {args.chunk:,}, union", idx, t, CPU_SECONDS[-1]))

    s_exact = nn_distance(held, sub[exact]).reshape(n_tiles, n_patches)
    print(f"\nsubset: {len(sub):,} patches ({args.subset_images} images), coreset_ratio {args.ratio}; held out: "
          f"{len(held):,} patches ({n_tiles} tiles); coverage = distance of every subset patch to its nearest bank vector")
    print("| selection | bank | time s (CPU s) | coverage max | coverage mean | held-out patch score diff | tile max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, idx, t, cpu in candidates:
        cov = nn_distance(sub, sub[idx])
        s = nn_distance(held, sub[idx]).reshape(n_tiles, n_patches)
        patch_diff = np.abs(s - s_exact).mean() / s_exact.mean()
        tile_diff = np.abs(s.max(1) - s_exact.max(1)).mean() / s_exact.max(1).mean()
        print(f"| {name} | {len(idx):,} | {t:.1f} ({cpu:.1f}) | {cov.max():.2f} | {cov.mean():.2f} | {patch_diff:.1%} | {tile_diff:.1%} |",
              flush=True)

    # ---- 2. full set: the default pre-sample alone
    full = feats[:-1].reshape(-1, dim)
    del feats
    tracemalloc.start()
    idx, t_full = timed(lambda: select_coreset(full, args.ratio, presample=args.full_presample, seed=seed))
    cpu_full = CPU_SECONDS[-1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sample = np.random.default_rng(1).choice(len(full), size=min(args.coverage_sample, len(full)), replace=False)
    cov = nn_distance(full[sample], full[idx])
    s = nn_distance(held, full[idx])
    # the exact greedy there: time 20 of its steps (each reads every projected patch) and extrapolate
    z = random_projection(full, 128, seed)
    v, buf = z[0] * np.float32(-2.0), np.empty(len(z), dtype=np.float32)
    t0 = time.perf_counter()
    for _ in range(20):
        np.dot(z, v, out=buf)
    step = (time.perf_counter() - t0) / 20
    k_exact = round(args.ratio * len(full))
    print(f"\nfull set: {len(full):,} patches ({n_img - 1} images, {len(full) * dim * 4 / 2**20:.0f} MiB of features)")
    print("| selection | bank | time s (CPU s) | peak extra memory | coverage max | coverage mean | held-out mean score |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    default = " (default)" if args.full_presample == PatchCoreConfig.coreset_presample else ""
    print(f"| pre-sample {args.full_presample:,}{default} | {len(idx):,} | {t_full:.1f} ({cpu_full:.1f}) | {peak / 2**20:.0f} MiB | "
          f"{cov.max():.2f} | {cov.mean():.2f} | {s.mean():.2f} |")
    print(f"| exact greedy (presample=0) | {k_exact:,} | about {step * k_exact:,.0f} (extrapolated: {step * 1e3:.1f} ms "
          f"x {k_exact:,} steps) | {len(full) * 128 * 4 / 2**20:.0f} MiB projection + | not run | not run | not run |")
    print(f"(coverage on a random {len(sample):,} of the {len(full):,} patches; subset exact held-out mean score: "
          f"{s_exact.mean():.2f})")


if __name__ == "__main__":
    main()
