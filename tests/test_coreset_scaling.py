"""PatchCore's coreset at scale: the seeded pre-sample (``coreset_presample``) before the greedy.

Below the cap the selection is today's exact greedy, index for index (the README's demo tables
depend on it); above it the greedy chooses among a seeded random pre-sample of the whole set, and
on clustered data its coverage radius stays within a stated factor of the exact coreset's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import CATEGORY, TINY

from adexport.coreset import blocked_greedy_coreset, greedy_coreset, presample_indices, select_coreset
from adexport.methods.patchcore import PatchCoreConfig
from adx_runtime.errors import ConfigError


def clustered(n: int = 20_000, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around 40 centres of very unequal weight (a few common textures, many rare
    ones, as patch features are); returns the points and their cluster ids."""
    r = np.random.default_rng(seed)
    centres = r.standard_normal((40, dim)) * 6
    weights = np.r_[np.full(5, 0.18), np.full(35, 0.1 / 35)]
    labels = r.choice(40, size=n, p=weights / weights.sum())
    spread = r.uniform(0.5, 1.5, size=40)[labels, None]
    return (centres[labels] + r.standard_normal((n, dim)) * spread).astype(np.float32), labels


def coverage_radius(x: np.ndarray, bank_idx: np.ndarray) -> float:
    """max over all points of the distance to the nearest bank point, in the original space."""
    bank = x[bank_idx].astype(np.float64)
    xs = x.astype(np.float64)
    d2 = (xs**2).sum(1)[:, None] - 2 * xs @ bank.T + (bank**2).sum(1)[None, :]
    return float(np.sqrt(max(d2.min(axis=1).max(), 0.0)))


def test_below_the_cap_the_selection_is_the_exact_greedy_index_for_index() -> None:
    x, _ = clustered(3000, 16)
    exact = greedy_coreset(x, 300, projection_dim=8, seed=4)
    for cap in (0, 3000, 3001, 200_000):  # off, exactly N (not above it), above N
        got = select_coreset(x, 0.1, presample=cap, projection_dim=8, seed=4)
        assert np.array_equal(got, exact), cap
    assert np.array_equal(select_coreset(x, 1.0, presample=0), np.arange(3000))  # ratio 1 keeps everything


@pytest.mark.parametrize("block", [1, 16, 256, 10_000])
def test_blocked_greedy_selects_what_the_greedy_selects(block: int) -> None:
    """The lazy, matrix-product form of the greedy is the same selection, whatever the block size
    (1: a refresh at every step; 10,000: the block holds every point). Points drawn from a
    continuous distribution, so no two distances tie within float32 rounding."""
    x = np.random.default_rng(3).standard_normal((3000, 12)).astype(np.float32)
    want = greedy_coreset(x, 400, projection_dim=None, seed=5)
    got = blocked_greedy_coreset(x, 400, projection_dim=None, seed=5, block=block)
    assert np.array_equal(got, want)
    assert np.array_equal(blocked_greedy_coreset(x, 1, seed=5), want[:1])
    assert np.array_equal(blocked_greedy_coreset(x[:2], 2, seed=5), greedy_coreset(x[:2], 2, seed=5))
    with pytest.raises(ConfigError, match="coreset size"):
        blocked_greedy_coreset(x, 3001)


def test_large_sets_use_the_blocked_form_small_ones_the_step_by_step_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import adexport.coreset as coreset

    calls: list[int] = []
    real = coreset.blocked_greedy_coreset
    monkeypatch.setattr(coreset, "blocked_greedy_coreset", lambda f, k, **kw: calls.append(len(f)) or real(f, k, **kw))
    x = np.random.default_rng(1).standard_normal((3000, 12)).astype(np.float32)
    want = greedy_coreset(x, 300, seed=0)
    assert np.array_equal(coreset.select_coreset(x, 0.1, presample=0), want) and calls == []
    monkeypatch.setattr(coreset, "EXACT_FORM_MAX_POINTS", 2999)  # one point over the limit
    assert np.array_equal(coreset.select_coreset(x, 0.1, presample=0), want) and calls == [3000]
    coreset.select_coreset(x, 0.1, presample=1000)
    assert calls == [3000, 1000]  # a pre-sample always takes the blocked form


