"""One simulated run of a population through canarywatch's engine and the baseline judges
(bench/judges.py): per judge and canary, when it aborted and how many bad requests it let through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bench.decisions_population import (
    BURSTS,
    PLATFORM_ERROR,
    PLATFORM_MINUTES,
    SLOW,
    STORM_SIZE,
    STORMS_PER_HOUR,
    WARMUP_SLOW,
    Floats,
    Ints,
    Population,
)
from bench.judges import NEVER, ArgoAnalysis, KayentaJudge, SprtOracle
from streams.decisions import DecisionEngine, DecisionSettings, Verdict
from streams.windows import (
    CANARY_ERRORS,
    CANARY_REQUESTS,
    CANARY_SLOW,
    N_SERIES,
    STABLE_ERRORS,
    STABLE_REQUESTS,
    STABLE_SLOW,
)


@dataclass(slots=True)
class Outcome:
    """Per judge and canary: abort time in seconds since the canary started (NEVER if none)
    and the canary's bad (5xx) requests when it aborted."""

    time_s: Floats
    bad: Floats


@dataclass(slots=True)
class RunResult:
    outcomes: dict[str, Outcome]
    abort_signal: NDArray[np.int8]  # canarywatch: 0 errors, 1 latency, -1 none
    platform_seen: NDArray[np.bool_]  # canarywatch said PLATFORM (or HOLD) at least once
    final_verdict: NDArray[np.int8]  # canarywatch's errors verdict at the end (or ABORT)
    seconds: float
    hold_time: Floats  # canarywatch: first HOLD, seconds since the canary started (or NEVER)


def _bursts(rng: np.random.Generator, n_req: Ints, rate: Floats, kinds: NDArray[np.int64]) -> Ints:
    """Bad requests that new bursts will bring, per row (sizes uniform in the kind's range)."""
    out = np.zeros(n_req.size, dtype=np.int64)
    for i, (lo, hi, _) in enumerate(BURSTS.values()):
        rows = np.flatnonzero(kinds == i + 1)
        if not rows.size:
            continue
        mean = (lo + hi) / 2.0
        starts = rng.binomial(n_req[rows], rate[rows] / mean)
        hit = np.flatnonzero(starts)
        if hit.size:
            sizes = rng.integers(lo, hi + 1, int(starts[hit].sum()))
            owner = np.repeat(np.arange(hit.size), starts[hit])
            out[rows[hit]] = np.bincount(owner, weights=sizes, minlength=hit.size).astype(np.int64)
    return out


