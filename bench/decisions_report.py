"""The tables of `make bench-decisions`: false aborts, platform outages, regressions, clustered
failures, warm-up, shared and late-onset rows, from a run's outcomes.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from bench.decisions_population import (
    BASE_ERROR,
    BURSTS,
    JUDGES,
    LATE,
    LATE_MINUTES,
    PER_SCENARIO,
    PLATFORM_ERROR,
    PLATFORM_MINUTES,
    SHARED_CANARY,
    SHARED_ONSET_S,
    SHARED_STABLE,
    STORM_SIZE,
    STORM_SPEED,
    STORMS_PER_HOUR,
    WARMUP_SLOW,
    Floats,
    Population,
)
from bench.decisions_run import RunResult
from bench.judges import NEVER, wilson
from streams.decisions import Verdict


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
