"""Release-level analysis: one anytime-valid test per release over its whole cohort, a halt
that fans out to every environment of the cohort, triage of every abort, and e-BH.

Pure numpy and dataclasses; time comes in as an argument. docs/decisions.md ("Release-level
analysis") explains the statistics; in short:

**Evidence per environment.** `ReleaseEvidence` is the per-environment side (the worker feeds
it the same increments as the decision engine): blocks of at least `block_requests` requests,
and per closed block the conditional-binomial log likelihood of the canary/stable split of its
bad requests at every ratio of the release grid, against r = 1:

    loglik[g] = sum over blocks of  x_c*ln(r_g) - (x_c + x_s)*ln(1 + rho*(r_g - 1)).

Row 0 holds the null ratio `min_ratio`. These sums are cumulative: a summary replaces the
previous one of the same environment and canary revision (latest wins, never added).

**The pooled test (pooling = product).** For a release with cohort C and a ratio r_g shared by
the whole cohort,

    E_ratio = sum_g w_g * prod_{e in C} min(exp(loglik_e[g] - loglik_e[0]), exp(env_cap)),

is a test supermartingale under "in every environment the canary's bad rate is at most
min_ratio x stable's" when the environments' splits are independent given the request counts
(min(M, C) of a supermartingale M is one too). The difference null (canary <= stable +
min_diff) is pooled the same way with the pseudo-count penalty of `streams.sequential`. A halt
needs both, each >= ln(signals/alpha). The cap (1 nat per environment) keeps a few environments
whose customer code is broken from halting a healthy release: the halt needs about seven
environments' worth of evidence. Optionally (`robust_envs`), per grid ratio the k largest
environment terms are removed first (a lower bound of the statistic of every cohort without
some k environments, so still valid). Stable's own rate never enters: a platform incident that
hits both arms alike does not move the split.

**pooling = average.** E = (1/K) sum_e e_e, the per-environment e-values averaged: valid under
any dependence between environments (Vovk & Wang), much weaker.

**Triage** of every aborted environment: `release` (its release is halted), `platform` (its
stable arm is failing in the recent window, or stable arms fail in many environments at once
and this environment's own evidence does not show a regression), `environment` (its own test
rejects "no worse", and the rest of the cohort rejects "the release is at least fine_ratio x
worse" at level triage_alpha), else `undetermined`.

**e-BH** (fleet_control = "ebh"): per-environment aborts of a release only for the environments
e-BH selects among its cohort at false discovery rate `fdr`, valid under any dependence.

**Modules.** This one holds the settings and the vocabulary (`ReleaseSettings`, `Pooling`,
`FleetControl`, `Triage`); the work is in
- `streams.releaseevidence`: the worker side, `ReleaseEvidence` and `summary_from_rows`;
- `streams.pooledhalt`: the pooled halt test of every release (`pool`), the platform surge,
  e-BH;
- `streams.triage`: the category of every abort;
- `streams.releaserecords`: `EnvSummary`, `ReleaseVerdict`, `TriageRecord` and their codecs;
- `streams.releaseboard`: `ReleaseBoard`, the release agent's core (states and summaries in,
  halts, triage and pooled passes out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# Alternatives of the pooled test. Pooled evidence is plentiful, so small ratios (1.5x, 2x) are
# worth betting on; 3x-8x carry quiet fleets (a few dozen bad requests must suffice there);
# 16x-64x serve broken releases. fine_ratio (2x, triage) must be one of them.
RELEASE_RATIOS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 8.0, 16.0, 64.0)
RELEASE_WEIGHTS: tuple[float, ...] = (0.10, 0.15, 0.20, 0.20, 0.15, 0.10, 0.10)


class Pooling(StrEnum):
    PRODUCT = "product"  # likelihood ratios at a shared ratio, multiplied, then mixed
    AVERAGE = "average"  # per-environment e-values averaged: any dependence


class FleetControl(StrEnum):
    PER_ENV = "per_env"  # every environment's test at its own alpha (per revision)
    EBH = "ebh"  # per-environment aborts only in the e-BH set of the cohort (FDR)


class Triage(StrEnum):
    RELEASE = "release"
    ENVIRONMENT = "environment"
    PLATFORM = "platform"
    UNDETERMINED = "undetermined"


@dataclass(frozen=True, slots=True)
class ReleaseSettings:
    """alpha: probability that a release no worse than stable (by more than the minimum
    regression) in every environment of its cohort is ever halted, all signals together.
    signals: how many signals share alpha (errors, latency: each gets alpha/2).
    min_ratio, min_diff: the minimum regression, as for the per-environment test.
    ratios, weights: the pooled test's alternatives. block_requests: per-environment blocks.
    robust_envs: a halt must stand without the strongest `robust_envs` environments.
    env_cap: no environment adds more than env_cap nats at any ratio (min(LR, e^cap) is still a
        supermartingale), so a halt needs about threshold/env_cap environments' evidence.
    env_threshold: ln e at which an environment's own test aborts (DecisionSettings.threshold).
    fine_ratio, triage_alpha: `environment` needs the rest of the cohort to reject "the release
        is at least fine_ratio x worse" at level triage_alpha.
    platform_*: stable is failing in an environment when its recent-window bad count k
        exceeds platform_drift x its expected count mu (own rate before the window, shrunk to
        the fleet's with platform_prior_requests) with k >= platform_min_bad and the Chernoff
        bound exp(k - mu' + k ln(mu'/k)) <= platform_tail (mu' = drift x mu). A surge: at least
        platform_surge_share of the environments with platform_min_window stable requests in
        the window are failing (and at least platform_surge_min of them).
    """

    alpha: float = 0.01
    signals: int = 2
    min_ratio: float = 1.25
    min_diff: float = 0.0002
    ratios: tuple[float, ...] = RELEASE_RATIOS
    weights: tuple[float, ...] = RELEASE_WEIGHTS
    block_requests: int = 5
    pooling: Pooling = Pooling.PRODUCT
    robust_envs: int = 0
    env_cap: float = 1.0
    fleet_control: FleetControl = FleetControl.PER_ENV
    fdr: float = 0.05
    env_threshold: float = math.log(2 / 0.01)
    fine_ratio: float = 2.0
    triage_alpha: float = 0.01
    platform_drift: float = 2.0
    platform_min_bad: int = 2
    platform_tail: float = 1e-3
    platform_prior_requests: float = 2000.0
    platform_surge_share: float = 0.02
    platform_min_window: int = 200
    platform_surge_min: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0 or not 0.0 < self.fdr < 1.0:
            raise ValueError("alpha and fdr must be in (0, 1)")
        if len(self.ratios) == 0 or len(self.ratios) != len(self.weights):
            raise ValueError("need as many weights as ratios, at least one")
        if any(not r > 1.0 for r in self.ratios) or any(w < 0 for w in self.weights):
            raise ValueError("ratios must be > 1 and weights >= 0")
        if not any(
            w > 0 for r, w in zip(self.ratios, self.weights, strict=True) if r > self.min_ratio
        ):
            raise ValueError("no weighted ratio above min_ratio")
        if self.fine_ratio not in self.ratios:
            raise ValueError("fine_ratio must be one of the ratios")
        if self.min_ratio < 1.0 or self.min_diff < 0.0 or self.robust_envs < 0:
            raise ValueError("min_ratio >= 1, min_diff >= 0, robust_envs >= 0")

    @property
    def threshold(self) -> float:
        """A release halts when ln E reaches this: ln(signals/alpha)."""
        return math.log(self.signals / self.alpha)

    @property
    def grid_rows(self) -> int:
        return len(self.ratios) + 1

    @property
    def fine_row(self) -> int:
        return 1 + self.ratios.index(self.fine_ratio)
