"""How well does ``adx select``'s synthetic-defect proxy rank methods, against real defects?

Where a category has no defective images, ``adx select`` chooses on field defects
(``adx_synth.field_defects``) painted on held-out normal images. This script takes the bundles of an
``adx select`` run (``DIR/bundles/*``, fitted on ``train/good``, which is what a run without defects
fits too when ``test/good`` holds the normal images) and scores each one twice: on the category's
real test set, and on the selection set ``adx select`` would build from its normal images alone.
It prints both rankings and Spearman's rank correlation between them.

    python benchmarks/select_proxy.py DATASET CATEGORY RUN_DIR [--metric image_auroc] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from scipy.stats import spearmanr

from adexport.select.rank import METRICS
from adexport.select.split import MODE_SYNTHETIC, materialise, plan_validation
from adx_runtime.evaluate import evaluate


def normal_only_copy(dataset: Path, category: str, dst: Path) -> Path:
    """``dst/category`` with train/good and test/good only (links), as a user without defects has."""
    src = dataset / category
    for sub in ("train/good", "test/good"):
        (dst / category / sub).mkdir(parents=True)
        for p in sorted((src / sub).iterdir()):
            (dst / category / sub / p.name).symlink_to(p.resolve())
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("category")
    ap.add_argument("run", type=Path, help="an adx select output folder (its bundles/ are scored)")
    ap.add_argument("--metric", default="image_auroc", choices=sorted(METRICS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    key = METRICS[args.metric]
    tmp = Path(tempfile.mkdtemp(prefix="adx-proxy-"))
    try:
        data = normal_only_copy(args.dataset, args.category, tmp / "data")
        plan = plan_validation(data, args.category, args.seed)
        assert plan.mode == MODE_SYNTHETIC
        work = materialise(plan, tmp / "work", args.seed)
        rows = []
        for bundle in sorted(p for p in (args.run / "bundles").iterdir() if (p / "manifest.json").is_file()):
            real = evaluate(bundle, args.dataset, args.category, bank_device="cpu").metrics[key]
            proxy = evaluate(bundle, work.select_root, args.category, bank_device="cpu").metrics[key]
            rows.append((bundle.name, real, proxy))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'method':<10} {'real test set':>14} {'synthetic proxy':>16}   ({args.metric}; proxy: "
          f"{plan.summary()['select']})")
    for name, real, proxy in sorted(rows, key=lambda r: -(r[1] or 0)):
        print(f"{name:<10} {real:>14.3f} {proxy:>16.3f}")
    rho = spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic
    print(f"Spearman rank correlation over {len(rows)} methods: {rho:.2f}")


if __name__ == "__main__":
    main()
