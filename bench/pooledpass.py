"""`make bench-pooled-pass` (also a row of `make bench-fleet`): quiet environments passing on
their release's pooled evidence (issue 17).

One seeded run, in process: releases of `ENVS` quiet environments (0.2 req/s each, canary share
20 %, 0.1 % 5xx and 2 % slow), each environment a `ReleaseEvidence` row fed 10 s passes of
Poisson requests with binomial bad ones, for up to 60 minutes; every pass the pooled pass
(`streams.pooledpass`, default tolerances) is evaluated for every release, and a release's
environment is passed when both signals passed at the release level (the adoption rule's own
objections are applied to each environment's own counts).

- healthy releases (canary = stable): median / p90 time until the release passes, and the
  share of its environments that adopt the pass by 60 minutes (one environment on its own would
  need about a day at 0.2 req/s);
- releases at 2x the tolerance (5xx: stable's + 2 x 0.5 points, 1.1 %): the share of releases
  wrongly passed, with a 95 % Wilson interval (goal <= beta = 0.01).

Last line: `pooled-pass-bench: time_to_pass_quiet_pooled_s=T wrong_pass_rate_pooled_2x=W`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from bench.judges import wilson
from streams.pooledpass import PassRows, PooledPass, PooledPassSettings
from streams.release import ReleaseSettings
from streams.releaseevidence import ReleaseEvidence

SEED = 20261202
ENVS = 100
RATE = 0.2  # requests per second per environment
SHARE = 0.2
BASE = (0.001, 0.02)
MINUTES = 60
DT = 10.0


@dataclass(frozen=True, slots=True)
class Outcome:
    pass_at: np.ndarray  # [release]: seconds until the pooled pass (inf: never)
    adopted: float  # share of environments of passed releases that adopt it (own rule)
    seconds: float


def simulate(
    rng: np.random.Generator,
    releases: int,
    envs: int,
    canary_rates: tuple[float, float],
    settings: PooledPassSettings | None = None,
    minutes: int = MINUTES,
    rate: float = RATE,
    dt: float = DT,
    stable_rates: tuple[float, float] = BASE,
) -> Outcome:
    """Releases x envs quiet environments; when each release first passes both signals."""
    began = time.perf_counter()
    settings = settings or PooledPassSettings()
    rs = ReleaseSettings()
    rows = releases * envs
    ev = ReleaseEvidence(rows, rs, signals=2)
    grid = (rs.min_ratio, *rs.ratios)
    pooled = PooledPass(grid, settings)
    cohort = np.repeat(np.arange(releases, dtype=np.intp), envs)
    counts = np.zeros((4, 2, rows), dtype=np.int64)
    pass_at = np.full(releases, np.inf)
    latched = np.zeros((2, releases), dtype=np.bool_)
    for step in range(int(minutes * 60 / dt)):
        n_c = rng.poisson(rate * dt * SHARE, rows)
        n_s = rng.poisson(rate * dt * (1 - SHARE), rows)
        x_c = np.stack([rng.binomial(n_c, p) for p in canary_rates])
        x_s = np.stack([rng.binomial(n_s, p) for p in stable_rates])
        ev.update(n_c, n_s, x_c, x_s)
        counts[0] += n_c
        counts[1] += n_s
        counts[2] += x_c
        counts[3] += x_s
        data = PassRows(ev.loglik, ev.diff_log, ev.canary_sum, cohort, counts)
        latched |= pooled.passes(data, releases)
        new = latched.all(axis=0) & ~np.isfinite(pass_at)
        pass_at[new] = (step + 1) * dt
    adopted = _adopted(counts, cohort, np.isfinite(pass_at), settings)
    return Outcome(pass_at, adopted, time.perf_counter() - began)


def _adopted(
    counts: np.ndarray, cohort: np.ndarray, passed: np.ndarray, s: PooledPassSettings
) -> float:
    """Share of environments of passed releases with no own objection (`AdoptionRule`'s
    rate rule; the near-abort rule needs the streaming test, not simulated here)."""
    mine = passed[cohort]
    if not mine.any():
        return 0.0
    ok = np.ones(cohort.size, dtype=np.bool_)
    for t, (tol_ratio, tol_diff) in enumerate(s.tolerances):
        stable = counts[3, t] / np.maximum(counts[1, t], 1)
        allowed = np.maximum(tol_ratio * stable, stable + tol_diff)
        rate = counts[2, t] / np.maximum(counts[0, t], 1)
        ok &= ~((counts[2, t] >= 3) & (rate > 2.0 * allowed))
    return float(ok[mine].mean())


def fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


@dataclass(frozen=True, slots=True)
class Summary:
    time_to_pass_quiet_pooled_s: float
    wrong_pass_rate_pooled_2x: float


def report(reps: int = 2000, envs: int = ENVS, seed: int = SEED) -> Summary:
    rng = np.random.default_rng(seed)
    s = PooledPassSettings()
    (_, tol_d), _ = s.tolerances
    print(
        f"pooled pass: releases of {envs} quiet environments ({RATE} req/s, share {SHARE:.0%}, "
        f"0.1 % 5xx, 2 % slow), {MINUTES} min, {DT:.0f} s passes; beta {s.beta}, at most "
        f"{s.env_cap:g} nat per environment; seed {seed}"
    )
    healthy = simulate(rng, 200, envs, BASE)
    t = healthy.pass_at
    med = float(np.median(t)) if np.isfinite(t).mean() >= 0.5 else math.inf
    p90 = float(np.quantile(t, 0.9)) if np.isfinite(t).mean() >= 0.9 else math.inf
    print("\n| releases | environments | passed in 60 min | median time to pass | p90 | adopted |")
    print("|---|---|---|---|---|---|")
    print(
        f"| healthy (200) | {envs} x {RATE} req/s | {np.isfinite(t).mean():.3f} | {fmt(med)} | "
        f"{fmt(p90)} | {healthy.adopted:.3f} |"
    )
    bad_rate = BASE[0] + 2 * tol_d
    wrong = simulate(rng, reps, envs, (bad_rate, BASE[1]))
    k = int(np.isfinite(wrong.pass_at).sum())
    lo, hi = wilson(k, reps)
    print("\n| release worse than tolerance by | signal | canary rate | wrongly passed | 95 % |")
    print("|---|---|---|---|---|")
    print(
        f"| 2x the tolerance ({bad_rate / BASE[0]:.0f}x, +{bad_rate - BASE[0]:.1%}) | 5xx | "
        f"{bad_rate:.2%} | {k}/{reps} = {k / reps:.4f} | [{lo:.4f}, {hi:.4f}] |"
    )
    print(f"(simulated in {healthy.seconds + wrong.seconds:.0f} s)")
    return Summary(med, k / reps)


def main() -> int:
    out = report()
    print(
        f"pooled-pass-bench: time_to_pass_quiet_pooled_s={out.time_to_pass_quiet_pooled_s:.0f} "
        f"wrong_pass_rate_pooled_2x={out.wrong_pass_rate_pooled_2x:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