def test_presample_is_seeded_valid_unique_and_drawn_from_the_whole_set() -> None:
    x, _ = clustered(10_000, 16)
    a = select_coreset(x, 0.1, presample=2000, projection_dim=8, seed=7)
    assert np.array_equal(a, select_coreset(x, 0.1, presample=2000, projection_dim=8, seed=7))
    assert not np.array_equal(a, select_coreset(x, 0.1, presample=2000, projection_dim=8, seed=8))
    assert len(a) == 200 and a.dtype == np.int64  # ratio of the pre-sample: the bank stops growing with N
    assert len(np.unique(a)) == 200 and a.min() >= 0 and a.max() < 10_000
    pool = presample_indices(10_000, 2000, 7)
    assert len(pool) == 2000 and np.all(np.diff(pool) > 0) and set(a.tolist()) <= set(pool.tolist())
    assert pool.max() > 9000 and pool.min() < 1000  # spread over the whole set, not its first rows
    # the selection is the greedy on the pre-sample's rows, mapped back to indices of the whole set
    assert np.array_equal(a, pool[greedy_coreset(x[pool], 200, projection_dim=8, seed=7)])
    assert np.array_equal(a, pool[blocked_greedy_coreset(x[pool], 200, projection_dim=8, seed=7)])
    assert np.array_equal(select_coreset(x, 1.0, presample=2000, seed=7), pool)  # ratio 1: the pre-sample


def test_presampled_coverage_radius_is_within_1_5x_of_the_exact_coreset() -> None:
    """20k x 32 clustered points, 5 % coreset. The exact greedy picks 1,000 of all 20k; with a
    pre-sample of 10k the greedy picks 500 of them. Measured: radius 9.10 exact, 12.00 pre-sampled
    (1.32x; the exact greedy's own 500 on all points: 1.09x); a random bank of the same 500 points
    reaches 4.8x and misses 8-9 of the 40 clusters, which the greedy never does. The factor
    asserted, 1.5x, is one a worse selection fails."""
    x, labels = clustered()
    exact = select_coreset(x, 0.05, presample=0, seed=0)
    approx = select_coreset(x, 0.05, presample=10_000, seed=0)
    assert len(exact) == 1000 and len(approx) == 500
    r_exact, r_approx = coverage_radius(x, exact), coverage_radius(x, approx)
    assert r_approx <= 1.5 * r_exact, (r_exact, r_approx)
    assert set(labels[approx].tolist()) == set(labels.tolist())  # every cluster, however rare, has a bank point
    random_bank = np.random.default_rng(0).choice(len(x), 500, replace=False)
    assert coverage_radius(x, random_bank) > 1.5 * r_exact  # the bound is one a worse selection fails


def test_presample_option_is_validated() -> None:
    assert PatchCoreConfig().coreset_presample == 200_000
    assert PatchCoreConfig(coreset_presample=0).coreset_presample == 0
    with pytest.raises(ConfigError, match="coreset_presample.*>= 0"):
        PatchCoreConfig(coreset_presample=-1)
    with pytest.raises(ConfigError, match="coreset_presample"):
        PatchCoreConfig(coreset_presample=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pre-sample size"):
        presample_indices(10, -1, 0)
    with pytest.raises(ConfigError, match="coreset ratio"):
        select_coreset(np.zeros((10, 2), np.float32), 0.0)


def test_fit_selects_the_bank_from_the_presample(dataset: Path) -> None:
    """12 fitted images of 8 x 8 patches = 768 patches, pre-sample 300: a bank of 30, and the fit
    report says from how many patches it was chosen."""
    from adexport.fit_pipeline import train

    fitted = train(dataset, CATEGORY, "patchcore", options={**TINY, "coreset_presample": 300}, holdout=0.25)
    sizes = fitted.report.sizes
    assert sizes["patches"] == 768 and sizes["coreset_candidates"] == 300 and sizes["memory_bank"] == 30
    assert fitted.memory_bank.shape[0] == 30
