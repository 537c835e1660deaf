"""`make bench-pass`: how soon a healthy canary passes, and how often a bad one wrongly does.

One seeded run, in process, no Kafka: canaries are the rows of one `PromotionTest` (both signals,
default `PromotionSettings`), fed 1 s passes of Poisson requests with binomial 5xx and slow
requests (0.1 % and 2 % base rates, as `make bench-decisions`), for up to 60 minutes, canary share
20 %. Busy = 100 req/s, quiet = 0.2 req/s.

- healthy canaries (canary = stable): time to `pass` (median, p90) and the share that passed;
- canaries worse than the tolerance: the canary's excess over stable is k x the tolerance's
  (k = 1 is the null's boundary, where beta bounds the wrong passes; k = 1.5 and 2 are the goal's
  rows), on the errors or the slow-request signal; the share that ever passed in 60 minutes,
  with a 95 % Wilson interval.

Last line: `pass-bench: time_to_pass_busy_s=T wrong_pass_rate=W` (T: median for healthy busy
canaries; W: the largest wrong-pass share of the 1.5x and 2x rows).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from bench.judges import wilson
from streams.promotion import PromotionSettings, PromotionTest, eta_seconds

SEED = 20261201
BASE = (0.001, 0.02)  # errors, slow requests
SHARE = 0.2
MINUTES = 60


@dataclass(frozen=True, slots=True)
class Scenario:
    label: str
    rate: float  # requests per second
    excess: tuple[float, float] = (0.0, 0.0)  # k x the tolerance's excess, per signal
    runs: int = 2000


def canary_rates(settings: PromotionSettings, excess: tuple[float, float]) -> tuple[float, float]:
    out = []
    for (tol_ratio, tol_diff), base, k in zip(settings.tolerances(), BASE, excess, strict=True):
        out.append(base + k * max((tol_ratio - 1.0) * base, tol_diff))
    return out[0], out[1]


def run(scenario: Scenario, settings: PromotionSettings, rng: np.random.Generator) -> np.ndarray:
    """Seconds to the first pass per canary (inf: never within the hour)."""
    tolerances = settings.tolerances()
    test = PromotionTest(
        scenario.runs,
        [t[0] for t in tolerances],
        [t[1] for t in tolerances],
        beta=settings.beta,
        block_requests=settings.block_requests,
    )
    p_canary = canary_rates(settings, scenario.excess)
    first = np.full(scenario.runs, np.inf)
    for second in range(1, MINUTES * 60 + 1):
        n = rng.poisson(scenario.rate, scenario.runs)
        n_c = rng.binomial(n, SHARE)
        n_s = n - n_c
        x_c = np.stack([rng.binomial(n_c, p) for p in p_canary])
        x_s = np.stack([rng.binomial(n_s, p) for p in BASE])
        test.update(n_c, n_s, x_c, x_s)
        passed = test.passed.all(axis=0)
        first[passed & ~np.isfinite(first)] = second
        if passed.all():
            break
    return first


def fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


ALL_ROWS = (
    (1.0, 0, 100.0),
    (1.5, 0, 100.0),
    (2.0, 0, 100.0),
    (1.0, 1, 100.0),
    (1.5, 1, 100.0),
    (2.0, 1, 100.0),
    (1.5, 0, 0.2),
)
# The goal's rows only (1.5x and 2x the tolerance, busy): what `make bench-decisions` runs.
GOAL_ROWS = tuple(row for row in ALL_ROWS if row[0] >= 1.5 and row[2] == 100.0)


@dataclass(frozen=True, slots=True)
class PassFigures:
    time_to_pass_busy_s: float
    wrong_pass_rate: float


def report(
    runs: int = 2000,
    rows: tuple[tuple[float, int, float], ...] = ALL_ROWS,
    seed: int = SEED,
) -> PassFigures:
    """Print the pass tables (healthy busy/quiet, worse-than-tolerance rows); return the figures."""
    settings = PromotionSettings()
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    print(
        f"pass bench: beta {settings.beta}, tolerance errors {settings.tol_ratio}x or "
        f"+{settings.tol_diff * 100:g} points, slow {settings.latency_tol_ratio}x or "
        f"+{settings.latency_tol_diff * 100:g} points; share {SHARE:.0%}, base 0.1 % 5xx and "
        f"2 % slow, {MINUTES} min, {runs} canaries per row, seed {SEED}"
    )
    print()
    print("| canaries | req/s | passed in 60 min | median time to pass | p90 |")
    print("|---|---|---|---|---|")
    busy_median = math.inf
    for label, rate in (("healthy busy", 100.0), ("healthy quiet", 0.2)):
        first = run(Scenario(label, rate, runs=runs), settings, rng)
        share = float(np.isfinite(first).mean())
        ordered = np.sort(first)  # inf (never) sorts last; no interpolation across it
        median = float(ordered[(ordered.size - 1) // 2])
        p90 = float(ordered[min(ordered.size - 1, math.ceil(0.9 * ordered.size) - 1)])
        if label == "healthy busy":
            busy_median = median
        print(f"| {label} | {rate:g} | {share:.3f} | {fmt_s(median)} | {fmt_s(p90)} |")
    # What the gate tells a quiet canary: a pass would take about this long at its traffic.
    need = settings.threshold + 1.0  # + about a nat for the mixture
    eta = eta_seconds(need, 0.2 * SHARE, BASE[1], SHARE, 1.5, settings.latency_tol_diff)
    print(f"\nquiet: the gate's estimate of the time to a pass at 0.2 req/s: {fmt_s(eta)}")
    print()
    print(
        "| canary worse than tolerance by | signal | req/s | canary rate | wrongly passed | 95 % |"
    )
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for k, signal, rate in rows:
        excess = (k, 0.0) if signal == 0 else (0.0, k)
        scenario = Scenario(f"{k}x", rate, excess, runs=runs)
        first = run(scenario, settings, rng)
        wrong = int(np.isfinite(first).sum())
        low, high = wilson(wrong, runs)
        if k >= 1.5:
            worst = max(worst, wrong / runs)
        p_c = canary_rates(settings, excess)[signal]
        name = ("5xx", "slow")[signal]
        print(
            f"| {k:g}x the tolerance | {name} | {rate:g} | {p_c * 100:.2f} % | "
            f"{wrong}/{runs} = {wrong / runs:.4f} | [{low:.4f}, {high:.4f}] |"
        )
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return PassFigures(busy_median, worst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000, help="canaries per row (>= 2000)")
    args = parser.parse_args(argv)
    figures = report(args.runs)
    print(
        f"pass-bench: time_to_pass_busy_s={figures.time_to_pass_busy_s:.0f} "
        f"wrong_pass_rate={figures.wrong_pass_rate:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