def run(
    pop: Population,
    rng: np.random.Generator,
    settings: DecisionSettings,
    *,
    judges: bool = True,
) -> RunResult:
    began = time.perf_counter()
    n = pop.size
    minutes = pop.minutes
    engine = DecisionEngine(settings, n)
    engine.reset(np.arange(n), 0.0)
    active = np.ones(n, dtype=np.bool_)
    ring = np.zeros((60, N_SERIES, n), dtype=np.int32)
    window = np.zeros((N_SERIES, n), dtype=np.int64)
    per_minute = np.zeros((minutes, 4, n), dtype=np.int64)  # canary req/err, stable req/err
    cw_time = np.full(n, NEVER)
    cw_bad = np.full(n, NEVER)
    hold_time = np.full(n, NEVER)
    abort_signal = np.full(n, -1, dtype=np.int8)
    platform_seen = np.zeros(n, dtype=np.bool_)
    final = np.zeros(n, dtype=np.int8)
    healthy_p1 = np.where(pop.canary_error > pop.base, pop.canary_error, 10 * pop.base)
    oracle = SprtOracle(pop.base.copy(), healthy_p1, settings.alpha)
    or_time = np.full(n, NEVER)
    or_bad = np.full(n, NEVER)
    cum_c_req = np.zeros(n, dtype=np.int64)
    cum_c_err = np.zeros(n, dtype=np.int64)
    at_onset_req = np.zeros(n, dtype=np.int64)
    at_onset_err = np.zeros(n, dtype=np.int64)
    increments = np.zeros((N_SERIES, n), dtype=np.int64)
    bursty = (pop.burst >= 1) & (pop.burst <= len(BURSTS))
    storm = pop.burst == len(BURSTS) + 1
    speed = np.zeros(n, dtype=np.int64)
    for i, (_, _, per_s) in enumerate(BURSTS.values()):
        speed[pop.burst == i + 1] = per_s
    speed[storm] = pop.storm_speed[storm]
    pending = np.zeros((2, n), dtype=np.int64)  # burst bad requests still to come per arm
    storm_at = np.where(
        storm[:, None], rng.integers(0, minutes * 60, (n, STORMS_PER_HOUR * minutes // 60)), -1
    )
    stepped = np.flatnonzero(pop.shares[:, 0] != pop.shares[:, 1])
    is_stepped = pop.shares[:, 0] != pop.shares[:, 1]
    warm = pop.warmup > 0
    for second in range(minutes * 60):
        minute = second // 60
        step = min(minute // 20, 2)
        if second in (1200, 2400) and stepped.size:
            engine.start_grace(stepped, float(second))  # a canary step: new pods
        share = pop.shares[:, step]
        outage = PLATFORM_MINUTES[0] <= minute < PLATFORM_MINUTES[1]
        started = second >= pop.onset
        if second > 0:
            now_onset = np.flatnonzero(pop.onset == second)
            at_onset_req[now_onset] = cum_c_req[now_onset]
            at_onset_err[now_onset] = cum_c_err[now_onset]
        p_c = np.where(started, pop.canary_error, pop.base)
        p_s = np.where(started, pop.stable_after, pop.base)
        if outage:
            p_c = np.where(pop.platform, PLATFORM_ERROR, p_c)
            p_s = np.where(pop.platform, PLATFORM_ERROR, p_s)
        n_c = rng.poisson(pop.rps * share)
        n_s = rng.poisson(pop.rps * (1.0 - share))
        err_c = rng.binomial(n_c, np.where(bursty, 0.0, p_c))
        err_s = rng.binomial(n_s, np.where(bursty, 0.0, p_s))
        if bursty.any():
            pending[0] += _bursts(rng, n_c, p_c, pop.burst)
            pending[1] += _bursts(rng, n_s, p_s, pop.burst)
        if storm.any():
            hit = (storm_at == second).sum(axis=1)
            rows = np.flatnonzero(hit)
            if rows.size:
                on_canary = rng.random(rows.size) < share[rows]
                pending[0, rows[on_canary]] += STORM_SIZE * hit[rows[on_canary]]
                pending[1, rows[~on_canary]] += STORM_SIZE * hit[rows[~on_canary]]
        if bursty.any() or storm.any():
            emit = np.minimum(pending, speed)
            pending -= emit
            # Retries are requests too.
            n_c = n_c + emit[0]
            n_s = n_s + emit[1]
            err_c += emit[0]
            err_s += emit[1]
        slow_c = pop.canary_slow
        if warm.any():
            since_step = second - np.where(is_stepped, step * 1200, 0)
            slow_c = np.where(warm & (since_step < pop.warmup), WARMUP_SLOW, slow_c)
        increments[CANARY_REQUESTS] = n_c
        increments[STABLE_REQUESTS] = n_s
        increments[CANARY_ERRORS] = err_c
        increments[STABLE_ERRORS] = err_s
        increments[CANARY_SLOW] = rng.binomial(n_c, slow_c)
        increments[STABLE_SLOW] = rng.binomial(n_s, SLOW)
        slot = second % 60
        window -= ring[slot]
        window += increments
        ring[slot] = increments
        result = engine.evaluate(increments, window, active, float(second + 1))
        cum_c_req += n_c
        cum_c_err += err_c
        per_minute[minute, 0] += n_c
        per_minute[minute, 1] += err_c
        per_minute[minute, 2] += n_s
        per_minute[minute, 3] += err_s
        aborting = result.verdicts == Verdict.ABORT
        new = np.flatnonzero(aborting.any(axis=0) & active)
        if new.size:
            cw_time[new] = second + 1
            cw_bad[new] = cum_c_err[new] - at_onset_err[new]
            abort_signal[new] = np.where(aborting[0, new], 0, 1)
            active[new] = False
        holding = (result.verdicts == Verdict.HOLD).any(axis=0) & ~np.isfinite(hold_time)
        hold_time[holding] = second + 1
        if outage:
            platform_seen |= (
                (result.verdicts == Verdict.PLATFORM) | (result.verdicts == Verdict.HOLD)
            ).any(axis=0)
        crossed = np.flatnonzero(
            oracle.crossed(cum_c_req - at_onset_req, cum_c_err - at_onset_err)
            & ~np.isfinite(or_time)
            & started
        )
        or_time[crossed] = second + 1
        or_bad[crossed] = cum_c_err[crossed] - at_onset_err[crossed]
        if second == minutes * 60 - 1:
            final = np.where(active, result.verdicts[0], np.int8(Verdict.ABORT)).astype(np.int8)
    outcomes = {
        "canarywatch": Outcome(cw_time, cw_bad),
        "oracle": Outcome(or_time, or_bad),
    }
    c_req, c_err, s_req, s_err = (per_minute[:, i] for i in range(4))
    cum_err = np.vstack([np.zeros((1, n), np.int64), np.cumsum(c_err, axis=0)])
    minute_judges: dict[str, Callable[[], Floats]] = {
        "argo 0.5%": lambda: ArgoAnalysis("argo 0.5%", 0.005).abort_minute(c_req, c_err),
        "argo docs": lambda: ArgoAnalysis("argo docs", 0.05, interval_min=5).abort_minute(
            c_req, c_err
        ),
        "kayenta": lambda: KayentaJudge().abort_minute(c_req, c_err, s_req, s_err),
    }
    for name, judge in minute_judges.items() if judges else ():
        minute_of = judge()
        done = np.isfinite(minute_of)
        bad = np.full(n, NEVER)
        idx = np.flatnonzero(done)
        bad[idx] = cum_err[minute_of[idx].astype(np.int64), idx] - at_onset_err[idx]
        outcomes[name] = Outcome(np.where(done, minute_of * 60.0, NEVER), bad)
    return RunResult(
        outcomes, abort_signal, platform_seen, final, time.perf_counter() - began, hold_time
    )
