"""The pass verdict: its confidence sequences, and Monte Carlo checks of the beta guarantee.

Every Monte-Carlo check runs many canaries as the rows of one `PromotionTest` (vectorised),
looks after every pass, and counts canaries that *ever* pass. A canary on the null's boundary
(worse than the tolerance by exactly the tolerance, in ratio and in difference) must pass with
probability at most beta; the same harness must flag variants that are deliberately wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from streams.promotion import (
    PromotionSettings,
    PromotionTest,
    SignalPass,
    VerdictSnapshot,
    eta_seconds,
)

Rng = np.random.Generator


def simulate(
    test: PromotionTest,
    rng: Rng,
    *,
    p_stable: float,
    p_canary: float,
    rate: float,
    shares: tuple[float, ...],
    passes: int,
    on_pass: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Bernoulli requests, Poisson per pass; the canary share steps through `shares`.
    Returns the pass index at which each row first passed (inf: never)."""
    rows = test.capacity
    first = np.full(rows, np.inf)
    for k in range(passes):
        share = shares[min(len(shares) - 1, k * len(shares) // passes)]
        n = rng.poisson(rate, rows)
        n_c = rng.binomial(n, share)
        n_s = n - n_c
        x_c = rng.binomial(n_c, p_canary)
        x_s = rng.binomial(n_s, p_stable)
        test.update(n_c, n_s, x_c[None], x_s[None])
        newly = test.passed[0] & ~np.isfinite(first)
        first[newly] = k
        if on_pass is not None:
            on_pass(k)
    return first


def wilson_low(hits: int, n: int, z: float = 1.96) -> float:
    p = hits / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


BETA = 0.1  # raised so that a violation would show in a few thousand runs


def boundary_rate(p_stable: float, tol_ratio: float, tol_diff: float) -> float:
    """The least canary rate that is worse than the tolerance in both senses."""
    return max(p_stable * tol_ratio, p_stable + tol_diff)


@pytest.mark.parametrize(
    ("p_stable", "tol_ratio", "tol_diff", "rate"),
    [
        (0.001, 1.5, 0.005, 100.0),  # the default errors tolerance: the difference decides
        (0.05, 1.5, 0.0, 20.0),  # a ratio-only tolerance at a high base rate
        (0.3, 1.25, 0.0, 5.0),  # high rates: no rare-event approximation
    ],
    ids=["difference", "ratio", "high-rate"],
)
def test_a_canary_at_the_tolerance_passes_with_probability_at_most_beta(
    p_stable: float, tol_ratio: float, tol_diff: float, rate: float
) -> None:
    rng = np.random.default_rng(20261201)
    runs = 2000
    test = PromotionTest(runs, [tol_ratio], [tol_diff], beta=BETA)
    first = simulate(
        test,
        rng,
        p_stable=p_stable,
        p_canary=boundary_rate(p_stable, tol_ratio, tol_diff),
        rate=rate,
        shares=(0.05, 0.25, 0.6),
        passes=1500,
    )
    wrong = int(np.isfinite(first).sum())
    print(f"\nwrong passes at the boundary: {wrong}/{runs} (beta {BETA})")
    # The guarantee: P(ever pass) <= beta. A one-sided binomial check with room for noise.
    assert wilson_low(wrong, runs) <= BETA, (wrong, runs)


def test_monte_carlo_catches_a_pass_that_ignores_repeated_looks() -> None:
    """A fixed-horizon z bound (the difference's 1 - beta upper limit) checked at every pass is
    the classic mistake: on the same boundary canaries it passes far more than beta."""
    rng = np.random.default_rng(7)
    runs, passes, rate, share = 2000, 1500, 100.0, 0.2
    p_s = 0.001
    p_c = boundary_rate(p_s, 1.5, 0.005)
    z = 1.2816  # one-sided 90 %
    n_c = np.zeros(runs)
    n_s = np.zeros(runs)
    x_c = np.zeros(runs)
    x_s = np.zeros(runs)
    ever = np.zeros(runs, dtype=bool)
    for _ in range(passes):
        n = rng.poisson(rate, runs)
        c = rng.binomial(n, share)
        n_c += c
        n_s += n - c
        x_c += rng.binomial(c, p_c)
        x_s += rng.binomial(n - c, p_s)
        pc, ps = x_c / np.maximum(n_c, 1), x_s / np.maximum(n_s, 1)
        se = np.sqrt(pc * (1 - pc) / np.maximum(n_c, 1) + ps * (1 - ps) / np.maximum(n_s, 1))
        ever |= (n_c > 0) & (pc - ps + z * se < 0.005)
    wrong = int(ever.sum())
    print(f"\nnaive repeated z bound: {wrong}/{runs} wrong passes")
    assert wilson_low(wrong, runs) > BETA, wrong


@pytest.mark.parametrize(
    ("p_stable", "tol_ratio", "tol_diff", "wrong_ratio", "wrong_diff", "rate"),
    [
        (0.001, 1.5, 0.005, 1.5, 0.0075, 100.0),
        (0.05, 1.5, 0.0, 2.25, 0.0, 20.0),
    ],
    ids=["difference-null-off-by-1.5x", "ratio-null-off-by-1.5x"],
)
def test_monte_carlo_catches_a_test_whose_null_is_wrong(
    p_stable: float,
    tol_ratio: float,
    tol_diff: float,
    wrong_ratio: float,
    wrong_diff: float,
    rate: float,
) -> None:
    """Deliberately wrong: the test runs against a tolerance 1.5x looser than the one the
    canaries sit at, so it rejects a null that is true."""
    rng = np.random.default_rng(11)
    runs = 2000
    test = PromotionTest(runs, [wrong_ratio], [wrong_diff], beta=BETA)
    first = simulate(
        test,
        rng,
        p_stable=p_stable,
        p_canary=boundary_rate(p_stable, tol_ratio, tol_diff),
        rate=rate,
        shares=(0.05, 0.25, 0.6),
        passes=1500,
    )
    wrong = int(np.isfinite(first).sum())
    print(f"\nnull off by 1.5x: {wrong}/{runs} wrong passes")
    assert wilson_low(wrong, runs) > BETA, wrong


def test_a_healthy_busy_canary_passes_within_five_minutes() -> None:
    """100 req/s, 20 % share, 0.1 % errors, default tolerance: the difference bound decides."""
    rng = np.random.default_rng(3)
    s = PromotionSettings()
    test = PromotionTest(400, [s.tol_ratio], [s.tol_diff], beta=s.beta)
    first = simulate(
        test, rng, p_stable=0.001, p_canary=0.001, rate=100.0, shares=(0.2,), passes=600
    )
    assert np.isfinite(first).all()
    assert np.median(first) <= 300, np.median(first)


def test_bounds_are_coherent_with_the_pass() -> None:
    rng = np.random.default_rng(5)
    test = PromotionTest(200, [1.5], [0.005], beta=0.01)
    simulate(test, rng, p_stable=0.001, p_canary=0.001, rate=100.0, shares=(0.2,), passes=400)
    rows = np.arange(200)
    diff = test.diff_bound(0, rows)
    ratio = test.ratio_bound(0, rows)
    now = test.passes_now(rows)[0]
    # Passing now <=> a bound is at or below its tolerance (the ratio's is a grid point).
    assert np.array_equal(now, (diff <= 0.005 + 1e-9) | (ratio <= 1.5))
    # The difference e-value at the bound is at the threshold (bisection converged).
    at = test.log_e_diff(0, rows, diff)
    assert np.allclose(at[diff < 1.0], test.threshold, atol=1e-3)
    # More bad canary requests never lower a bound.
    worse = PromotionTest(1, [1.5], [0.005], beta=0.01)
    better = PromotionTest(1, [1.5], [0.005], beta=0.01)
    one = np.array([1], dtype=np.int64)
    for _ in range(100):
        worse.update(one * 20, one * 80, np.array([[1]]), np.array([[0]]))
        better.update(one * 20, one * 80, np.array([[0]]), np.array([[0]]))
    r = np.arange(1)
    assert worse.diff_bound(0, r)[0] >= better.diff_bound(0, r)[0]
    assert worse.ratio_bound(0, r)[0] >= better.ratio_bound(0, r)[0]


def test_reset_grow_and_no_traffic() -> None:
    test = PromotionTest(2, [1.5, 1.5], [0.005, 0.01])
    zero = np.zeros(2, dtype=np.int64)
    test.update(zero, zero, np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64))
    assert not test.passed.any()
    assert test.ratio_bound(0, np.arange(2)).tolist() == [math.inf, math.inf]
    assert test.diff_bound(0, np.arange(2)).tolist() == [1.0, 1.0]
    big = np.array([50_000, 50_000], dtype=np.int64)
    test.update(big, big * 4, np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64))
    assert test.passed.all()
    test.reset(np.array([1]))
    assert test.passed[:, 0].all() and not test.passed[:, 1].any()
    test.grow(5)
    assert test.passed.shape == (2, 5) and not test.passed[:, 2:].any()


def test_eta_estimates_longer_for_quieter_traffic() -> None:
    busy = eta_seconds(6.0, 20.0, 0.001, 0.2, 1.5, 0.005)
    quiet = eta_seconds(6.0, 0.04, 0.001, 0.2, 1.5, 0.005)
    assert 30 < busy < 300
    assert quiet == pytest.approx(busy * 500)
    assert eta_seconds(0.0, 0.0, 0.0, 0.0, 1.5, 0.005) == 0.0
    assert eta_seconds(1.0, 0.0, 0.001, 0.2, 1.5, 0.005) == math.inf


def test_snapshot_round_trips() -> None:
    snap = VerdictSnapshot(
        namespace="ns",
        rollout="web",
        pod_hash="abc",
        verdict="pass",
        decided_at=1.5,
        since_canary_start_s=3.0,
        beta=0.01,
        signals=(SignalPass("errors", "pass", 1.25, 0.001, 1.5, 0.005, 10, 0, 40, 0, 0.0, 5.3),),
        eta_s=None,
    )
    assert VerdictSnapshot.decode(snap.encode()) == snap
    assert snap.same_verdict(VerdictSnapshot.decode(snap.encode()))
