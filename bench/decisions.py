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

`pass` rows: `bench.promotion.report` (the code of `make bench-pass`, its own seed), limited to
the healthy busy/quiet rows and the goal's 1.5x and 2x-the-tolerance rows; the last line gains
`time_to_pass_busy_s` and `wrong_pass_rate` from it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from bench import promotion
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


# Traffic shaped like production's (issue 11). Bursts replace independent errors on both arms
# at the same mean rate: a burst starts per request with probability base/mean size, on the arm
# that served it, and its bad requests (retries: extra requests) come at `speed` per second.
BURSTS: dict[str, tuple[int, int, int]] = {  # name: (min size, max size, per second)
    "bursts 2-5": (2, 5, 5),
    "bursts 5-50": (5, 50, 10),
}
# Sticky retry storms, on top of the base: a client retrying at once, 20 retries in 2 s.
STORM_SIZE, STORM_SPEED, STORMS_PER_HOUR = 20, 10, 2
CLUSTERED = 2_000  # healthy canaries per clustered row
WARMUP = 2_000  # healthy canaries per warm-up row
WARMUP_SLOW = 0.30
SHARED = 1_000
SHARED_CANARY, SHARED_STABLE, SHARED_ONSET_S = 0.10, 0.07, 300
BUSY_BASE = 0.02  # a busy service's high error base rate
LATE = 2_000  # late-onset 10x regressions (and as many from the start), busy, 5 % share
LATE_ONSET_S = 3600
LATE_MINUTES = 90


@dataclass(frozen=True, slots=True)
class Group:
    kind: str  # healthy | clustered | regression | platform | warmup | shared | late
    env: str
    regression: str
    share: float  # 0 for the stepped schedule
    rows: slice
    base: float = BASE_ERROR


@dataclass(slots=True)
class Population:
    rps: Floats
    shares: Floats  # [rows, 3]: share per 20-minute step
    canary_error: Floats  # from `onset` on
    platform: NDArray[np.bool_]
    groups: list[Group]
    base: Floats  # both arms' error rate before the onset (stable's throughout)
    stable_after: Floats  # stable's error rate from the onset on
    onset: Floats  # seconds after the canary's start
    burst: NDArray[np.int64]  # 0 none, 1 + index in BURSTS, len(BURSTS) + 1 storms
    warmup: Floats  # seconds of WARMUP_SLOW after each step's start (new pods)
    canary_slow: Floats
    storm_speed: NDArray[np.int64]
    minutes: int = MINUTES

    @property
    def size(self) -> int:
        return int(self.rps.size)


def _population(groups_spec: list[dict[str, object]], minutes: int) -> Population:
    cols: dict[str, list[Floats]] = {
        k: []
        for k in (
            "rps",
            "shares",
            "error",
            "platform",
            "base",
            "after",
            "onset",
            "burst",
            "warmup",
            "slow",
            "storm_speed",
        )
    }
    groups: list[Group] = []
    start = 0
    for spec in groups_spec:
        n = int(spec["n"])  # type: ignore[call-overload]
        share = float(spec.get("share", 0.0))  # type: ignore[arg-type]
        base = float(spec.get("base", BASE_ERROR))  # type: ignore[arg-type]
        kind = str(spec["kind"])
        cols["rps"].append(np.full(n, float(spec["rps"])))  # type: ignore[arg-type]
        cols["shares"].append(np.tile(np.asarray(STEPS if share == 0 else (share,) * 3), (n, 1)))
        cols["error"].append(np.full(n, float(spec.get("p", base))))  # type: ignore[arg-type]
        cols["platform"].append(np.full(n, float(kind == "platform")))
        cols["base"].append(np.full(n, base))
        cols["after"].append(np.full(n, float(spec.get("stable_after", base))))  # type: ignore[arg-type]
        cols["onset"].append(np.full(n, float(spec.get("onset", 0.0))))  # type: ignore[arg-type]
        cols["burst"].append(np.full(n, float(spec.get("burst", 0))))  # type: ignore[arg-type]
        cols["warmup"].append(np.full(n, float(spec.get("warmup", 0.0))))  # type: ignore[arg-type]
        cols["slow"].append(np.full(n, float(spec.get("slow", SLOW))))  # type: ignore[arg-type]
        speed = float(spec.get("storm_speed", STORM_SPEED))  # type: ignore[arg-type]
        cols["storm_speed"].append(np.full(n, speed))
        groups.append(
            Group(
                kind,
                str(spec["env"]),
                str(spec.get("regression", "none")),
                share,
                slice(start, start + n),
                base,
            )
        )
        start += n
    c = {k: np.concatenate(v) for k, v in cols.items()}
    return Population(
        rps=c["rps"],
        shares=c["shares"],
        canary_error=c["error"],
        platform=c["platform"] > 0,
        groups=groups,
        base=c["base"],
        stable_after=c["after"],
        onset=c["onset"],
        burst=c["burst"].astype(np.int64),
        warmup=c["warmup"],
        canary_slow=c["slow"],
        storm_speed=c["storm_speed"].astype(np.int64),
        minutes=minutes,
    )


