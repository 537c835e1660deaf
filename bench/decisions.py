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

Code: the scenarios in bench/decisions_population.py, the run in bench/decisions_run.py, the
tables in bench/decisions_report.py, the pass timing in bench/decisions_timing.py; this module
runs them (`--tradeoff`, `--pass-timing`: one part only).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace

import numpy as np

from bench import promotion
from bench.decisions_population import (
    BASE_ERROR,
    BURSTS,
    BUSY_BASE,
    BUSY_RPS,
    MINUTES,
    SEED,
    SHARES,
    SLOW,
    build_late_population,
    build_population,
    population_from_spec,
)
from bench.decisions_report import (
    fmt_count,
    fmt_time,
    quantile,
    report_clustered,
    report_healthy,
    report_late,
    report_platform,
    report_regressions,
    report_shared,
    report_warmup,
)
from bench.decisions_run import run
from bench.decisions_timing import granularity_check, time_passes
from bench.judges import wilson
from streams.decisions import DecisionSettings


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
    pop = population_from_spec(spec, MINUTES)
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
