"""Verdict rules on top of the sequential test: abort, continue, inconclusive, platform."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.decisions import DecisionEngine, DecisionSettings, Verdict, needed_canary_bad
from streams.sequential import floor_canary_bad
from streams.windows import (
    CANARY_ERRORS,
    CANARY_REQUESTS,
    CANARY_SLOW,
    N_SERIES,
    STABLE_ERRORS,
    STABLE_REQUESTS,
    STABLE_SLOW,
)


def counts(
    rows: int,
    canary: int | np.ndarray,
    stable: int | np.ndarray,
    canary_errors: int | np.ndarray = 0,
    stable_errors: int | np.ndarray = 0,
    canary_slow: int | np.ndarray = 0,
    stable_slow: int | np.ndarray = 0,
) -> np.ndarray:
    inc = np.zeros((N_SERIES, rows), dtype=np.int64)
    inc[CANARY_REQUESTS] = canary
    inc[STABLE_REQUESTS] = stable
    inc[CANARY_ERRORS] = canary_errors
    inc[STABLE_ERRORS] = stable_errors
    inc[CANARY_SLOW] = canary_slow
    inc[STABLE_SLOW] = stable_slow
    return inc


def engine(rows: int = 1, **overrides: float | str) -> DecisionEngine:
    e = DecisionEngine(DecisionSettings(**overrides), rows)  # type: ignore[arg-type]
    e.reset(np.arange(rows), 0.0)
    return e


ALL = np.ones(1, dtype=np.bool_)


def test_a_broken_canary_is_aborted_within_a_handful_of_errors_with_evidence() -> None:
    e = engine()
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    verdict = Verdict.CONTINUE
    for second in range(1, 60):
        inc = counts(1, 5, 95, canary_errors=1 if second % 2 == 0 else 0)
        window += inc
        result = e.evaluate(inc, window, ALL, float(second))
        verdict = Verdict(result.verdicts[0, 0])
        if verdict == Verdict.ABORT:
            break
    assert verdict == Verdict.ABORT
    ev = result.evidence(0, 0)
    assert ev.signal == "errors"
    assert 2 <= ev.canary_bad <= 6 and ev.stable_bad == 0
    assert ev.statistic >= ev.threshold == math.log(2 / 0.01)
    assert 0.04 < ev.canary_share < 0.06
    assert ev.since_canary_start_s == float(second)
    assert ev.canary_window_ratio > ev.stable_window_ratio == 0.0
    # The latency signal saw nothing wrong.
    assert result.verdicts[1, 0] != Verdict.ABORT
    # An abort is a decision: it stays, even if the canary looks better afterwards.
    for t in range(second + 1, second + 30):
        result = e.evaluate(counts(1, 50, 950), window, ALL, float(t))
        assert result.verdicts[0, 0] == Verdict.ABORT


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([0.05, 0.2, 0.5]),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=40),
)
def test_no_abort_below_the_floor_of_canary_bad_requests(
    share: float, bad: list[tuple[int, int]]
) -> None:
    """Whatever the stable does, fewer canary bad requests than ceil(ln(1/alpha)/ln(1/rho))
    never abort: no valid test could (and ours needs more, at alpha/2 per signal)."""
    s = DecisionSettings()
    floor = floor_canary_bad(s.alpha, share)
    assert needed_canary_bad(s.threshold, s.min_ratio, share) >= floor
    e = engine()
    total = 100
    n_c = round(total * share)
    canary_bad = 0
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    for i, (x_c, x_s) in enumerate(bad):
        x_c = min(x_c, floor - 1 - canary_bad)
        canary_bad += x_c
        inc = counts(1, n_c, total - n_c, x_c, 0, x_c, x_s)  # errors and slow alike
        window += inc
        result = e.evaluate(inc, window, ALL, float(i))
        assert not (result.verdicts == Verdict.ABORT).any()


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.08, 0.6),  # at 6 % a 30 s window of ~700 stable requests falls under 5 % by chance
    st.sampled_from([0.05, 0.2, 0.5]),
    st.integers(20, 400),
    st.integers(0, 1),
)
def test_a_failing_stable_gives_platform_not_abort(
    failing: float, share: float, rps: int, signal: int
) -> None:
    """Stable fails (as much as the canary): PLATFORM for that signal (policy "platform"),
    never an abort."""
    rng = np.random.default_rng(int(failing * 1e6) + rps)
    e = engine(shared_policy="platform")
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    ring: list[np.ndarray] = []
    seen_platform = False
    for second in range(1, 61):
        rate = failing if second > 20 else 0.001
        n_c = rng.poisson(rps * share)
        n_s = rng.poisson(rps * (1 - share))
        bad_c, bad_s = rng.binomial(n_c, rate), rng.binomial(n_s, rate)
        fields = {"canary_errors": bad_c, "stable_errors": bad_s}
        if signal == 1:
            fields = {"canary_slow": bad_c, "stable_slow": bad_s}
        inc = counts(1, n_c, n_s, **fields)
        ring.append(inc)
        window += inc
        if len(ring) > 30:
            window -= ring.pop(0)
        result = e.evaluate(inc, window, ALL, float(second))
        assert not (result.verdicts == Verdict.ABORT).any()
        if second > 25:
            seen_platform |= result.verdicts[signal, 0] == Verdict.PLATFORM
    assert seen_platform


def test_platform_is_not_claimed_when_the_canary_is_far_worse_than_a_failing_stable() -> None:
    e = engine()
    window = counts(1, 600, 2400, canary_errors=400, stable_errors=150)
    result = e.evaluate(counts(1, 0, 0), window, ALL, 1.0)
    assert result.verdicts[0, 0] != Verdict.PLATFORM


def test_stable_well_above_its_own_level_is_failing_below_the_absolute_threshold() -> None:
    e = engine(shared_policy="platform")
    # 20 minutes of stable at 0.1 %, then a window at 2 % (< platform_ratio 5 %).
    e.evaluate(counts(1, 6000, 114000, 6, 114), np.zeros((N_SERIES, 1), np.int64), ALL, 1.0)
    window = counts(1, 300, 5700, canary_errors=6, stable_errors=114)
    before = e.evaluate(counts(1, 0, 0), counts(1, 300, 5700, 0, 6), ALL, 2.0)
    assert before.verdicts[0, 0] == Verdict.CONTINUE
    e.evaluate(counts(1, 300, 5700, 6, 114), window, ALL, 3.0)
    result = e.evaluate(counts(1, 0, 0), window, ALL, 4.0)
    assert result.verdicts[0, 0] == Verdict.PLATFORM


def test_quiet_environments_are_inconclusive_and_busy_healthy_ones_continue() -> None:
    rng = np.random.default_rng(3)
    rows = 2
    e = engine(rows)
    active = np.ones(rows, dtype=np.bool_)
    window = np.zeros((N_SERIES, rows), dtype=np.int64)
    rps = np.array([0.2, 100.0])
    for second in range(1, 601):
        n_c = rng.poisson(rps * 0.05)
        n_s = rng.poisson(rps * 0.95)
        inc = counts(rows, n_c, n_s, rng.binomial(n_c, 0.001), rng.binomial(n_s, 0.001))
        result = e.evaluate(inc, window, active, float(second))
    assert result.verdicts[0, 0] == Verdict.INCONCLUSIVE  # ~30 canary requests in 10 min
    assert result.verdicts[0, 1] == Verdict.CONTINUE  # ~3,000: a 10x regression would show
    assert (result.needed[:, 1] >= 2).all()


def test_inactive_rows_continue_and_reset_starts_from_zero() -> None:
    e = engine(2)
    window = np.zeros((N_SERIES, 2), dtype=np.int64)
    inc = counts(2, 5, 95, canary_errors=4)
    for t in range(60):  # bad requests every pass: slices close at max_slice_s
        result = e.evaluate(inc, window, np.array([True, False]), float(t))
    assert result.verdicts[0, 0] == Verdict.ABORT
    assert result.verdicts[0, 1] == Verdict.CONTINUE
    e.reset(np.array([0]), 100.0)
    result = e.evaluate(counts(2, 0, 0), window, np.array([True, True]), 101.0)
    assert result.verdicts[0, 0] != Verdict.ABORT
    assert result.statistic[0, 0] == 0.0 and result.started_at[0] == 100.0
    assert result.evidence(0, 0).since_canary_start_s == 1.0
    # Row 1 kept accumulating while inactive: once active, its evidence counts.
    assert result.verdicts[0, 1] == Verdict.ABORT


def test_engine_grows_and_keeps_its_rows() -> None:
    e = engine(1)
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    e.evaluate(counts(1, 50, 50, canary_errors=30), window, ALL, 1.0)
    stat = float(e.test.log_e_ratio[0, 0])
    e.grow(3)
    assert e.capacity == 3 and float(e.test.log_e_ratio[0, 0]) == stat
    result = e.evaluate(counts(3, 0, 0), np.zeros((N_SERIES, 3), np.int64), np.ones(3, bool), 2.0)
    assert result.verdicts.shape == (2, 3)


def test_false_aborts_stay_below_alpha_with_frequent_evaluation() -> None:
    """Monte Carlo at the null boundary (canary 1.25x stable, where min_diff does not help),
    passes every 0.25 s, canary share stepping 5% -> 20% -> 50%: the errors signal may abort
    at most alpha/2 of the runs (alpha raised to 0.2 so that the check has teeth)."""
    rng = np.random.default_rng(11)
    runs, alpha = 1500, 0.2
    e = engine(runs, alpha=alpha)
    active = np.ones(runs, dtype=np.bool_)
    window = np.zeros((N_SERIES, runs), dtype=np.int64)
    aborted = np.zeros(runs, dtype=np.bool_)
    stable_rate = 0.02
    for i in range(2400):  # 10 minutes at 0.25 s
        share = (0.05, 0.2, 0.5)[3 * i // 2400]
        n_c = rng.poisson(25 * share, runs)
        n_s = rng.poisson(25 * (1 - share), runs)
        inc = counts(
            runs, n_c, n_s, rng.binomial(n_c, 1.25 * stable_rate), rng.binomial(n_s, stable_rate)
        )
        result = e.evaluate(inc, window, active, i * 0.25)
        aborted |= result.verdicts[0] == Verdict.ABORT
    assert aborted.mean() <= alpha / 2, aborted.mean()


# --- issue 11: warm-ups, shared breakage, honest verdicts ---------------------------------------


def warmup_abort_rate(slow_for_s: float, runs: int = 300, **overrides: float) -> float:
    """Busy canaries (100 req/s, 20 % share, 1 s passes, healthy errors, stable 2 % slow) whose
    new pods are 30 % slow for `slow_for_s` after the start and after a step at 300 s."""
    rng = np.random.default_rng(31)
    e = engine(runs, **overrides)
    active = np.ones(runs, dtype=np.bool_)
    window = np.zeros((N_SERIES, runs), dtype=np.int64)
    aborted = np.zeros(runs, dtype=np.bool_)
    rows = np.arange(runs)
    for second in range(600):
        if second == 300:
            e.start_grace(rows, float(second))
        warm = (second % 300) < slow_for_s
        n_c = rng.poisson(20, runs)
        n_s = rng.poisson(80, runs)
        inc = counts(
            runs,
            n_c,
            n_s,
            rng.binomial(n_c, 0.001),
            rng.binomial(n_s, 0.001),
            rng.binomial(n_c, 0.3 if warm else 0.02),
            rng.binomial(n_s, 0.02),
        )
        result = e.evaluate(inc, window, active, float(second + 1))
        aborted |= result.verdicts[1] == Verdict.ABORT
    return float(aborted.mean())


def test_new_pods_warming_up_do_not_abort_while_a_slow_canary_does() -> None:
    assert warmup_abort_rate(10.0) == 0.0
    assert warmup_abort_rate(60.0) == 0.0
    # Without the grace a minute's warm-up aborts (the check has teeth); a 10 s one is one
    # burst of slow requests to the sliced test, and rarely does ...
    assert warmup_abort_rate(60.0, latency_grace_s=0.0) > 0.5
    # ... and with it a canary that stays slow is still aborted.
    assert warmup_abort_rate(600.0, runs=100) == 1.0


def shared_breakage(policy: str) -> tuple[set[int], list[float]]:
    """Busy canary at 20 %: from 60 s it fails 10 % of requests and stable 7 %."""
    rng = np.random.default_rng(32)
    e = engine(shared_policy=policy)
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    ring: list[np.ndarray] = []
    seen: set[int] = set()
    held_at: list[float] = []
    for second in range(1, 301):
        bad = second > 60
        n_c, n_s = rng.poisson(20), rng.poisson(80)
        inc = counts(
            1,
            n_c,
            n_s,
            rng.binomial(n_c, 0.10 if bad else 0.001),
            rng.binomial(n_s, 0.07 if bad else 0.001),
        )
        ring.append(inc)
        window += inc
        if len(ring) > 60:
            window -= ring.pop(0)
        result = e.evaluate(inc, window, ALL, float(second))
        verdict = int(result.verdicts[0, 0])
        seen.add(verdict)
        if verdict == Verdict.HOLD and not held_at:
            held_at.append(float(second))
    return seen, held_at


def test_stable_degrading_while_the_canary_runs_holds_the_rollout() -> None:
    seen, held_at = shared_breakage("hold")
    assert Verdict.ABORT not in seen
    assert held_at and held_at[0] <= 90.0
    # The old reading, for comparison: PLATFORM, and nothing holds the rollout.
    seen, held_at = shared_breakage("platform")
    assert Verdict.PLATFORM in seen and Verdict.HOLD not in seen and not held_at


def test_continue_only_when_no_canary_bad_request_waits_and_the_evidence_leans_healthy() -> None:
    e = engine()
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    for second in range(1, 601):  # ten healthy minutes at 100 req/s: CONTINUE
        result = e.evaluate(counts(1, 20, 80), window, ALL, float(second))
    assert result.verdicts[0, 0] == Verdict.CONTINUE
    # A canary bad request arrives: it sits in the open slice (no quiet gap yet), so the
    # statistic has not seen it; the verdict must not say CONTINUE.
    result = e.evaluate(counts(1, 20, 80, canary_errors=3), window, ALL, 601.0)
    assert result.verdicts[0, 0] == Verdict.INCONCLUSIVE
    result = e.evaluate(counts(1, 20, 80), window, ALL, 602.0)  # closes: now in the statistic
    assert result.statistic[0, 0] > 0.0
    assert result.verdicts[0, 0] == Verdict.INCONCLUSIVE  # leaning to a regression


def test_the_evidence_line_compares_the_statistic_with_its_threshold() -> None:
    e = engine()
    window = np.zeros((N_SERIES, 1), dtype=np.int64)
    result = e.evaluate(counts(1, 20, 80), window, ALL, 1.0)
    line = result.evidence(0, 0).describe()
    assert "statistic 0.00 < threshold 5.30" in line
