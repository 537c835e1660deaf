"""`make bench-decisions`: canarywatch's verdicts against Argo-, Kayenta-style judges and an oracle.

One seeded run, in process, no Kafka. Every canary gets the same simulated traffic for all
judges; each judge decides on its own whether and when it would abort:

- canarywatch: `DecisionEngine.evaluate` driven as the worker drives it, once per simulated
  second with that second's increments (production passes are 0.25 s; a check at the end runs
  the key scenario at 0.25 s too) and a 60 s sliding window of the same counts. A canary the
  engine aborts is deactivated, as the worker's abort would end it.
- argo 0.5%: canary error ratio over a 5-minute window, measured every minute, abort at the
  4th failed measurement (failureLimit 3), a measurement failing above 0.5 %.
- argo docs: the Argo Rollouts documentation's example: success ratio >= 0.95 over [5m],
  interval 5m, failureLimit 3 (here on the canary's own requests; on the whole service, as in
  the docs' query, it would catch even less).
- kayenta: Mann-Whitney U, 98 % confidence, on per-minute error ratios, canary vs stable,
  judged every 10 minutes on all minutes so far.
- oracle: Wald's SPRT knowing both true rates (for healthy canaries: against a 10x rate).

Traffic: Poisson requests per second, binomial 5xx (0.1 % base) and slow requests (2 %, both
arms, no latency regression). Busy environments serve 100 req/s, quiet ones 0.2 req/s.
Healthy and platform canaries step through 5 % -> 20 % -> 50 % canary share (20 minutes each);
regressions run at a fixed share. Platform canaries are healthy, but both arms fail 5 % of
requests from minute 20 to 30.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bench.judges import NEVER, ArgoAnalysis, KayentaJudge, SprtOracle, wilson
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

SEED = 20261126
MINUTES = 60
BASE_ERROR = 0.001
SLOW = 0.02
BUSY_RPS, QUIET_RPS = 100.0, 0.2
HEALTHY = 20_000  # half busy, half quiet
PER_SCENARIO = 1_000
PLATFORM = 1_000  # per environment kind
PLATFORM_ERROR = 0.05
PLATFORM_MINUTES = (20, 30)
STEPS = (0.05, 0.20, 0.50)  # canary share per 20-minute step
REGRESSIONS: tuple[tuple[str, float], ...] = (
    ("2x", 2 * BASE_ERROR),
    ("5x", 5 * BASE_ERROR),
    ("10x", 10 * BASE_ERROR),
    ("broken", 0.10),
)
SHARES = (0.05, 0.20, 0.50)
ENVS = (("busy", BUSY_RPS), ("quiet", QUIET_RPS))
JUDGES = ("canarywatch", "argo 0.5%", "argo docs", "kayenta", "oracle")

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Group:
    kind: str  # healthy | regression | platform
    env: str
    regression: str
    share: float  # 0 for the stepped schedule
    rows: slice


@dataclass(slots=True)
class Population:
    rps: Floats
    shares: Floats  # [rows, 3]: share per 20-minute step
    canary_error: Floats
    platform: NDArray[np.bool_]
    groups: list[Group]

    @property
    def size(self) -> int:
        return int(self.rps.size)


def build_population() -> Population:
    rps: list[Floats] = []
    shares: list[Floats] = []
    error: list[Floats] = []
    platform: list[NDArray[np.bool_]] = []
    groups: list[Group] = []
    start = 0

    def add(
        kind: str, env: str, regression: str, share: float, n: int, rate: float, p: float
    ) -> None:
        nonlocal start
        rps.append(np.full(n, rate))
        shares.append(np.tile(np.asarray(STEPS if share == 0 else (share,) * 3), (n, 1)))
        error.append(np.full(n, p))
        platform.append(np.full(n, kind == "platform"))
        groups.append(Group(kind, env, regression, share, slice(start, start + n)))
        start += n

    for env, rate in ENVS:
        add("healthy", env, "none", 0.0, HEALTHY // 2, rate, BASE_ERROR)
    for env, rate in ENVS:
        for name, p in REGRESSIONS:
            for share in SHARES:
                add("regression", env, name, share, PER_SCENARIO, rate, p)
    for env, rate in ENVS:
        add("platform", env, "none", 0.0, PLATFORM, rate, BASE_ERROR)
    return Population(
        rps=np.concatenate(rps),
        shares=np.concatenate(shares),
        canary_error=np.concatenate(error),
        platform=np.concatenate(platform),
        groups=groups,
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
    platform_seen: NDArray[np.bool_]  # canarywatch said PLATFORM at least once
    final_verdict: NDArray[np.int8]  # canarywatch's errors verdict at the end (or ABORT)
    seconds: float


def run(pop: Population, rng: np.random.Generator, settings: DecisionSettings) -> RunResult:
    began = time.perf_counter()
    n = pop.size
    engine = DecisionEngine(settings, n)
    engine.reset(np.arange(n), 0.0)
    active = np.ones(n, dtype=np.bool_)
    ring = np.zeros((60, N_SERIES, n), dtype=np.int32)
    window = np.zeros((N_SERIES, n), dtype=np.int64)
    per_minute = np.zeros((MINUTES, 4, n), dtype=np.int64)  # canary req/err, stable req/err
    cw_time = np.full(n, NEVER)
    cw_bad = np.full(n, NEVER)
    abort_signal = np.full(n, -1, dtype=np.int8)
    platform_seen = np.zeros(n, dtype=np.bool_)
    final = np.zeros(n, dtype=np.int8)
    healthy_p1 = np.where(pop.canary_error > BASE_ERROR, pop.canary_error, 10 * BASE_ERROR)
    oracle = SprtOracle(np.full(n, BASE_ERROR), healthy_p1, settings.alpha)
    or_time = np.full(n, NEVER)
    or_bad = np.full(n, NEVER)
    cum_c_req = np.zeros(n, dtype=np.int64)
    cum_c_err = np.zeros(n, dtype=np.int64)
    increments = np.zeros((N_SERIES, n), dtype=np.int64)
    outage_error = np.where(pop.platform, PLATFORM_ERROR, pop.canary_error)
    outage_stable = np.where(pop.platform, PLATFORM_ERROR, BASE_ERROR)
    base_stable = np.full(n, BASE_ERROR)
    for second in range(MINUTES * 60):
        minute = second // 60
        step = min(minute // 20, 2)
        share = pop.shares[:, step]
        outage = PLATFORM_MINUTES[0] <= minute < PLATFORM_MINUTES[1]
        p_c = outage_error if outage else pop.canary_error
        p_s = outage_stable if outage else base_stable
        n_c = rng.poisson(pop.rps * share)
        n_s = rng.poisson(pop.rps * (1.0 - share))
        increments[CANARY_REQUESTS] = n_c
        increments[STABLE_REQUESTS] = n_s
        increments[CANARY_ERRORS] = rng.binomial(n_c, p_c)
        increments[STABLE_ERRORS] = rng.binomial(n_s, p_s)
        increments[CANARY_SLOW] = rng.binomial(n_c, SLOW)
        increments[STABLE_SLOW] = rng.binomial(n_s, SLOW)
        slot = second % 60
        window -= ring[slot]
        window += increments
        ring[slot] = increments
        result = engine.evaluate(increments, window, active, float(second + 1))
        cum_c_req += n_c
        cum_c_err += increments[CANARY_ERRORS]
        per_minute[minute, 0] += n_c
        per_minute[minute, 1] += increments[CANARY_ERRORS]
        per_minute[minute, 2] += n_s
        per_minute[minute, 3] += increments[STABLE_ERRORS]
        aborting = result.verdicts == Verdict.ABORT
        new = np.flatnonzero(aborting.any(axis=0) & active)
        if new.size:
            cw_time[new] = second + 1
            cw_bad[new] = cum_c_err[new]
            abort_signal[new] = np.where(aborting[0, new], 0, 1)
            active[new] = False
        if outage:
            platform_seen |= (result.verdicts == Verdict.PLATFORM).any(axis=0)
        crossed = np.flatnonzero(oracle.crossed(cum_c_req, cum_c_err) & ~np.isfinite(or_time))
        or_time[crossed] = second + 1
        or_bad[crossed] = cum_c_err[crossed]
        if second == MINUTES * 60 - 1:
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
    for name, judge in minute_judges.items():
        minute_of = judge()
        done = np.isfinite(minute_of)
        bad = np.full(n, NEVER)
        idx = np.flatnonzero(done)
        bad[idx] = cum_err[minute_of[idx].astype(np.int64), idx]
        outcomes[name] = Outcome(np.where(done, minute_of * 60.0, NEVER), bad)
    return RunResult(outcomes, abort_signal, platform_seen, final, time.perf_counter() - began)


# --- reporting --------------------------------------------------------------------------------


def quantile(values: Floats, q: float) -> float:
    """Empirical quantile (inverted CDF) with never-aborted canaries counted as infinite."""
    return float(np.quantile(values, q, method="inverted_cdf"))


def fmt_count(x: float) -> str:
    return "never" if not math.isfinite(x) else f"{x:.0f}"


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def report_healthy(pop: Population, res: RunResult) -> float:
    rows = np.concatenate(
        [np.arange(g.rows.start, g.rows.stop) for g in pop.groups if g.kind == "healthy"]
    )
    print(f"\nHealthy canaries: {rows.size} (busy and quiet, 5% -> 20% -> 50% share, 60 min)")
    print(f"{'judge':<13} {'false aborts':>12}  {'rate':>7}  {'95% interval':<17} busy / quiet")
    rate_cw = 0.0
    for judge in JUDGES:
        aborted = np.isfinite(res.outcomes[judge].time_s[rows])
        k = int(aborted.sum())
        lo, hi = wilson(k, rows.size)
        parts = []
        for g in pop.groups:
            if g.kind == "healthy":
                parts.append(str(int(np.isfinite(res.outcomes[judge].time_s[g.rows]).sum())))
        print(
            f"{judge:<13} {k:>12}  {k / rows.size:>7.4f}  [{lo:.4f}, {hi:.4f}]  {' / '.join(parts)}"
        )
        if judge == "canarywatch":
            rate_cw = k / rows.size
    by_signal = np.bincount(res.abort_signal[rows] + 1, minlength=3)
    print(f"canarywatch false aborts by signal: errors {by_signal[1]}, latency {by_signal[2]}")
    for g in pop.groups:
        if g.kind != "healthy":
            continue
        verdicts = np.bincount(res.final_verdict[g.rows], minlength=len(Verdict))
        summary = ", ".join(f"{v.name.lower()} {verdicts[v.value]}" for v in Verdict)
        print(f"canarywatch errors verdict at 60 min, {g.env}: {summary}")
    return rate_cw


def report_platform(pop: Population, res: RunResult) -> tuple[int, int]:
    """Aborts of platform canaries from the outage on (the platform's doing), and before it
    (healthy-canary false aborts, as in the healthy group)."""
    outage_s = PLATFORM_MINUTES[0] * 60
    print(
        f"\nPlatform canaries: healthy, both arms fail {PLATFORM_ERROR:.0%} of requests "
        f"in minutes {PLATFORM_MINUTES[0]}-{PLATFORM_MINUTES[1]}; aborts from the outage on "
        "(before it: healthy-canary false aborts)"
    )
    during = before = 0
    for g in pop.groups:
        if g.kind != "platform":
            continue
        parts = []
        for judge in JUDGES:
            t = res.outcomes[judge].time_s[g.rows]
            late = int((np.isfinite(t) & (t > outage_s)).sum())
            early = int((t <= outage_s).sum())
            parts.append(f"{judge} {late}" + (f" ({early})" if early else ""))
            if judge == "canarywatch":
                during += late
                before += early
        seen = int(res.platform_seen[g.rows].sum())
        n = g.rows.stop - g.rows.start
        print(f"{g.env:<6} n={n}: aborted by " + ", ".join(parts))
        print(f"{'':<6} canarywatch said PLATFORM during the outage for {seen} of {n}")
    return during, before


def report_regressions(
    pop: Population, res: RunResult
) -> dict[tuple[str, str, float, str], dict[str, float]]:
    print(
        "\nRegressions of a 0.1 % base error rate (broken: the canary fails 10 %), "
        f"{PER_SCENARIO} canaries each, 60 min; bad = the canary's 5xx before the abort"
    )
    header = (
        f"{'env':<6} {'regr':<7} {'share':>5}  {'judge':<12} {'detect':>6} "
        f"{'bad med':>8} {'bad p90':>8} {'time med':>9}"
    )
    print(header)
    print("-" * len(header))
    table: dict[tuple[str, str, float, str], dict[str, float]] = {}
    for g in pop.groups:
        if g.kind != "regression":
            continue
        for i, judge in enumerate(JUDGES):
            o = res.outcomes[judge]
            t = o.time_s[g.rows]
            b = o.bad[g.rows]
            row = {
                "detect": float(np.isfinite(t).mean()),
                "bad_med": quantile(b, 0.5),
                "bad_p90": quantile(b, 0.9),
                "time_med": quantile(t, 0.5),
            }
            table[(g.env, g.regression, g.share, judge)] = row
            label = f"{g.env:<6} {g.regression:<7} {g.share:>5.0%}" if i == 0 else " " * 20
            print(
                f"{label}  {judge:<12} {row['detect']:>6.3f} {fmt_count(row['bad_med']):>8} "
                f"{fmt_count(row['bad_p90']):>8} {fmt_time(row['time_med']):>9}"
            )
    return table


# --- evaluation pass timing -------------------------------------------------------------------


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


def main() -> int:
    began = time.perf_counter()
    settings = DecisionSettings()
    rng = np.random.default_rng(SEED)
    pop = build_population()
    print(
        f"decision-bench: seed {SEED}, {pop.size} canaries x {MINUTES} min, 1 s passes; "
        f"alpha {settings.alpha} (per revision, both signals), min regression "
        f"{settings.min_ratio}x and +{settings.min_diff:.2%}, abort at ln e >= "
        f"{settings.threshold:.2f}"
    )
    res = run(pop, rng, settings)
    print(f"simulated in {res.seconds:.0f} s")
    false_rate = report_healthy(pop, res)
    platform_aborts, platform_before = report_platform(pop, res)
    table = report_regressions(pop, res)
    detect, med, p90 = granularity_check(rng, settings)
    print(
        f"\n0.25 s passes (production cadence), busy, 10x, 5% share, 2000 canaries: "
        f"detect {detect:.3f}, bad canary requests median {fmt_count(med)}, p90 {fmt_count(p90)}"
    )
    pass_ms, base_ms = time_passes(rng, settings, BASE_ERROR, SLOW)
    dense_ms, dense_base = time_passes(rng, settings, 0.05, 0.30, passes=100)
    print(
        f"\nEvaluation pass over 20,000 busy environments (0.25 s of traffic, 0.1% errors, "
        f"2% slow): {pass_ms:.2f} ms median; plain numpy sum of the same increments "
        f"{base_ms:.3f} ms (x{pass_ms / base_ms:.0f})"
    )
    print(
        f"Worst case, every row with bad requests in both signals (5% errors, 30% slow): "
        f"{dense_ms:.2f} ms (x{dense_ms / dense_base:.0f} the sum)"
    )
    key = table[("busy", "10x", 0.05, "canarywatch")]
    cw = table[("busy", "broken", 0.05, "canarywatch")]["time_med"]
    argo = table[("busy", "broken", 0.05, "argo 0.5%")]["time_med"]
    ratio = cw / argo if math.isfinite(argo) and argo > 0 else math.inf
    print(
        f"platform canaries aborted by canarywatch from the outage on: {platform_aborts} "
        f"(before it: {platform_before}); bench took {time.perf_counter() - began:.0f} s"
    )
    print(
        f"decision-bench: false_abort_rate={false_rate:.4f} detect_rate_10x={key['detect']:.3f} "
        f"p90_bad_canary_requests_10x_5pct={fmt_count(key['bad_p90'])} "
        f"time_ratio_vs_argo={ratio:.3f} pass_ms_20k={pass_ms:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
