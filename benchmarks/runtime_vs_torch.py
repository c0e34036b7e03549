"""Torch-free runtime against the same model in PyTorch eager, side by side in one run.

For each method: fit it briefly on generated images (weights do not change the arithmetic, so one
epoch is enough for timing), export the bundle, then time, on the same preprocessed batch:

- PyTorch eager: the method's ``reference()`` (graph + torch post-processing, ``torch.no_grad``);
- the runtime: ``Predictor.predict_tensor`` (ONNX Runtime graph + scorer + numpy post-processing).

Both use every core of this machine. Decoding is left out of both (it is the same Pillow code).

    python benchmarks/runtime_vs_torch.py --method rd4ad --set backbone=resnet18 --set weights=random
    python benchmarks/runtime_vs_torch.py --method riad
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adexport.export import export_bundle  # noqa: E402
from adexport.methods import get_method  # noqa: E402
from adexport.methods.options import parse_assignments  # noqa: E402
from adexport.fit_pipeline import train  # noqa: E402
from adx_runtime.predictor import Predictor  # noqa: E402
from adx_runtime.preprocess import load_image, stack  # noqa: E402
from adx_synth import generate_demo_dataset  # noqa: E402


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True)
    ap.add_argument("--set", dest="assignments", action="append", default=[], help="KEY=VALUE method option")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--category", default="weave")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    entry = get_method(args.method)
    options = parse_assignments(entry.config_cls, args.assignments)
    if entry.trained:
        options.setdefault("epochs", 1)
    with tempfile.TemporaryDirectory(prefix="adx-rvt-") as tmp:
        root = Path(tmp)
        generate_demo_dataset(root / "data", [args.category], n_train=max(10, args.batch // 2), n_test_good=2,
                              n_test_per_defect=2, image_size=160)
        fitted = train(root / "data", args.category, args.method, options=options, holdout=0.2)
        export_bundle(fitted, root / "bundle")
        predictor = Predictor.load(root / "bundle")
        files = sorted((root / "data" / args.category / "test").glob("*/*.png"))
        x = stack([load_image(files[i % len(files)], fitted.preprocess) for i in range(args.batch)])
        xt = torch.from_numpy(x)
        graph = fitted.graph().eval()

        torch_times = _time(lambda: fitted.reference(xt), args.runs, args.warmup)
        runtime_times = _time(lambda: predictor.predict_tensor(x), args.runs, args.warmup)
        a, b = fitted.reference(xt), predictor.predict_tensor(x)
        err = float(np.abs(a.image_scores.numpy() - b.image_scores).max() / np.abs(a.image_scores.numpy()).max())

    n_params = sum(p.numel() for p in graph.parameters())
    t_med, r_med = statistics.median(torch_times), statistics.median(runtime_times)
    print(f"{args.method}: input {tuple(x.shape)}, {n_params / 1e6:.2f} M parameters in the graph, "
          f"{os.cpu_count()} cores, {args.runs} timed batches after {args.warmup} warm-up")
    print(f"  config: {', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'}")
    print(f"  {'':<28} {'median ms/batch':>16} {'img/s':>8}")
    print(f"  {'PyTorch eager (reference)':<28} {1000 * t_med:>16.1f} {args.batch / t_med:>8.1f}")
    print(f"  {'adexport runtime (ONNX RT)':<28} {1000 * r_med:>16.1f} {args.batch / r_med:>8.1f}")
    print(f"  runtime / PyTorch throughput: {t_med / r_med:.2f}x; image-score max rel diff {err:.1e}")


if __name__ == "__main__":
    main()