def build_population() -> Population:
    spec: list[dict[str, object]] = []
    for env, rate in ENVS:
        spec.append(dict(kind="healthy", env=env, n=HEALTHY // 2, rps=rate))
    for env, rate in ENVS:
        for name, p in REGRESSIONS:
            for share in SHARES:
                spec.append(
                    dict(
                        kind="regression",
                        env=env,
                        regression=name,
                        share=share,
                        n=PER_SCENARIO,
                        rps=rate,
                        p=p,
                    )
                )
    for env, rate in ENVS:
        spec.append(dict(kind="platform", env=env, n=PLATFORM, rps=rate))
    # New rows (issue 11).
    for i, name in enumerate(BURSTS):
        spec.append(
            dict(
                kind="clustered",
                env="busy",
                regression=name,
                n=CLUSTERED,
                rps=BUSY_RPS,
                burst=i + 1,
            )
        )
    spec.append(
        dict(
            kind="clustered",
            env="busy",
            regression="retry storms",
            n=CLUSTERED,
            rps=BUSY_RPS,
            burst=len(BURSTS) + 1,
        )
    )
    for base, ratio in ((BASE_ERROR, 1.5), (BUSY_BASE, 1.5), (BUSY_BASE, 2.0)):
        spec.append(
            dict(
                kind="regression",
                env="busy",
                regression=f"{ratio:g}x",
                share=0.2,
                n=PER_SCENARIO,
                rps=BUSY_RPS,
                p=ratio * base,
                base=base,
            )
        )
    for seconds in (10.0, 60.0):
        spec.append(
            dict(
                kind="warmup",
                env="busy",
                regression=f"{seconds:.0f}s warm-up",
                n=WARMUP,
                rps=BUSY_RPS,
                warmup=seconds,
            )
        )
    spec.append(
        dict(
            kind="warmup",
            env="busy",
            regression="stays slow",
            n=PER_SCENARIO,
            rps=BUSY_RPS,
            slow=WARMUP_SLOW,
        )
    )
    spec.append(
        dict(
            kind="shared",
            env="busy",
            regression="shared",
            share=0.2,
            n=SHARED,
            rps=BUSY_RPS,
            p=SHARED_CANARY,
            stable_after=SHARED_STABLE,
            onset=SHARED_ONSET_S,
        )
    )
    return _population(spec, MINUTES)


def build_late_population() -> Population:
    spec: list[dict[str, object]] = [
        dict(
            kind="late",
            env="busy",
            regression="10x at 60 min",
            share=0.05,
            n=LATE,
            rps=BUSY_RPS,
            p=10 * BASE_ERROR,
            onset=LATE_ONSET_S,
        ),
        dict(
            kind="late",
            env="busy",
            regression="10x from start",
            share=0.05,
            n=LATE,
            rps=BUSY_RPS,
            p=10 * BASE_ERROR,
        ),
    ]
    return _population(spec, LATE_MINUTES)


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
        "\nRegressions of a base error rate (broken: the canary fails 10 %), "
        f"{PER_SCENARIO} canaries each, 60 min; bad = the canary's 5xx before the abort"
    )
    header = (
        f"{'env':<6} {'base':>5} {'regr':<7} {'share':>5}  {'judge':<12} {'detect':>6} "
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
            key = g.regression if g.base == BASE_ERROR else f"{g.regression}@{g.base:g}"
            table[(g.env, key, g.share, judge)] = row
            label = (
                f"{g.env:<6} {g.base:>5.1%} {g.regression:<7} {g.share:>5.0%}"
                if i == 0
                else " " * 26
            )
            print(
                f"{label}  {judge:<12} {row['detect']:>6.3f} {fmt_count(row['bad_med']):>8} "
                f"{fmt_count(row['bad_p90']):>8} {fmt_time(row['time_med']):>9}"
            )
    return table


def _rate_cell(aborted: NDArray[np.bool_]) -> tuple[str, float]:
    k, n = int(aborted.sum()), int(aborted.size)
    lo, hi = wilson(k, n)
    return f"{k}/{n} {k / n:.4f} [{lo:.4f}, {hi:.4f}]", k / n


def report_clustered(pop: Population, res: RunResult) -> float:
    """Healthy canaries whose errors come in bursts: false aborts per judge, 95 % Wilson."""
    print(
        "\nHealthy canaries, errors clustered on one arm (busy, 0.1 % mean rate, 5 -> 20 -> 50 %"
        f" share, 60 min; bursts {', '.join(BURSTS)}; {STORMS_PER_HOUR} retry storms of "
        f"{STORM_SIZE} an hour at {STORM_SPEED}/s on top): false aborts, rate [95 % interval]"
    )
    worst = 0.0
    for g in pop.groups:
        if g.kind != "clustered":
            continue
        parts = []
        for judge in JUDGES:
            cell, rate = _rate_cell(np.isfinite(res.outcomes[judge].time_s[g.rows]))
            parts.append(f"{judge} {cell}")
            if judge == "canarywatch":
                worst = max(worst, rate)
        print(f"{g.regression:<13} " + "; ".join(parts))
    return worst


def report_warmup(pop: Population, res: RunResult) -> float:
    print(
        f"\nWarm-ups (busy, healthy errors, stepped share; canary {WARMUP_SLOW:.0%} slow for the "
        "first seconds after the start and each step) and a canary that stays slow: canarywatch"
        " aborts (latency signal), rate [95 % interval], median time; other judges read errors"
    )
    w10 = 0.0
    for g in pop.groups:
        if g.kind != "warmup":
            continue
        t = res.outcomes["canarywatch"].time_s[g.rows]
        cell, rate = _rate_cell(np.isfinite(t))
        by_latency = int((res.abort_signal[g.rows] == 1).sum())
        print(
            f"{g.regression:<14} aborted {cell}, by latency {by_latency}, "
            f"median time {fmt_time(quantile(t, 0.5))}"
        )
        if g.regression == "10s warm-up":
            w10 = rate
    return w10


def report_shared(pop: Population, res: RunResult) -> None:
    for g in pop.groups:
        if g.kind != "shared":
            continue
        n = g.rows.stop - g.rows.start
        held = res.hold_time[g.rows]
        held_ok = np.isfinite(held) & (held > SHARED_ONSET_S)
        parts = []
        for judge in JUDGES:
            t = res.outcomes[judge].time_s[g.rows]
            parts.append(f"{judge} {int(np.isfinite(t).sum())}")
        print(
            f"\nShared breakage (busy, 20 % share; from minute {SHARED_ONSET_S // 60} the canary "
            f"fails {SHARED_CANARY:.0%}, stable {SHARED_STABLE:.0%}), {n} canaries: "
            f"canarywatch HOLD (pause requested) for {int(held_ok.sum())}, median "
            f"{fmt_time(quantile(np.where(held_ok, held - SHARED_ONSET_S, NEVER), 0.5))} "
            f"after the onset; aborted by " + ", ".join(parts)
        )
        final = np.bincount(res.final_verdict[g.rows], minlength=len(Verdict))
        print(
            "canarywatch errors verdict at 60 min: "
            + ", ".join(f"{v.name.lower()} {final[v.value]}" for v in Verdict)
        )


def report_late(pop: Population, res: RunResult) -> float:
    print(
        f"\nLate onset (busy, 5 % share, 10x = 1 % errors; {LATE} canaries each, "
        f"{LATE_MINUTES} min): time and canary 5xx from the onset to the abort"
    )
    header = (
        f"{'onset':<16} {'judge':<12} {'detect':>6} {'bad med':>8} {'bad p90':>8} {'time med':>9}"
    )
    print(header)
    print("-" * len(header))
    medians: dict[str, float] = {}
    for g in pop.groups:
        onset = float(pop.onset[g.rows.start])
        for judge in JUDGES:
            o = res.outcomes[judge]
            t = o.time_s[g.rows] - onset
            early = int((t <= 0).sum())
            t = np.where(t > 0, t, NEVER)  # an abort before the onset is a false abort
            b = np.where(np.isfinite(t), o.bad[g.rows], NEVER)
            print(
                f"{g.regression:<16} {judge:<12} {np.isfinite(t).mean():>6.3f} "
                f"{fmt_count(quantile(b, 0.5)):>8} {fmt_count(quantile(b, 0.9)):>8} "
                f"{fmt_time(quantile(t, 0.5)):>9}"
                + (f"  ({early} before the onset)" if early else "")
            )
            if judge == "canarywatch":
                medians[g.regression] = quantile(t, 0.5)
    late, start = medians["10x at 60 min"], medians["10x from start"]
    return late / start if math.isfinite(late) and start > 0 else math.inf


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


def tradeoff(rng: np.random.Generator) -> None:
    """`make bench-decisions-tradeoff`: how long a burst the test absorbs (max_slice_s) against
    how fast it aborts a canary that fails continuously; canarywatch only, smaller samples."""
    n_h, n_r = 1_000, 300
    spec: list[dict[str, object]] = [
        dict(kind="clustered", env="busy", regression="bursts 5-50", n=n_h, rps=BUSY_RPS, burst=2),
        dict(
            kind="clustered",
            env="busy",
            regression="storms 10/s",
            n=n_h,
            rps=BUSY_RPS,
            burst=len(BURSTS) + 1,
        ),
        dict(
            kind="clustered",
            env="busy",
            regression="storms 2/s",
            n=n_h,
            rps=BUSY_RPS,
            burst=len(BURSTS) + 1,
            storm_speed=2,
        ),
    ]
    for share in SHARES:
        spec.append(
            dict(
                kind="regression",
                env="busy",
                regression="broken",
                share=share,
                n=n_r,
                rps=BUSY_RPS,
                p=0.10,
            )
        )
    spec.append(
        dict(
            kind="regression",
            env="busy",
            regression="10x",
            share=0.05,
            n=n_r,
            rps=BUSY_RPS,
            p=10 * BASE_ERROR,
        )
    )
    pop = _population(spec, MINUTES)
    base = DecisionSettings()
    variants = [
        ("slices close every pass (quiet_s 0)", replace(base, quiet_s=0.0, max_slice_s=math.inf)),
        ("max_slice_s 1", replace(base, max_slice_s=1.0)),
        ("max_slice_s 2 (default)", base),
        ("max_slice_s 5", replace(base, max_slice_s=5.0)),
        ("max_slice_s 10", replace(base, max_slice_s=10.0)),
        ("max_slice_s 30", replace(base, max_slice_s=30.0)),
    ]
    print(
        f"\nTrade-off: healthy canaries with bursts ({n_h} each, false-abort rate) against "
        f"continuously failing canaries ({n_r} each, median time to abort; 10x: p90 bad)"
    )
    print(
        "| variant | bursts 5-50 | storms 10/s | storms 2/s | broken 5% | broken 20% | "
        "broken 50% | 10x 5% p90 bad |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, settings in variants:
        res = run(pop, rng, settings, judges=False)
        t = res.outcomes["canarywatch"].time_s
        b = res.outcomes["canarywatch"].bad
        cells = []
        for g in pop.groups:
            if g.kind == "clustered":
                k = int(np.isfinite(t[g.rows]).sum())
                lo, hi = wilson(k, n_h)
                cells.append(f"{k / n_h:.3f} [{lo:.3f}, {hi:.3f}]")
            elif g.regression == "broken":
                cells.append(fmt_time(quantile(t[g.rows], 0.5)))
            else:
                cells.append(fmt_count(quantile(b[g.rows], 0.9)))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


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
    clustered = report_clustered(pop, res)
    table = report_regressions(pop, res)
    warmup = report_warmup(pop, res)
    report_shared(pop, res)
    late_pop = build_late_population()
    late_res = run(late_pop, rng, settings)
    late_ratio = report_late(late_pop, late_res)
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
    print("\npass verdict (bench.promotion, its own seed; the 1.5x and 2x rows):")
    passing = promotion.report(rows=promotion.GOAL_ROWS)
    key = table[("busy", "10x", 0.05, "canarywatch")]
    power = table[("busy", f"1.5x@{BUSY_BASE:g}", 0.2, "canarywatch")]
    cw = table[("busy", "broken", 0.05, "canarywatch")]["time_med"]
    argo = table[("busy", "broken", 0.05, "argo 0.5%")]["time_med"]
    ratio = cw / argo if math.isfinite(argo) and argo > 0 else math.inf
    print(
        f"platform canaries aborted by canarywatch from the outage on: {platform_aborts} "
        f"(before it: {platform_before}); bench took {time.perf_counter() - began:.0f} s"
    )
    print(
        f"decision-bench: false_abort_rate={false_rate:.4f} "
        f"false_abort_rate_clustered={clustered:.4f} detect_rate_10x={key['detect']:.3f} "
        f"p90_bad_canary_requests_10x_5pct={fmt_count(key['bad_p90'])} "
        f"late_onset_delay_ratio={late_ratio:.2f} detect_rate_1_5x={power['detect']:.3f} "
        f"warmup_false_abort_rate={warmup:.4f} "
        f"time_ratio_vs_argo={ratio:.3f} pass_ms_20k={pass_ms:.2f} "
        f"time_to_pass_busy_s={passing.time_to_pass_busy_s:.0f} "
        f"wrong_pass_rate={passing.wrong_pass_rate:.4f}"
    )
    return 0


def pass_timing() -> int:
    """Only the evaluation-pass timing row (for profiling iterations): `--pass-timing`."""
    settings = DecisionSettings()
    pass_ms, base_ms = time_passes(np.random.default_rng(SEED), settings, BASE_ERROR, SLOW)
    print(f"pass_ms_20k={pass_ms:.2f} (plain sum {base_ms:.3f} ms)")
    return 0


if __name__ == "__main__":
    if "--pass-timing" in sys.argv:
        sys.exit(pass_timing())
    if "--tradeoff" in sys.argv:
        tradeoff(np.random.default_rng(SEED))
        sys.exit(0)
    sys.exit(main())
