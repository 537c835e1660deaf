"""The engine's own cost: the evaluation pass over 20,000 busy rows against a plain numpy sum, and
the key scenario at production's 0.25 s cadence.
"""

from __future__ import annotations

import time

import numpy as np

from bench.decisions_population import BASE_ERROR, BUSY_RPS, SLOW, Ints
from bench.decisions_report import quantile
from bench.judges import NEVER
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


def busy_increments(
    rng: np.random.Generator, rows: int, seconds: float, error: float, slow: float
) -> Ints:
    share = 0.2
    n_c = rng.poisson(BUSY_RPS * seconds * share, rows)
    n_s = rng.poisson(BUSY_RPS * seconds * (1 - share), rows)
    inc = np.zeros((N_SERIES, rows), dtype=np.int64)
    inc[CANARY_REQUESTS], inc[STABLE_REQUESTS] = n_c, n_s
    inc[CANARY_ERRORS], inc[STABLE_ERRORS] = rng.binomial(n_c, error), rng.binomial(n_s, error)
    inc[CANARY_SLOW], inc[STABLE_SLOW] = rng.binomial(n_c, slow), rng.binomial(n_s, slow)
    return inc


def time_passes(
    rng: np.random.Generator,
    settings: DecisionSettings,
    error: float,
    slow: float,
    passes: int = 200,
) -> tuple[float, float]:
    """Median ms of one `evaluate` over 20,000 active busy rows (0.25 s of traffic each), and
    of a plain numpy sum over the same increments (the baseline)."""
    rows = 20_000
    engine = DecisionEngine(settings, rows)
    engine.reset(np.arange(rows), 0.0)
    active = np.ones(rows, dtype=np.bool_)
    batches = [busy_increments(rng, rows, 0.25, error, slow) for _ in range(40)]
    window = sum(batches[:40], np.zeros((N_SERIES, rows), dtype=np.int64)) * 6  # ~60 s
    for b in batches[:10]:
        engine.evaluate(b, window, active, 0.0)
    engine_ms: list[float] = []
    base_ms: list[float] = []
    for i in range(passes):
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        engine.evaluate(b, window, active, float(i))
        t1 = time.perf_counter()
        b.sum(axis=1)
        t2 = time.perf_counter()
        engine_ms.append((t1 - t0) * 1e3)
        base_ms.append((t2 - t1) * 1e3)
    return float(np.median(engine_ms)), float(np.median(base_ms))


def granularity_check(
    rng: np.random.Generator, settings: DecisionSettings
) -> tuple[float, float, float]:
    """The key scenario (busy, 10x, 5 % share) with production's 0.25 s passes."""
    rows, dt, minutes = 2_000, 0.25, 20
    engine = DecisionEngine(settings, rows)
    engine.reset(np.arange(rows), 0.0)
    active = np.ones(rows, dtype=np.bool_)
    window = np.zeros((N_SERIES, rows), dtype=np.int64)
    ring = np.zeros((240, N_SERIES, rows), dtype=np.int64)
    cum_bad = np.zeros(rows, dtype=np.int64)
    bad_at = np.full(rows, NEVER)
    inc = np.zeros((N_SERIES, rows), dtype=np.int64)
    for i in range(int(minutes * 60 / dt)):
        n_c = rng.poisson(BUSY_RPS * dt * 0.05, rows)
        n_s = rng.poisson(BUSY_RPS * dt * 0.95, rows)
        inc[CANARY_REQUESTS], inc[STABLE_REQUESTS] = n_c, n_s
        inc[CANARY_ERRORS] = rng.binomial(n_c, 10 * BASE_ERROR)
        inc[STABLE_ERRORS] = rng.binomial(n_s, BASE_ERROR)
        inc[CANARY_SLOW], inc[STABLE_SLOW] = rng.binomial(n_c, SLOW), rng.binomial(n_s, SLOW)
        window += inc - ring[i % 240]
        ring[i % 240] = inc
        result = engine.evaluate(inc, window, active, (i + 1) * dt)
        cum_bad += inc[CANARY_ERRORS]
        new = np.flatnonzero((result.verdicts == Verdict.ABORT).any(axis=0) & active)
        bad_at[new] = cum_bad[new]
        active[new] = False
    return float(np.isfinite(bad_at).mean()), quantile(bad_at, 0.5), quantile(bad_at, 0.9)
