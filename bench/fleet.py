"""`make bench-fleet`: release-level analysis (issue 13) on a simulated fleet. One seeded run.

A repetition is one release rolled out to `ENVS` environments at once: heavy-tailed traffic
(Pareto, about 80 % of environments at <= 0.2 req/s), canary share 20 %, 0.1 % base error rate,
60 simulated minutes. Counts are Poisson per environment and 10 s pass, vectorised over
repetitions x environments. Judges side by side on the same traffic:

- per-env: `streams.decisions.DecisionEngine` alone, driven with each pass's increments and a
  60 s window (as bench/decisions_run.py drives it, here with 10 s passes and no slow requests);
  an environment it aborts stops serving the canary.
- pooled: the same per-environment aborts, plus the release test of `streams.pooledhalt` (one
  cohort per repetition, fed through `ReleaseEvidence` and `pool`); a halt aborts every
  environment of the release at once. Every abort is triaged (`streams.triage`).
- argo: Argo-style analysis per environment (canary error ratio over 5 minutes, every minute,
  abort at the 4th failure above 0.5 %, as in bench/judges.py), its aborts triaged too.

False halts of healthy releases need >= 1,000 repetitions: that scenario runs the release test
alone (no per-environment engine), with 60 s passes, in chunks.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bench import pooledpass
from bench.judges import NEVER, wilson
from streams.decisions import DecisionEngine, DecisionSettings
from streams.pooledhalt import FleetArrays, Scratch, pool
from streams.release import ReleaseSettings, Triage
from streams.releaseevidence import ReleaseEvidence
from streams.triage import TRIAGE_ORDER, triage
from streams.windows import (
    CANARY_ERRORS,
    CANARY_REQUESTS,
    N_SERIES,
    STABLE_ERRORS,
    STABLE_REQUESTS,
)

SEED = 20261201
ENVS = 2_000
MINUTES = 60
DT = 10.0  # seconds per pass
SHARE = 0.20
BASE = 0.001
PARETO_MIN, PARETO_SHAPE, RATE_CAP = 0.05, 1.16, 200.0  # P(rate <= 0.2) = 0.80
QUIET = 0.2
REPS = 25  # per scenario with the per-environment engine
HEALTHY_REPS = 1_000
HEALTHY_CHUNK = 100
HEALTHY_DT = 60.0
CUSTOMER_BAD = 5
PLATFORM_SHARE, PLATFORM_ERROR, PLATFORM_MINUTES = 0.10, 0.05, (20, 30)
WINDOW_PASSES = 6  # the engine's 60 s window
TRIAGE_WINDOW_PASSES = 30  # stable's recent window for triage: 5 minutes
ARGO_LIMIT, ARGO_WINDOW, ARGO_FAILURES = 0.005, 5, 3

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

TRUTH = ("release", "environment", "platform", "none")
T_RELEASE, T_ENV, T_PLATFORM, T_NONE = range(4)
CAT_UNDET = TRIAGE_ORDER.index(Triage.UNDETERMINED)
CAT_RELEASE = TRIAGE_ORDER.index(Triage.RELEASE)
# Correct category per truth: release, environment, platform; a false abort: undetermined.
CORRECT = {
    T_RELEASE: TRIAGE_ORDER.index(Triage.RELEASE),
    T_ENV: TRIAGE_ORDER.index(Triage.ENVIRONMENT),
    T_PLATFORM: TRIAGE_ORDER.index(Triage.PLATFORM),
    T_NONE: CAT_UNDET,
}


def rates(rng: np.random.Generator, n: int, quiet_only: bool = False) -> Floats:
    """Requests per second per environment: Pareto(0.05, 1.16) capped; or its quiet part."""
    u = rng.random(n)
    if quiet_only:  # the Pareto conditioned on <= QUIET
        top = 1.0 - (PARETO_MIN / QUIET) ** PARETO_SHAPE
        u = u * top
        return np.asarray(PARETO_MIN * (1.0 - u) ** (-1.0 / PARETO_SHAPE), dtype=np.float64)
    return np.minimum(PARETO_MIN * (1.0 - u) ** (-1.0 / PARETO_SHAPE), RATE_CAP)


@dataclass(slots=True)
class Scenario:
    name: str
    rate: Floats  # [rows]
    canary_error: Floats  # [rows], outside the incident
    truth: NDArray[np.int8]  # [rows]: what an abort of this row should be triaged as
    incident: Bools  # [rows]: both arms fail PLATFORM_ERROR during PLATFORM_MINUTES
    reps: int
    bad_release: bool


def build(name: str, rng: np.random.Generator, reps: int) -> Scenario:
    n = reps * ENVS
    quiet_only = name == "5x quiet"
    rate = rates(rng, n, quiet_only)
    p = np.full(n, BASE)
    truth = np.full(n, T_NONE, dtype=np.int8)
    incident = np.zeros(n, dtype=np.bool_)
    bad_release = name in ("2x", "5x", "broken", "5x quiet")
    if name in ("2x", "5x", "5x quiet"):
        p[:] = BASE * (2 if name == "2x" else 5)
    elif name == "broken":
        p[:] = 0.10
    if bad_release:
        truth[:] = T_RELEASE
    if name == "customer":
        for r in range(reps):
            bad = r * ENVS + rng.choice(ENVS, CUSTOMER_BAD, replace=False)
            p[bad] = 0.10
            truth[bad] = T_ENV
    if name == "platform":
        incident = rng.random(n) < PLATFORM_SHARE
    return Scenario(name, rate, p, truth, incident, reps, bad_release)


@dataclass(slots=True)
class Result:
    name: str
    reps: int
    halt_s: Floats  # [rep]
    env_abort_s: Floats  # [rows] per-env engine
    argo_abort_s: Floats  # [rows]
    truth: NDArray[np.int8]
    cat_cw: NDArray[np.int8]  # [rows] final triage of canarywatch's aborts (-1: not aborted)
    cat_argo: NDArray[np.int8]
    cat_cw_at_abort: NDArray[np.int8]
    incident: Bools
    seconds: float
    release_ms: list[float] = field(default_factory=list)

    @property
    def pooled_abort_s(self) -> Floats:
        halt = np.repeat(self.halt_s, ENVS)
        return np.minimum(self.env_abort_s, halt)


def run(sc: Scenario, rng: np.random.Generator, rs: ReleaseSettings) -> Result:
    began = time.perf_counter()
    n, reps = sc.rate.size, sc.reps
    ds = DecisionSettings()
    engine = DecisionEngine(ds, n)
    engine.reset(np.arange(n), 0.0)
    ev = ReleaseEvidence(n, rs, signals=1)
    cohort = np.repeat(np.arange(reps), ENVS).astype(np.intp)
    lam_c = sc.rate * SHARE * DT
    lam_s = sc.rate * (1.0 - SHARE) * DT
    passes = int(MINUTES * 60 / DT)
    per_minute = int(60 / DT)
    ring = np.zeros((TRIAGE_WINDOW_PASSES, 4, n), dtype=np.int32)
    inc = np.zeros((N_SERIES, n), dtype=np.int64)
    window = np.zeros((N_SERIES, n), dtype=np.int64)
    cum = np.zeros((4, n), dtype=np.int64)  # canary req, canary bad, stable req, stable bad
    active = np.ones(n, dtype=np.bool_)  # the per-env engine has not aborted
    env_abort = np.full(n, NEVER)
    halt = np.full(reps, NEVER)
    halted = np.zeros(reps, dtype=np.bool_)
    argo_abort = np.full(n, NEVER)
    argo_fail = np.zeros(n, dtype=np.int64)
    argo_ring = np.zeros((ARGO_WINDOW, 2, n), dtype=np.int64)
    minute_acc = np.zeros((2, n), dtype=np.int64)
    cat_cw = np.full(n, -1, dtype=np.int8)
    cat_cw0 = np.full(n, -1, dtype=np.int8)
    cat_argo = np.full(n, -1, dtype=np.int8)
    log_e = np.zeros((1, n))
    release_ms: list[float] = []
    scratch = Scratch()
    for i in range(passes):
        now = (i + 1) * DT
        minute = i // per_minute
        outage = sc.incident & (PLATFORM_MINUTES[0] <= minute < PLATFORM_MINUTES[1])
        p_c = np.where(outage, PLATFORM_ERROR, sc.canary_error)
        p_s = np.where(outage, PLATFORM_ERROR, BASE)
        x_c = rng.poisson(lam_c * p_c)
        x_s = rng.poisson(lam_s * p_s)
        n_c = rng.poisson(lam_c * (1.0 - p_c)) + x_c
        n_s = rng.poisson(lam_s * (1.0 - p_s)) + x_s
        # Argo sees every canary request until it aborts (independent of the other judges).
        minute_acc[0] += n_c
        minute_acc[1] += x_c
        # The per-env engine and the release test see the canary until it is aborted.
        live = active
        n_c_l, x_c_l = n_c * live, x_c * live
        n_s_l, x_s_l = n_s * live, x_s * live
        inc[CANARY_REQUESTS], inc[CANARY_ERRORS] = n_c_l, x_c_l
        inc[STABLE_REQUESTS], inc[STABLE_ERRORS] = n_s_l, x_s_l
        slot = i % TRIAGE_WINDOW_PASSES
        old = ring[slot]
        ring[slot] = (n_c_l, x_c_l, n_s_l, x_s_l)
        e_slot = (i - WINDOW_PASSES) % TRIAGE_WINDOW_PASSES
        window[CANARY_REQUESTS] += n_c_l
        window[CANARY_ERRORS] += x_c_l
        window[STABLE_REQUESTS] += n_s_l
        window[STABLE_ERRORS] += x_s_l
        if i >= WINDOW_PASSES:
            gone = ring[e_slot] if WINDOW_PASSES < TRIAGE_WINDOW_PASSES else old
            window[CANARY_REQUESTS] -= gone[0]
            window[CANARY_ERRORS] -= gone[1]
            window[STABLE_REQUESTS] -= gone[2]
            window[STABLE_ERRORS] -= gone[3]
        cum += (n_c_l, x_c_l, n_s_l, x_s_l)
        result = engine.evaluate(inc, window, active, now)
        new = np.flatnonzero(engine.aborted[0] & active)
        if new.size:
            env_abort[new] = now
            active[new] = False
        ev.update(n_c_l, n_s_l, x_c_l[None, :], x_s_l[None, :])
        log_e[0] = np.where(engine.aborted[0], ds.threshold, result.statistic[0])
        recent = ring.sum(axis=0, dtype=np.int64)
        fleet = FleetArrays(
            loglik=ev.loglik,
            stable_sum=ev.stable_sum,
            share_sum=ev.share_sum,
            log_e=log_e,
            canary_requests=cum[0],
            stable_requests=cum[2],
            canary_bad=cum[1:2],
            stable_bad=cum[3:4],
            window_stable_requests=recent[2],
            window_stable_bad=recent[3:4],
            cohort=cohort,
            aborted=~active,
        )
        t0 = time.perf_counter()
        pooled = pool(fleet, reps, rs, scratch, halted)
        release_ms.append((time.perf_counter() - t0) * 1e3)
        newly = pooled.crossed & ~halted
        halt[newly] = now
        halted |= newly
        # Argo: every minute, the canary's error ratio over the last 5 minutes.
        argo_new = np.zeros(0, dtype=np.intp)
        if (i + 1) % per_minute == 0:
            m = (i + 1) // per_minute
            argo_ring[m % ARGO_WINDOW] = minute_acc
            minute_acc[:] = 0
            w = argo_ring.sum(axis=0)
            failed = (w[0] > 0) & (w[1] > ARGO_LIMIT * w[0])
            argo_fail += failed
            argo_new = np.flatnonzero((argo_fail > ARGO_FAILURES) & ~np.isfinite(argo_abort))
            argo_abort[argo_new] = now
        # Triage: new aborts, undetermined ones again, and release halts override.
        halted_rows = np.repeat(halted, ENVS)
        for cat, aborted_mask, first in (
            (cat_cw, ~active | halted_rows, cat_cw0),
            (cat_argo, np.isfinite(argo_abort), None),
        ):
            todo = np.flatnonzero(aborted_mask & ((cat < 0) | (cat == CAT_UNDET)))
            if todo.size:
                c, _ = triage(fleet, pooled, halted, todo.astype(np.intp), rs, cat[todo] < 0)
                cat[todo] = c
                if first is not None:
                    fresh = todo[first[todo] < 0]
                    first[fresh] = cat[fresh]
            released = np.flatnonzero(aborted_mask & halted_rows & (cat != CAT_RELEASE))
            cat[released] = CAT_RELEASE
        del argo_new
    return Result(
        sc.name,
        reps,
        halt,
        env_abort,
        argo_abort,
        sc.truth,
        cat_cw,
        cat_argo,
        cat_cw0,
        sc.incident,
        time.perf_counter() - began,
        release_ms,
    )


def healthy_false_halts(
    rng: np.random.Generator, rs: ReleaseSettings, reps: int
) -> tuple[int, int, float]:
    """Healthy releases, release test alone, 60 s passes: how many ever halt."""
    began = time.perf_counter()
    halts = 0
    done = 0
    while done < reps:
        r = min(HEALTHY_CHUNK, reps - done)
        n = r * ENVS
        rate = rates(rng, n)
        ev = ReleaseEvidence(n, rs, signals=1)
        cohort = np.repeat(np.arange(r), ENVS).astype(np.intp)
        lam_c = rate * SHARE * HEALTHY_DT
        lam_s = rate * (1 - SHARE) * HEALTHY_DT
        cum = np.zeros((4, n), dtype=np.int64)
        zeros1 = np.zeros((1, n), dtype=np.int64)
        halted = np.zeros(r, dtype=np.bool_)
        scratch = Scratch()
        for _ in range(int(MINUTES * 60 / HEALTHY_DT)):
            x_c = rng.poisson(lam_c * BASE)
            x_s = rng.poisson(lam_s * BASE)
            n_c = rng.poisson(lam_c * (1 - BASE)) + x_c
            n_s = rng.poisson(lam_s * (1 - BASE)) + x_s
            ev.update(n_c, n_s, x_c[None, :], x_s[None, :])
            cum += (n_c, x_c, n_s, x_s)
            fleet = FleetArrays(
                ev.loglik,
                ev.stable_sum,
                ev.share_sum,
                np.zeros((1, n)),
                cum[0],
                cum[2],
                cum[1:2],
                cum[3:4],
                zeros1[0],
                zeros1,
                cohort,
                np.zeros(n, dtype=np.bool_),
            )
            halted |= pool(fleet, r, rs, scratch).crossed
        halts += int(halted.sum())
        done += r
    return halts, reps, time.perf_counter() - began


def time_release_pass(
    rng: np.random.Generator, rs: ReleaseSettings
) -> tuple[float, float, float, float]:
    """Median ms of one release pass (pool + triage of the aborted) over 20,000 environments
    in 100 releases, two signals, with realistic evidence (some releases crossing)."""
    n, releases, sig = 20_000, 100, 2
    ev = ReleaseEvidence(n, rs, signals=sig)
    rate = rates(rng, n)
    p = np.where(np.arange(n) % releases < 3, 5 * BASE, BASE)  # 3 bad releases of 100
    for _ in range(30):
        lam_c, lam_s = rate * SHARE * 60, rate * (1 - SHARE) * 60
        x_c = rng.poisson(np.stack([lam_c * p, lam_c * 0.02]))
        x_s = rng.poisson(np.stack([lam_s * BASE, lam_s * 0.02]))
        ev.update(rng.poisson(lam_c) + x_c[0], rng.poisson(lam_s) + x_s[0], x_c, x_s)
    cohort = (np.arange(n) % releases).astype(np.intp)
    aborted = rng.random(n) < 0.01
    counts = rng.poisson(100, (4, n)).astype(np.int64)
    fleet = FleetArrays(
        ev.loglik,
        ev.stable_sum,
        ev.share_sum,
        rng.normal(0, 2, (sig, n)),
        counts[0],
        counts[1],
        counts[2:4],
        counts[2:4] // 2,
        counts[0] // 4,
        counts[2:4] // 8,
        cohort,
        aborted,
    )
    halted = np.zeros(releases, dtype=np.bool_)
    rows = np.flatnonzero(aborted).astype(np.intp)
    scratch = Scratch()
    times = []
    cpu = []
    crossed = 0
    for _ in range(300):
        t0, c0 = time.perf_counter(), time.thread_time()
        pooled = pool(fleet, releases, rs, scratch)
        triage(fleet, pooled, halted, rows, rs)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
        crossed = int(pooled.crossed.sum())
    return float(np.median(times)), float(np.median(cpu)), float(np.min(times)), float(crossed)


# --- reporting ----------------------------------------------------------------------------------


def q(values: Floats, p: float) -> float:
    return float(np.quantile(values, p, method="inverted_cdf"))


def fmt_s(x: float) -> str:
    if not math.isfinite(x):
        return "never"
    x = round(x)
    return f"{x // 60}m{x % 60:02d}s" if x >= 60 else f"{x}s"


def median_interval(values: Floats) -> tuple[float, float]:
    """95 % distribution-free interval for the median (order statistics)."""
    v = np.sort(values)
    k = v.size
    half = 1.96 * math.sqrt(k) / 2
    lo = max(0, math.floor(k / 2 - half))
    hi = min(k - 1, math.ceil(k / 2 + half))
    return float(v[lo]), float(v[hi])


def exposure_min(abort_s: Floats) -> float:
    return float(np.minimum(abort_s, MINUTES * 60.0).sum() / 60.0)


def main() -> int:
    began = time.perf_counter()
    rng = np.random.default_rng(SEED)
    rs = ReleaseSettings()
    print(
        f"fleet-bench: seed {SEED}, {ENVS} environments per release, {MINUTES} min, {DT:.0f} s "
        f"passes, canary share {SHARE:.0%}, base error {BASE:.1%}; release alpha {rs.alpha} "
        f"(halt at ln E >= {rs.threshold:.2f}, {rs.pooling.value}, at most {rs.env_cap:g} nat "
        f"per environment, blocks of {rs.block_requests} requests)"
    )
    r0 = rates(rng, 100_000)
    print(
        f"traffic: {np.mean(r0 <= QUIET):.0%} of environments at <= {QUIET} req/s, median "
        f"{np.median(r0):.2f}, mean {r0.mean():.2f}, p99 {np.quantile(r0, 0.99):.1f} req/s"
    )
    results: dict[str, Result] = {}
    for name in ("2x", "5x", "broken", "5x quiet", "customer", "platform", "healthy"):
        sc = build(name, rng, REPS)
        results[name] = run(sc, rng, rs)
        print(f"  simulated {name}: {sc.reps} releases in {results[name].seconds:.0f} s")
    halts, healthy_n, healthy_s = healthy_false_halts(rng, rs, HEALTHY_REPS)
    print(f"  simulated {healthy_n} healthy releases (release test alone) in {healthy_s:.0f} s")
    pass_ms, pass_cpu_ms, pass_min_ms, crossed = time_release_pass(rng, rs)

    print(
        "\nTime from release start to fleet-wide halt (every environment of the release "
        "aborted), median [95% interval] / p90, and halts per release"
    )
    print(
        f"{'scenario':<10} {'pooled halt':>26} {'p90':>8} {'halted':>7}  "
        f"{'per-env: all aborted':>20} {'argo: all aborted':>18}"
    )
    for name, res in results.items():
        h = res.halt_s
        lo, hi = median_interval(h)
        env_all = res.env_abort_s.reshape(res.reps, ENVS).max(axis=1)
        argo_all = res.argo_abort_s.reshape(res.reps, ENVS).max(axis=1)
        print(
            f"{name:<10} {fmt_s(q(h, 0.5)):>10} [{fmt_s(lo)}, {fmt_s(hi)}]".ljust(38)
            + f"{fmt_s(q(h, 0.9)):>8} {np.isfinite(h).mean():>7.2f}  "
            f"{fmt_s(q(env_all, 0.5)):>20} {fmt_s(q(argo_all, 0.5)):>18}"
        )

    print(
        "\nBad release: environment-minutes of canary traffic served before the abort "
        "(sum over the release's environments, mean per release), share of environments "
        "aborted by 60 min"
    )
    print(
        f"{'scenario':<10} {'per-env':>10} {'pooled':>10} {'argo':>10} {'pooled/per-env':>15}"
        f" {'aborted per-env/pooled/argo':>30}"
    )
    num = den = 0.0
    for name in ("2x", "5x", "broken", "5x quiet"):
        res = results[name]
        e_env = exposure_min(res.env_abort_s) / res.reps
        e_pool = exposure_min(res.pooled_abort_s) / res.reps
        e_argo = exposure_min(res.argo_abort_s) / res.reps
        if name != "5x quiet":
            num += e_pool
            den += e_env
        shares = "/".join(
            f"{np.isfinite(a).mean():.2f}"
            for a in (res.env_abort_s, res.pooled_abort_s, res.argo_abort_s)
        )
        print(
            f"{name:<10} {e_env:>10.0f} {e_pool:>10.0f} {e_argo:>10.0f} "
            f"{e_pool / e_env:>15.3f} {shares:>30}"
        )
    exposure_ratio = num / den if den else math.inf
    print(f"over 2x/5x/broken: pooled / per-env = {exposure_ratio:.3f}")

    print("\nTriage of every abort against the simulated truth (rows: truth; columns: triage)")
    cats = [c.value for c in TRIAGE_ORDER]
    accuracy = {}
    for judge in ("canarywatch", "canarywatch at abort", "per-env test's own aborts", "argo"):
        matrix = np.zeros((4, len(cats)), dtype=np.int64)
        for res in results.values():
            cat = {
                "canarywatch": res.cat_cw,
                "canarywatch at abort": res.cat_cw_at_abort,
                "per-env test's own aborts": res.cat_cw,
                "argo": res.cat_argo,
            }[judge]
            aborted = cat >= 0
            if judge == "per-env test's own aborts":  # before any halt: not the fan-out
                aborted &= res.env_abort_s < np.repeat(res.halt_s, ENVS)
            truth = res.truth.copy()
            when = res.argo_abort_s if judge == "argo" else res.pooled_abort_s
            # Incident environments: aborts from the incident on are the platform's doing.
            truth[res.incident & (when > PLATFORM_MINUTES[0] * 60)] = T_PLATFORM
            np.add.at(matrix, (truth[aborted], cat[aborted]), 1)
        correct = sum(int(matrix[t, CORRECT[t]]) for t in range(4))
        total = int(matrix.sum())
        accuracy[judge] = correct / total if total else 1.0
        print(
            f"{judge} ({total} aborts, correct {accuracy[judge]:.4f}; a false abort is "
            "correct as undetermined)"
        )
        print(f"  {'truth':<12}" + "".join(f"{c:>14}" for c in cats))
        for t in range(4):
            print(f"  {TRUTH[t]:<12}" + "".join(f"{int(x):>14}" for x in matrix[t]))

    lo, hi = wilson(halts, healthy_n)
    false_rate = halts / healthy_n
    cust = results["customer"]
    plat = results["platform"]
    print(
        f"\nFalse halts: healthy releases {halts} of {healthy_n} = {false_rate:.4f} "
        f"[{lo:.4f}, {hi:.4f}] (95 % Wilson); with {CUSTOMER_BAD} bad customer environments "
        f"{int(np.isfinite(cust.halt_s).sum())} of {cust.reps}; platform incident "
        f"{int(np.isfinite(plat.halt_s).sum())} of {plat.reps}; healthy (engine run) "
        f"{int(np.isfinite(results['healthy'].halt_s).sum())} of {results['healthy'].reps}"
    )
    for name in ("customer", "platform", "healthy"):
        res = results[name]
        print(
            f"{name}: per-env aborts {int(np.isfinite(res.env_abort_s).sum())}, argo aborts "
            f"{int(np.isfinite(res.argo_abort_s).sum())} over {res.reps * ENVS} environments"
        )
    print(
        f"Release pass over 20,000 environments (100 releases, 2 signals, pool + triage): "
        f"{pass_ms:.2f} ms median wall clock, {pass_cpu_ms:.2f} ms median thread CPU time, "
        f"fastest {pass_min_ms:.2f} ms ({crossed:.0f} releases crossing; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); in the simulation, a pass "
        f"over {REPS * ENVS} rows took {np.median(results['5x'].release_ms):.2f} ms median"
    )
    quiet = results["5x quiet"].halt_s
    print("\nRelease-level pass (bench.pooledpass, its own seed):")
    pooled_pass = pooledpass.report()
    print(
        f"pooled pass: time_to_pass_quiet_pooled_s={pooled_pass.time_to_pass_quiet_pooled_s:.0f} "
        f"wrong_pass_rate_pooled_2x={pooled_pass.wrong_pass_rate_pooled_2x:.4f}"
    )
    print(f"bench took {time.perf_counter() - began:.0f} s")
    print(
        f"fleet-bench: halt_s_5x_quiet={q(quiet, 0.5):.0f} exposure_ratio={exposure_ratio:.3f} "
        f"triage_accuracy={accuracy['canarywatch']:.3f} false_halt_rate={false_rate:.4f} "
        f"release_pass_ms_20k={pass_ms:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
