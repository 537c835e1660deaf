"""The sequential test alone: its invariants, and its false-alarm guarantee by Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.sequential import ChangePrior, Mixture, SplitTest, floor_canary_bad, null_share

# One pass: (canary requests, stable requests, canary bad, stable bad), bad <= requests.
passes = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60), st.integers(0, 60)).map(
        lambda p: (p[0], p[1], min(p[2], p[0]), min(p[3], p[1]))
    ),
    min_size=1,
    max_size=25,
)


def feed(test: SplitTest, sequence: list[tuple[int, int, int, int]]) -> None:
    for n_c, n_s, x_c, x_s in sequence:
        test.update(
            np.array([n_c], dtype=np.int64),
            np.array([n_s], dtype=np.int64),
            np.array([[x_c]], dtype=np.int64),
            np.array([[x_s]], dtype=np.int64),
        )


def evidence(test: SplitTest) -> tuple[float, float]:
    rows = np.array([0], dtype=np.intp)
    return float(test.log_e_ratio[0, 0]), float(test.log_e_diff(0, rows)[0])


@settings(max_examples=200, deadline=None)
@given(
    passes,
    st.data(),
    st.integers(1, 80),
    st.sampled_from([(1.0, 0.0), (1.25, 0.0002), (1.5, 0.01), (3.0, 0.05)]),
)
def test_more_canary_bad_requests_never_lower_the_evidence(
    sequence: list[tuple[int, int, int, int]],
    data: st.DataObject,
    block: int,
    null: tuple[float, float],
) -> None:
    index = data.draw(st.integers(0, len(sequence) - 1))
    n_c, n_s, x_c, x_s = sequence[index]
    extra = data.draw(st.integers(0, n_c - x_c))
    worse = list(sequence)
    worse[index] = (n_c, n_s, x_c + extra, x_s)
    a = SplitTest(1, [null[0]], [null[1]], block_requests=block)
    b = SplitTest(1, [null[0]], [null[1]], block_requests=block)
    feed(a, sequence)
    feed(b, worse)
    ratio_a, diff_a = evidence(a)
    ratio_b, diff_b = evidence(b)
    # (1e-6: the log-sum-exp runs through float32 exp/log, good to ~1e-7.)
    assert ratio_b >= ratio_a - 1e-6
    assert diff_b >= diff_a - 1e-6 or math.isinf(diff_a)


@settings(max_examples=200, deadline=None)
@given(passes, st.sampled_from([1.0, 1.25, 2.0]))
def test_one_canary_bad_request_multiplies_the_evidence_by_at_most_one_over_the_share(
    sequence: list[tuple[int, int, int, int]], min_ratio: float
) -> None:
    """ln e <= sum over blocks of x_c * ln(1/theta0(rho)) <= sum of x_c * ln(1/rho): the floor
    ceil(ln(1/alpha) / ln(1/rho)) of canary bad requests holds for this test."""
    test = SplitTest(1, [min_ratio], [0.0002], block_requests=1)
    bound = 0.0
    for n_c, n_s, x_c, x_s in sequence:
        feed(test, [(n_c, n_s, x_c, x_s)])
        if x_c:
            rho = n_c / (n_c + n_s)
            bound += x_c * -math.log(float(null_share(rho, min_ratio)))
            assert float(null_share(rho, min_ratio)) >= rho
    ratio, diff = evidence(test)
    assert min(ratio, diff) <= bound + 1e-6


def test_floor_matches_the_known_values() -> None:
    # CONTEXT: alpha = 0.01 needs 2 canary errors at rho = 0.05 and 7 at rho = 0.5.
    assert floor_canary_bad(0.01, 0.05) == 2
    assert floor_canary_bad(0.01, 0.5) == 7
    assert floor_canary_bad(0.01, 0.2) == 3


def test_constant_share_below_the_floor_never_reaches_the_threshold() -> None:
    alpha = 0.01
    for rho_percent in (5, 20, 50):
        n_c, n_s = rho_percent, 100 - rho_percent
        floor = floor_canary_bad(alpha, n_c / 100)
        test = SplitTest(1, [1.0], [0.0], block_requests=1)
        # Every bad request lands in the canary: the most damning data there is.
        feed(test, [(n_c, n_s, 1, 0)] * (floor - 1))
        assert evidence(test)[0] < math.log(1 / alpha)
        feed(test, [(n_c, n_s, 1, 0)] * 10)
        assert evidence(test)[0] >= math.log(1 / alpha)  # and it does get there


def test_no_requests_and_no_bad_requests_leave_the_evidence_alone() -> None:
    test = SplitTest(2, [1.25, 1.25], [0.0002, 0.002], block_requests=10)
    feed(test, [(0, 0, 0, 0), (5, 0, 0, 0), (0, 40, 0, 0)])
    assert float(test.log_e_ratio[0, 0]) == 0.0
    # The open slice closed (45 requests >= 10), with no bad request: no likelihood moved.
    assert np.all(test.s_ratio == 0.0) and np.all(test.s_diff == 0.0)
    assert test.pending_stable[0, 0] == 40.0


def test_invalid_settings_are_refused() -> None:
    for ratios, weights in (((), ()), ((1.0,), (1.0,)), ((2.0,), (-1.0,)), ((2.0,), (0.0,))):
        try:
            Mixture(ratios, weights)
        except ValueError:
            continue
        raise AssertionError(f"accepted {ratios} {weights}")
    try:
        SplitTest(1, [100.0], [0.0])
    except ValueError:
        pass
    else:
        raise AssertionError("accepted a null above every alternative")


# --- Monte Carlo: the guarantee under frequent evaluation --------------------------------------


def crossing_rate(
    rng: np.random.Generator,
    *,
    canary_rate: float,
    stable_rate: float,
    min_ratio: float,
    min_diff: float,
    which: str,
    alpha: float,
    runs: int = 2000,
    passes: int = 1500,
) -> float:
    """Fraction of runs whose e-value ever reaches 1/alpha, looked at after every pass.

    Requests are Bernoulli (binomial counts per pass); the canary's share steps 5% -> 25% ->
    60% and is noisy per pass; blocks close after every pass (the most frequent looks).
    """
    test = SplitTest(runs, [min_ratio], [min_diff], block_requests=1)
    rows = np.arange(runs)
    crossed = np.zeros(runs, dtype=np.bool_)
    threshold = math.log(1 / alpha)
    for i in range(passes):
        share = (0.05, 0.25, 0.60)[3 * i // passes]
        n_c = rng.poisson(40 * share, runs)
        n_s = rng.poisson(40 * (1 - share), runs)
        x_c = rng.binomial(n_c, canary_rate)
        x_s = rng.binomial(n_s, stable_rate)
        test.update(n_c, n_s, x_c[None, :], x_s[None, :])
        value = test.log_e_ratio[0] if which == "ratio" else test.log_e_diff(0, rows)
        crossed |= value >= threshold
    return float(crossed.mean())


def test_ratio_test_holds_for_high_rates_too() -> None:
    """Slow requests can be 30 % of traffic: the binomial bound needs no rare-event assumption."""
    rng = np.random.default_rng(10)
    rate = crossing_rate(
        rng,
        canary_rate=0.375,
        stable_rate=0.3,
        min_ratio=1.25,
        min_diff=0.0,
        which="ratio",
        alpha=0.1,
        runs=1000,
        passes=500,
    )
    assert rate <= 0.1, rate


def test_ratio_test_false_alarms_stay_below_alpha_at_the_null_boundary() -> None:
    rng = np.random.default_rng(7)
    alpha = 0.1
    # The boundary of the ratio null (canary 1.25x stable), a high rate: thousands of bad
    # requests per run, each pass a look.
    rate = crossing_rate(
        rng,
        canary_rate=0.0625,
        stable_rate=0.05,
        min_ratio=1.25,
        min_diff=0.0,
        which="ratio",
        alpha=alpha,
    )
    assert rate <= alpha, rate


def test_difference_test_false_alarms_stay_below_alpha_at_the_null_boundary() -> None:
    rng = np.random.default_rng(8)
    alpha = 0.1
    # The boundary of the difference null: canary = stable + min_diff (here 2x a low rate).
    rate = crossing_rate(
        rng,
        canary_rate=0.004,
        stable_rate=0.002,
        min_ratio=1.0,
        min_diff=0.002,
        which="diff",
        alpha=alpha,
    )
    assert rate <= alpha, rate


def test_monte_carlo_can_fail_a_test_that_is_too_bold() -> None:
    """The same check catches a test whose null is wrong (the truth is 1.5x, the test's null
    says 1x): the check has teeth."""
    rng = np.random.default_rng(9)
    rate = crossing_rate(
        rng,
        canary_rate=0.075,
        stable_rate=0.05,
        min_ratio=1.0,
        min_diff=0.0,
        which="ratio",
        alpha=0.1,
        runs=500,
    )
    assert rate > 0.1, rate


# --- Monte Carlo: clustered bad requests (issue 11) --------------------------------------------


def clustered_crossing_rate(
    rng: np.random.Generator,
    test: SplitTest,
    *,
    runs: int,
    passes: int = 1200,
    cluster_rate: float = 0.002,
    canary_factor: float = 1.25,
    alpha: float = 0.1,
) -> float:
    """Fraction of runs whose ratio e-value ever reaches 1/alpha, bad requests in clusters.

    1 s passes of 40 requests, canary share 5% -> 25% -> 60%. Clusters start per request, on
    the canary `canary_factor` times as often (the null boundary at 1.25); sizes 5-30, their
    bad requests (retries: extra requests) come 5 per pass, so a cluster spans 1-6 passes.
    """
    threshold = math.log(1 / alpha)
    crossed = np.zeros(runs, dtype=np.bool_)
    pending = np.zeros((2, runs), dtype=np.int64)
    for i in range(passes):
        share = (0.05, 0.25, 0.60)[3 * i // passes]
        n_c = rng.poisson(40 * share, runs)
        n_s = rng.poisson(40 * (1 - share), runs)
        for arm, n, factor in ((0, n_c, canary_factor), (1, n_s, 1.0)):
            starts = rng.binomial(n, cluster_rate * factor)
            pending[arm] += starts * rng.integers(5, 31, runs)
        emit = np.minimum(pending, 5)
        pending -= emit
        test.update(n_c + emit[0], n_s + emit[1], emit[0][None, :], emit[1][None, :], float(i))
        crossed |= test.log_e_ratio[0] >= threshold
    return float(crossed.mean())


def test_clustered_bad_requests_keep_the_ratio_test_below_alpha() -> None:
    """Bursts whose bad requests are less than quiet_s apart and last less than max_slice_s
    are counted once (one slice): at the null boundary the test crosses at most alpha."""
    rng = np.random.default_rng(21)
    test = SplitTest(1500, [1.25], [0.0], block_requests=20, quiet_s=1.0, max_slice_s=10.0)
    rate = clustered_crossing_rate(rng, test, runs=1500)
    assert rate <= 0.1, rate


def test_monte_carlo_fails_the_test_that_counts_bursts_request_by_request() -> None:
    """The same test with slices closing on request counts alone (every pass) bets on each
    piece of a burst as if independent: the check catches it, even for a canary as good as
    stable (canary_factor 1)."""
    rng = np.random.default_rng(22)
    test = SplitTest(600, [1.25], [0.0], block_requests=20)
    rate = clustered_crossing_rate(rng, test, runs=600, canary_factor=1.0)
    assert rate > 0.1, rate


# --- Monte Carlo: change points (no evidence debt) ----------------------------------------------


class _UnboundedRestarts(SplitTest):
    """Deliberately wrong: every slice starts a new term of mass `start` (total mass > 1), as
    a test that 'forgets' by restarting its evidence without paying for it would."""

    def _new_mass(self, t: int, rows: np.ndarray, now: float) -> np.ndarray:
        self.mass[t, rows] = 0.0
        return np.full(rows.size, self.change.start)


def test_change_point_mixture_keeps_the_guarantee_and_restarts_do_not() -> None:
    rng = np.random.default_rng(23)
    kwargs = dict(canary_rate=0.0625, stable_rate=0.05, min_ratio=1.25, min_diff=0.0)
    runs, passes, alpha = 800, 1500, 0.1

    def rate(test: SplitTest) -> float:
        crossed = np.zeros(runs, dtype=np.bool_)
        for i in range(passes):
            share = (0.05, 0.25, 0.60)[3 * i // passes]
            n_c = rng.poisson(40 * share, runs)
            n_s = rng.poisson(40 * (1 - share), runs)
            x_c = rng.binomial(n_c, kwargs["canary_rate"])
            x_s = rng.binomial(n_s, kwargs["stable_rate"])
            test.update(n_c, n_s, x_c[None, :], x_s[None, :], float(i))
            crossed |= test.log_e_ratio[0] >= math.log(1 / alpha)
        return float(crossed.mean())

    assert rate(SplitTest(runs, [1.25], [0.0], block_requests=1)) <= alpha
    assert rate(_UnboundedRestarts(runs, [1.25], [0.0], block_requests=1)) > alpha


def onset_delay(test: SplitTest, rng: np.random.Generator, onset: int, runs: int) -> float:
    """Median passes from the onset of a 10x regression (busy, 5 % share) to ln e >= ln(200)."""
    crossed_at = np.full(runs, np.inf)
    for i in range(onset + 1200):
        n_c = rng.poisson(5, runs)
        n_s = rng.poisson(95, runs)
        x_c = rng.binomial(n_c, 0.01 if i >= onset else 0.001)
        x_s = rng.binomial(n_s, 0.001)
        test.update(n_c, n_s, x_c[None, :], x_s[None, :], float(i))
        new = (test.log_e_ratio[0] >= math.log(200)) & ~np.isfinite(crossed_at)
        crossed_at[new] = i - onset
    return float(np.median(crossed_at))


def test_a_late_regression_is_detected_about_as_fast_as_an_early_one() -> None:
    """After an hour of healthy traffic a 10x regression is caught within 2x the time it takes
    from the start; without change points (all prior mass at the start) it takes far longer."""
    rng = np.random.default_rng(24)
    runs = 300

    def make(start: float) -> SplitTest:
        return SplitTest(
            runs,
            [1.25],
            [0.0],
            block_requests=20,
            quiet_s=1.0,
            max_slice_s=10.0,
            change=ChangePrior(start=start),
        )

    early = onset_delay(make(0.5), rng, 0, runs)
    late = onset_delay(make(0.5), rng, 3600, runs)
    assert late <= 2.0 * early, (late, early)
    debt = onset_delay(make(1.0), rng, 3600, runs)
    assert debt > 2.0 * early, (debt, early)
