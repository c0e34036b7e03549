"""Which form of PaDiM's per-position Mahalanobis distance is fastest in numpy on this machine?
(It decided the runtime's form: see adx_runtime/scorers/gaussian.py.)

    d^2(x_p) = (x_p - mu_p)^T S_p^-1 (x_p - mu_p)        for every position p, every image

Candidates (all exact in float32 up to rounding): an einsum with the inverse covariance; a
batched matmul with the inverse; a batched matmul with the Cholesky factor L of S^-1 = L L^T
(then d^2 = ||L^T (x - mu)||^2, a sum of squares, never negative); and the Cholesky factor
stored as float16 (half the bundle) converted to float32 at load; and the runtime's form, the
Cholesky factor as column blocks without their zero rows (62.5 % of the bytes at d = 100), over
one thread and over the threads the runtime uses (``adx_runtime.scorers.gaussian``). Run:

    python benchmarks/padim_distance.py [--positions 4096] [--dim 100] [--batch 1,8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from adx_runtime.scorers.gaussian import TriangularBlocks, scorer_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=64 * 64)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    P, d = args.positions, args.dim
    a = rng.standard_normal((P, d, 2 * d)).astype(np.float32)
    cov = a @ a.transpose(0, 2, 1) / (2 * d) + 0.01 * np.eye(d, dtype=np.float32)
    inv = np.linalg.inv(cov.astype(np.float64))
    chol = np.linalg.cholesky(inv)  # S^-1 = L L^T
    inv32, chol32 = inv.astype(np.float32), chol.astype(np.float32)
    chol16 = chol32.astype(np.float16)
    mu = rng.standard_normal((P, d)).astype(np.float32)

    chol_from16 = chol16.astype(np.float32)  # what loading a float16 store gives
    forms = {
        "einsum, inverse": lambda x: np.einsum("pbd,pde,pbe->bp", x, inv32, x, optimize=True),
        "matmul, inverse": lambda x: np.einsum("pbd,pbd->bp", x @ inv32, x),
        "matmul, Cholesky": lambda x: _chol(x, chol32),
        "matmul, Cholesky fp16 store": lambda x: _chol(x, chol_from16),
    }
    rows, cols = np.tril_indices(d)
    packed = chol32[:, rows, cols]
    for threads in sorted({1, scorer_threads()}):
        blocks = TriangularBlocks(packed, d, threads=threads)
        forms[f"column blocks, {threads} thread{'s' if threads > 1 else ''}"] = lambda x, b=blocks: b.sum_of_squares(x).T
    print(f"positions {P}, dim {d}; store MB: inverse {inv32.nbytes / 1e6:.0f}, Cholesky fp32 {chol32.nbytes / 1e6:.0f} "
          f"(packed triangle {chol32.nbytes / 2e6:.0f}), fp16 {chol16.nbytes / 1e6:.0f}")
    for b in [int(v) for v in args.batch.split(",")]:
        emb = rng.standard_normal((b, P, d)).astype(np.float32)
        x = np.ascontiguousarray((emb - mu).transpose(1, 0, 2))  # (P, B, d)
        ref = np.einsum("pbd,pde,pbe->bp", x.astype(np.float64), inv, x.astype(np.float64))
        for name, fn in forms.items():
            fn(x)
            t = time.perf_counter()
            for _ in range(args.repeats):
                out = fn(x)
            ms = (time.perf_counter() - t) / args.repeats / b * 1000
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            print(f"  batch {b:>2}  {name:<30} {ms:8.1f} ms/image   max rel err {err:.1e}")


def _chol(x: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``||L^T (x - mu)||^2`` for ``x (P, B, d)`` and ``L (P, d, d)``: the rows of ``x @ L``."""
    y = x @ chol
    return np.einsum("pbd,pbd->bp", y, y)


if __name__ == "__main__":
    main()
