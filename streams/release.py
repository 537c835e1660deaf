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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from streams.events import MAX_MESSAGE_BYTES, DecodeError, RolloutState
from streams.pooledpass import (
    PassRows,
    PooledPass,
    PooledPassSettings,
    PooledSignal,
    ReleasePass,
)
from streams.promotion import LAMBDAS

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

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


# --- per-environment evidence (worker side) ---------------------------------------------------


class ReleaseEvidence:
    """Per-row block accumulator of the release grid's log likelihoods, [signal, grid+1, row].

    Blocks close at the end of the first pass that brings them to `block_requests` requests
    (both arms); boundaries depend on request counts only, never on which requests were bad.
    """

    def __init__(self, capacity: int, settings: ReleaseSettings, signals: int = 1) -> None:
        self.settings = settings
        self.signals = signals
        ratios = np.asarray((settings.min_ratio, *settings.ratios), dtype=np.float64)
        self._log_r = np.log(ratios)[:, None]
        self._r_minus_1 = (ratios - 1.0)[:, None]
        self.loglik: Floats = np.zeros((signals, ratios.size, capacity))
        self.stable_sum: Floats = np.zeros(capacity)  # sum of n_s over closed blocks
        self.share_sum: Floats = np.zeros(capacity)  # sum of n_s * rho over closed blocks
        self.block: Ints = np.zeros((2 + 2 * signals, capacity), dtype=np.int64)
        # The release-level pass (streams.pooledpass): the difference test's sums per lambda
        # over the same blocks, and the canary requests of closed blocks.
        lam = np.asarray(LAMBDAS, dtype=np.float64)
        self._lam = lam[:, None]
        self._c = (-np.expm1(-lam))[:, None]
        self.diff_log: Floats = np.zeros((signals, lam.size, capacity))
        self.canary_sum: Floats = np.zeros(capacity)

    @property
    def capacity(self) -> int:
        return int(self.loglik.shape[2])

    def reset(self, rows: NDArray[np.intp]) -> None:
        self.loglik[:, :, rows] = 0.0
        self.diff_log[:, :, rows] = 0.0
        self.canary_sum[rows] = 0.0
        self.stable_sum[rows] = 0.0
        self.share_sum[rows] = 0.0
        self.block[:, rows] = 0

    def update(
        self, canary_requests: Ints, stable_requests: Ints, canary_bad: Ints, stable_bad: Ints
    ) -> None:
        """One pass: requests [rows], bad [signal, rows], all since the previous pass."""
        s = self.signals
        block = self.block
        block[0] += canary_requests
        block[1] += stable_requests
        block[2 : 2 + s] += canary_bad.reshape(s, -1)
        block[2 + s :] += stable_bad.reshape(s, -1)
        closing = np.flatnonzero(block[0] + block[1] >= self.settings.block_requests)
        if closing.size == 0:
            return
        closed = block[:, closing]
        block[:, closing] = 0
        n_c = closed[0].astype(np.float64)
        n_s = closed[1].astype(np.float64)
        total = np.maximum(n_c + n_s, 1.0)
        rho = n_c / total
        self.stable_sum[closing] += n_s
        self.share_sum[closing] += n_s * rho
        self.canary_sum[closing] += n_c
        odds = n_c / np.maximum(n_s, 1.0)
        for t in range(s):
            x_c = closed[2 + t]
            bad = x_c + closed[2 + s + t]
            hit = np.flatnonzero(bad)
            if hit.size == 0:
                continue
            rows = closing[hit]
            step = block_loglik(
                self._log_r,
                self._r_minus_1,
                rho[hit],
                x_c[hit].astype(np.float64),
                bad[hit].astype(np.float64),
            )
            self.loglik[t][:, rows] += step
            x_s = bad[hit] - x_c[hit]
            self.diff_log[t][:, rows] += x_s * np.log1p(self._c * odds[hit]) - self._lam * x_c[hit]


def block_loglik(log_r: Floats, r_minus_1: Floats, rho: Floats, x_c: Floats, bad: Floats) -> Floats:
    """[grid, k]: x_c*ln(r) - bad*ln(1 + rho*(r - 1)) for closed blocks with bad requests."""
    out: Floats = log_r * x_c - bad * np.log1p(r_minus_1 * rho)
    return out


# --- the pooled pass (release agent side) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetArrays:
    """Every environment the release agent knows, as arrays over rows (a row per environment).

    loglik [signal, grid+1, row], cumulative as `ReleaseEvidence` keeps it; stable_sum,
    share_sum [row]; log_e [signal, row]: ln of the environment's own e-value (the smaller of
    its ratio and difference tests: `SplitTest.log_e`); counts since the canary started and in
    the recent window; cohort [row]: index of the row's release (-1: none); aborted [row]: the
    canary was aborted (by anyone); stable_failing needs the window counts.
    """

    loglik: Floats
    stable_sum: Floats
    share_sum: Floats
    log_e: Floats
    canary_requests: Ints
    stable_requests: Ints
    canary_bad: Ints  # [signal, row]
    stable_bad: Ints  # [signal, row]
    window_stable_requests: Ints  # [row]
    window_stable_bad: Ints  # [signal, row]
    cohort: NDArray[np.intp]
    aborted: Bools


@dataclass(frozen=True, slots=True)
class Pooled:
    """One release pass: per release [signal, release] and per environment where it matters."""

    statistic: Floats  # [signal, release]: ln E of the halt test (robust; both nulls once crossed)
    threshold: float
    crossed: Bools  # [release]: halt (any signal)
    signal: NDArray[np.int64]  # [release]: the signal that crossed first (by statistic), or -1
    size: Ints  # [release]: environments in the cohort
    fine: Floats  # [signal, release]: ln e of "release is >= fine_ratio x worse" rejected, all
    surge: Bools  # [signal]
    ratio_estimate: Floats  # [signal, release]: the grid ratio with the largest pooled weight


def _logsumexp0(v: Floats) -> Floats:
    top = v.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    out: Floats = safe + np.log(np.exp(v - safe).sum(axis=0))
    return out


class Scratch:
    """Reusable buffers for `pool` (fresh multi-megabyte arrays cost more than the arithmetic),
    and the bincount index of the last cohort layout. Keep one per caller."""

    def __init__(self) -> None:
        self._buffers: dict[str, Floats] = {}
        self._cohort: NDArray[np.intp] | None = None
        self._flat: dict[tuple[int, int, int], NDArray[np.intp]] = {}

    def buffer(self, name: str, shape: tuple[int, ...]) -> Floats:
        b = self._buffers.get(name)
        if b is None or b.shape != shape:
            b = np.empty(shape)
            self._buffers[name] = b
        return b

    def flat_index(self, cohort: NDArray[np.intp], bins: int, rows: int) -> NDArray[np.intp]:
        """cohort + bins * r for every row r of a [rows, env] array, flattened."""
        if self._cohort is None or not np.array_equal(self._cohort, cohort):
            self._cohort = cohort.copy()
            self._flat = {}
        key = (bins, rows, cohort.size)
        flat = self._flat.get(key)
        if flat is None:
            offsets = (np.arange(rows, dtype=np.intp) * bins)[:, None]
            flat = (cohort[None, :] + offsets).ravel()
            self._flat[key] = flat
        return flat


def pool(
    fleet: FleetArrays,
    n_releases: int,
    settings: ReleaseSettings,
    scratch: Scratch | None = None,
    latched: Bools | None = None,
) -> Pooled:
    """The pooled test of every release at once (bincount by cohort index), and the platform
    surge. Costs O(rows x grid) plus, for releases that cross, the robust and difference
    checks; releases already halted (`latched` [release]) skip those and stay crossed.
    """
    scratch = scratch or Scratch()
    s = settings
    n_sig, g1, _ = fleet.loglik.shape
    member = fleet.cohort >= 0
    cohort = np.where(member, fleet.cohort, n_releases)  # a dump bin for rows without a release
    bins = n_releases + 1
    size = np.bincount(cohort, minlength=bins)[:n_releases].astype(np.int64)
    weights = np.asarray(s.weights, dtype=np.float64)
    weights = weights / weights.sum()
    grid = np.asarray(s.ratios, dtype=np.float64)
    keep = (grid > s.min_ratio) & (weights > 0)
    with np.errstate(divide="ignore"):
        log_w = np.where(keep, np.log(np.where(keep, weights, 1.0) / weights[keep].sum()), -np.inf)
    threshold = s.threshold
    statistic = np.zeros((n_sig, n_releases))
    ratio_estimate = np.zeros((n_sig, n_releases))
    # ln LR of r = 1 against fine_ratio over the whole cohort (triage reads it).
    fine_row = fleet.loglik[:, s.fine_row : s.fine_row + 1, :]
    fine: Floats = -_cohort_sums(fine_row, cohort, bins, scratch)[:, 0, :n_releases]
    if s.pooling is Pooling.PRODUCT:
        # Each environment's log likelihood ratio against the null, capped at env_cap.
        contrib = scratch.buffer("contrib", (n_sig, g1 - 1, cohort.size))
        np.subtract(fleet.loglik[:, 1:, :], fleet.loglik[:, :1, :], out=contrib)
        if math.isfinite(s.env_cap):
            np.minimum(contrib, s.env_cap, out=contrib)
        sums = _cohort_sums(contrib, cohort, bins, scratch)[:, :, :n_releases]
        v = sums + log_w[None, :, None]  # [signal, grid, release]
        for t in range(n_sig):
            statistic[t] = _logsumexp0(v[t])
            ratio_estimate[t] = grid[np.argmax(v[t], axis=0)]
        for t in range(n_sig):
            over = statistic[t] >= threshold
            if latched is not None:
                over &= ~latched
            candidates = np.flatnonzero(over)
            if candidates.size:
                statistic[t, candidates] = _robust_both(
                    fleet, t, candidates, cohort, log_w, grid, s
                )
    else:
        # Average of per-environment e-values, in logs: ln (1/K) sum_e exp(log_e).
        for t in range(n_sig):
            le = fleet.log_e[t]
            top = np.full(bins, -np.inf)
            np.maximum.at(top, cohort, le)
            top = np.where(np.isfinite(top), top, 0.0)
            total = np.bincount(cohort, weights=np.exp(le - top[cohort]), minlength=bins)
            with np.errstate(divide="ignore"):
                avg = top[:n_releases] + np.log(total[:n_releases]) - np.log(np.maximum(size, 1))
            statistic[t] = np.where(size > 0, avg, 0.0)
    crossed_by = statistic >= threshold
    crossed = crossed_by.any(axis=0) & (size > 0)
    if latched is not None:
        crossed |= latched
    signal = np.where(crossed, np.argmax(np.where(crossed_by, statistic, -np.inf), axis=0), -1)
    surge = platform_surge(fleet, s)
    return Pooled(
        statistic=statistic,
        threshold=threshold,
        crossed=crossed,
        signal=signal.astype(np.int64),
        size=size,
        fine=fine,
        surge=surge,
        ratio_estimate=ratio_estimate,
    )


def _cohort_sums(a: Floats, cohort: NDArray[np.intp], bins: int, scratch: Scratch) -> Floats:
    """[signal, k, bins]: sums of a [signal, k, row] by cohort, in one bincount."""
    n_sig, k, _ = a.shape
    flat = scratch.flat_index(cohort, bins, n_sig * k)
    sums = np.bincount(flat, weights=a.reshape(-1), minlength=bins * n_sig * k)
    out: Floats = sums.astype(np.float64).reshape(n_sig, k, bins)
    return out


def _robust_both(
    fleet: FleetArrays,
    t: int,
    releases: Ints,
    cohort: NDArray[np.intp],
    log_w: Floats,
    grid: Floats,
    s: ReleaseSettings,
) -> Floats:
    """ln E of both nulls for these releases, each without its `robust_envs` strongest
    contributions per grid ratio; the smaller of the two (only rare crossing releases pay)."""
    out = np.empty(releases.size)
    for i, rel in enumerate(releases):
        rows = np.flatnonzero(cohort == rel)
        ll = fleet.loglik[t][:, rows]
        ratio_part = np.minimum(ll[1:] - ll[:1], s.env_cap)  # [grid, k]
        if s.min_diff > 0.0:
            sn = fleet.stable_sum[rows]
            rbar = fleet.share_sum[rows] / np.maximum(sn, 1.0)
            penalty = s.min_diff * sn * np.log1p((grid - 1.0)[:, None] * rbar)
            diff_part = np.minimum(ll[1:] - penalty, s.env_cap)
            parts: tuple[Floats, ...] = (ratio_part, diff_part)
        else:
            parts = (ratio_part,)
        values = []
        for part in parts:
            total = part.sum(axis=1)
            k = min(s.robust_envs, part.shape[1])
            if k > 0:
                top = -np.partition(-part, k - 1, axis=1)[:, :k] if k < part.shape[1] else part
                total = total - np.maximum(top, 0.0).sum(axis=1)
            values.append(float(_logsumexp0((total + log_w)[:, None])[0]))
        out[i] = min(values)
    return out


def stable_failing(
    fleet: FleetArrays, s: ReleaseSettings, rows: NDArray[np.intp] | None = None
) -> Bools:
    """[signal, len(rows)]: stable failing in the recent window (all rows by default)."""
    fleet_rate = fleet.stable_bad.sum(axis=1) / max(1.0, float(fleet.stable_requests.sum()))
    sel = slice(None) if rows is None else rows
    w_n = fleet.window_stable_requests[sel]
    w_bad = fleet.window_stable_bad[:, sel]
    before_n = np.maximum(fleet.stable_requests[sel] - w_n, 0)
    before_bad = np.maximum(fleet.stable_bad[:, sel] - w_bad, 0)
    # Own rate before the window, shrunk to the fleet's stable rate over everything counted
    # (an incident in part of the fleet raises that a little; it is never empty for long).
    rate = (before_bad + fleet_rate[:, None] * s.platform_prior_requests) / (
        before_n + s.platform_prior_requests
    )
    mu = s.platform_drift * rate * w_n
    k = w_bad.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_tail = k - mu + k * np.log(np.maximum(mu, 1e-300) / np.maximum(k, 1.0))
    failing: Bools = (k >= s.platform_min_bad) & (k > mu) & (log_tail <= math.log(s.platform_tail))
    return failing


def platform_surge(fleet: FleetArrays, s: ReleaseSettings) -> Bools:
    """[signal]: stable failing at once in at least platform_surge_share of the environments
    with platform_min_window stable requests in the window (and platform_surge_min of them)."""
    seen = np.flatnonzero(fleet.window_stable_requests >= s.platform_min_window)
    bar = max(float(s.platform_surge_min), s.platform_surge_share * seen.size)
    surge: Bools = stable_failing(fleet, s, seen).sum(axis=1) >= bar
    return surge


def ebh(log_e: Floats, cohort: NDArray[np.intp], n_releases: int, fdr: float) -> Bools:
    """e-BH (Wang & Ramdas) within each release's cohort: [row] selected at level `fdr`.

    With K environments in the cohort, select the k largest e-values where k is the largest
    with e_(k) >= K/(fdr*k). Valid under any dependence. Only cohorts with an e-value >= 1/fdr
    (the smallest possible bar) are sorted.
    """
    selected = np.zeros(log_e.size, dtype=np.bool_)
    member = cohort >= 0
    size = np.bincount(cohort[member], minlength=n_releases)
    floor = math.log(1.0 / fdr)
    for rel in np.unique(cohort[member & (log_e >= floor)]):
        rows = np.flatnonzero(cohort == rel)
        k_all = int(size[rel])
        order = rows[np.argsort(-log_e[rows], kind="stable")]
        ranks = np.arange(1, order.size + 1)
        ok = log_e[order] >= np.log(k_all / (fdr * ranks))
        if ok.any():
            k = int(np.flatnonzero(ok).max()) + 1
            selected[order[:k]] = True
    return selected


def triage(
    fleet: FleetArrays,
    pooled: Pooled,
    halted: Bools,
    rows: NDArray[np.intp],
    s: ReleaseSettings,
    first: Bools | None = None,
) -> tuple[NDArray[np.int8], Floats]:
    """Category per aborted row (TRIAGE_ORDER index) and the rest-of-cohort statistic.

    halted [release]: the release's halt is latched. first [len(rows)]: the abort is being
    triaged for the first time (default: all); `platform` is only concluded then, at the abort,
    never on a later look (stable's window is read once per abort, not until it trips).
    The rest of the cohort excludes the row itself and every environment whose own test
    rejected (the suspects): ln e of "the release is at least fine_ratio x worse" over the
    others, in the signal where the row's own evidence is strongest.
    """
    cat = np.full(rows.size, TRIAGE_ORDER.index(Triage.UNDETERMINED), dtype=np.int8)
    if rows.size == 0:
        return cat, np.zeros(0)
    n_sig = fleet.log_e.shape[0]
    n_rel = pooled.size.size
    cohort = fleet.cohort
    suspect = (fleet.log_e >= s.env_threshold) & (cohort >= 0)  # [signal, row]
    own_sig = np.argmax(fleet.log_e[:, rows], axis=0)
    own_rejects = fleet.log_e[own_sig, rows] >= s.env_threshold
    rest = np.zeros(rows.size)
    coh = cohort[rows]
    for t in range(n_sig):
        contrib = np.where(suspect[t] | (cohort < 0), 0.0, -fleet.loglik[t, s.fine_row])
        total = np.bincount(
            np.where(cohort >= 0, cohort, n_rel), weights=contrib, minlength=n_rel + 1
        )
        mine = total[np.where(coh >= 0, coh, n_rel)] - contrib[rows]
        rest = np.where(own_sig == t, mine, rest)
    platform_here = stable_failing(fleet, s, rows)[own_sig, np.arange(rows.size)]
    surge_here = pooled.surge[own_sig] & ~own_rejects
    if first is not None:
        platform_here = platform_here & first
        surge_here = surge_here & first
    release_here = np.where(coh >= 0, halted[np.maximum(coh, 0)], False)
    env_here = own_rejects & (rest >= math.log(1.0 / s.triage_alpha))
    order = [
        (release_here, Triage.RELEASE),
        (platform_here | surge_here, Triage.PLATFORM),
        (env_here, Triage.ENVIRONMENT),
    ]
    decided = np.zeros(rows.size, dtype=np.bool_)
    for mask, category in order:
        new = mask & ~decided
        cat[new] = TRIAGE_ORDER.index(category)
        decided |= new
    return cat, rest


TRIAGE_ORDER: tuple[Triage, ...] = (
    Triage.RELEASE,
    Triage.ENVIRONMENT,
    Triage.PLATFORM,
    Triage.UNDETERMINED,
)
_RELEASE = TRIAGE_ORDER.index(Triage.RELEASE)
_UNDET = TRIAGE_ORDER.index(Triage.UNDETERMINED)


# --- wire schemas -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvSummary:
    """What the worker sends the release agent about one environment (cumulative: latest wins).

    loglik[signal][grid row] as `ReleaseEvidence` keeps it (row 0: the null ratio).
    """

    env: str
    release: str
    pod_hash: str
    at: float
    canary_requests: int
    stable_requests: int
    canary_bad: tuple[int, ...]  # per signal
    stable_bad: tuple[int, ...]
    window_stable_requests: int
    window_stable_bad: tuple[int, ...]
    loglik: tuple[tuple[float, ...], ...]
    stable_sum: float
    share_sum: float
    log_e: tuple[float, ...]  # per signal: ln of the environment's own e-value
    aborted: bool = False
    diff_log: tuple[tuple[float, ...], ...] = ()  # [signal][lambda]: the pooled pass's sums
    canary_sum: float = 0.0  # canary requests of closed blocks


@dataclass(frozen=True, slots=True)
class ReleaseEvidenceRecord:
    """Why a release was halted: enough to check it by hand."""

    signal: str
    canary_requests: int
    canary_bad: int
    stable_requests: int
    stable_bad: int
    statistic: float
    threshold: float
    environments: int  # in the cohort when decided
    environments_with_bad: int
    ratio_estimate: float
    pooling: str
    robust_envs: int

    def describe(self) -> str:
        return (
            f"{self.signal}: canary {self.canary_bad}/{self.canary_requests} bad, stable "
            f"{self.stable_bad}/{self.stable_requests} bad over {self.environments} environments "
            f"({self.environments_with_bad} with bad requests); pooled statistic "
            f"{self.statistic:.2f} >= {self.threshold:.2f} ({self.pooling}, without the "
            f"{self.robust_envs} strongest), likeliest ratio {self.ratio_estimate:g}x"
        )


@dataclass(frozen=True, slots=True)
class ReleaseVerdict:
    """A release halt: one decision, fanned out to every environment of the cohort in progress.

    decision_id is one per release (idempotent); `targets` are (env, pod_hash) pairs to abort.
    A later verdict with the same id may add targets (environments that joined the cohort).
    """

    decision_id: str
    release: str
    decided_at: float
    evidence: ReleaseEvidenceRecord
    targets: tuple[tuple[str, str], ...]
    reason: str = "ReleaseRegression"


@dataclass(frozen=True, slots=True)
class TriageRecord:
    env: str
    release: str
    pod_hash: str
    category: Triage
    at: float
    own_statistic: float  # ln e of the environment's own test (strongest signal)
    rest_statistic: float  # ln e against "release >= fine_ratio x worse", rest of the cohort
    release_statistic: float  # the pooled statistic of its release
    stable_failing: bool
    surge: bool

    def describe(self) -> str:
        why = {
            Triage.RELEASE: "its release is halted fleet-wide",
            Triage.PLATFORM: "stable is failing too" + (" across the fleet" if self.surge else ""),
            Triage.ENVIRONMENT: "this environment fails while the rest of its cohort shows "
            "the release is fine",
            Triage.UNDETERMINED: "no cause established yet",
        }[self.category]
        return (
            f"{self.env} ({self.release}): {self.category.value}: {why}; "
            f"own {self.own_statistic:.2f}, "
            f"rest of cohort {self.rest_statistic:.2f}, release {self.release_statistic:.2f}"
        )


def release_decision_id(release: str) -> str:
    return f"release/{release}"


def _loads(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError("oversized", f"{len(raw)} bytes > limit {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def encode_env_summary(summary: EnvSummary) -> bytes:
    return orjson.dumps(asdict(summary))


def decode_env_summary(raw: bytes) -> EnvSummary:
    o = _loads(raw)
    try:
        return EnvSummary(
            env=str(o["env"]),
            release=str(o["release"]),
            pod_hash=str(o["pod_hash"]),
            at=float(o["at"]),
            canary_requests=int(o["canary_requests"]),
            stable_requests=int(o["stable_requests"]),
            canary_bad=tuple(int(x) for x in o["canary_bad"]),
            stable_bad=tuple(int(x) for x in o["stable_bad"]),
            window_stable_requests=int(o["window_stable_requests"]),
            window_stable_bad=tuple(int(x) for x in o["window_stable_bad"]),
            loglik=tuple(tuple(float(x) for x in row) for row in o["loglik"]),
            stable_sum=float(o["stable_sum"]),
            share_sum=float(o["share_sum"]),
            log_e=tuple(float(x) for x in o["log_e"]),
            aborted=bool(o.get("aborted", False)),
            diff_log=tuple(tuple(float(x) for x in row) for row in o.get("diff_log", ())),
            canary_sum=float(o.get("canary_sum", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("bad_field", f"env summary: {exc!r}") from None


def encode_release_verdict(verdict: ReleaseVerdict) -> bytes:
    return orjson.dumps(asdict(verdict))


def decode_release_verdict(raw: bytes) -> ReleaseVerdict:
    o = _loads(raw)
    try:
        ev = ReleaseEvidenceRecord(**o["evidence"])
        targets = tuple((str(e), str(h)) for e, h in o["targets"])
        return ReleaseVerdict(
            decision_id=str(o["decision_id"]),
            release=str(o["release"]),
            decided_at=float(o["decided_at"]),
            evidence=ev,
            targets=targets,
            reason=str(o.get("reason") or "ReleaseRegression"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("bad_field", f"release verdict: {exc!r}") from None


def encode_triage(record: TriageRecord) -> bytes:
    return orjson.dumps(asdict(record))


def decode_triage(raw: bytes) -> TriageRecord:
    o = _loads(raw)
    try:
        o["category"] = Triage(o["category"])
        return TriageRecord(**o)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("bad_field", f"triage: {exc!r}") from None


# --- the release agent's core -------------------------------------------------------------------


@dataclass(slots=True)
class BoardPass:
    verdicts: list[ReleaseVerdict] = field(default_factory=list)  # new or with new targets
    triage: list[TriageRecord] = field(default_factory=list)  # new or changed categories
    ebh_aborts: list[tuple[str, str]] = field(default_factory=list)  # (env, pod_hash), ebh mode
    pooled: Pooled | None = None
    passes: list[ReleasePass] = field(default_factory=list)  # pooled passes due for publishing


SIGNAL_NAMES = ("errors", "latency")


class ReleaseBoard:
    """Rollout states and environment summaries in, release halts and triage out.

    The release agent (keyed by release) feeds it `RolloutState`s and `EnvSummary`s and calls
    `evaluate(now)`; it sends the verdicts' targets to the actuator and publishes the triage.
    """

    def __init__(
        self,
        settings: ReleaseSettings | None = None,
        capacity: int = 64,
        pass_settings: PooledPassSettings | None = None,
    ) -> None:
        self.settings = settings or ReleaseSettings()
        self.pass_settings = pass_settings or PooledPassSettings()
        self.pooled_pass = PooledPass(
            (self.settings.min_ratio, *self.settings.ratios), self.pass_settings
        )
        # Latched pooled passes [signal, release], and when each release's record went out.
        self.pass_latched = np.zeros((self.settings.signals, 0), dtype=np.bool_)
        self.pass_sent: dict[str, tuple[float, tuple[bool, ...]]] = {}
        # Frozen pass evidence of environments that left their release (stopped factors).
        self.ghosts: PassRows | None = None
        self.n_sig = self.settings.signals
        self.row_of: dict[str, int] = {}
        self.envs: list[str] = []
        self.pod_hash: list[str] = []
        self.release_of_row: list[str] = []
        self.in_progress: list[bool] = []
        self.code_of: dict[str, int] = {}
        self.releases: list[str] = []
        self.halted: dict[str, ReleaseVerdict] = {}
        self.triaged: dict[str, TriageRecord] = {}  # env -> latest triage of its abort
        self.ebh_done: set[str] = set()
        self.scratch = Scratch()
        self._states_changed = False
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        g1, n = self.settings.grid_rows, self.n_sig
        self.loglik = np.zeros((n, g1, capacity))
        self.stable_sum = np.zeros(capacity)
        self.share_sum = np.zeros(capacity)
        self.log_e = np.zeros((n, capacity))
        self.counts = np.zeros((2, capacity), dtype=np.int64)
        self.bad = np.zeros((2, n, capacity), dtype=np.int64)
        self.window_n = np.zeros(capacity, dtype=np.int64)
        self.window_bad = np.zeros((n, capacity), dtype=np.int64)
        self.cohort = np.full(capacity, -1, dtype=np.intp)
        self.aborted = np.zeros(capacity, dtype=np.bool_)
        self.category = np.full(capacity, -1, dtype=np.int8)  # latched triage, -1: none
        self.diff_log = np.zeros((n, len(LAMBDAS), capacity))
        self.canary_sum = np.zeros(capacity)
        # The release whose pooled pass this row's evidence feeds (stays after the canary ends).
        self.pass_cohort = np.full(capacity, -1, dtype=np.intp)

    def _grow(self, capacity: int) -> None:
        old = self.cohort.size
        if capacity <= old:
            return
        names = (
            "loglik",
            "stable_sum",
            "share_sum",
            "log_e",
            "counts",
            "bad",
            "window_n",
            "window_bad",
            "cohort",
            "aborted",
            "category",
            "diff_log",
            "canary_sum",
            "pass_cohort",
        )
        saved = {name: getattr(self, name) for name in names}
        self._alloc(capacity)
        for name in names:
            getattr(self, name)[..., :old] = saved[name]

    def _row(self, env: str) -> int:
        row = self.row_of.get(env)
        if row is None:
            row = len(self.envs)
            if row >= self.cohort.size:
                self._grow(2 * self.cohort.size)
            self.row_of[env] = row
            self.envs.append(env)
            self.pod_hash.append("")
            self.release_of_row.append("")
            self.in_progress.append(False)
        return row

    def _code(self, release: str) -> int:
        code = self.code_of.get(release)
        if code is None:
            code = len(self.releases)
            self.code_of[release] = code
            self.releases.append(release)
        return code

    def _freeze(self, row: int) -> None:
        """The row's pass evidence leaves its release: kept as a frozen (stopped) factor."""
        code = int(self.pass_cohort[row])
        self.pass_cohort[row] = -1
        if code < 0 or not (self.canary_sum[row] > 0 or self.loglik[:, :, row].any()):
            return
        counts = np.stack(
            [np.broadcast_to(self.counts[0, row], (self.n_sig,)),
             np.broadcast_to(self.counts[1, row], (self.n_sig,)),
             self.bad[0, :, row], self.bad[1, :, row]]
        )[:, :, None]  # fmt: skip
        one = PassRows(
            self.loglik[:, :, row : row + 1].copy(),
            self.diff_log[:, :, row : row + 1].copy(),
            self.canary_sum[row : row + 1].copy(),
            np.asarray([code], dtype=np.intp),
            counts.astype(np.int64),
        )
        g = self.ghosts
        self.ghosts = one if g is None else PassRows(
            np.concatenate([g.loglik, one.loglik], axis=2),
            np.concatenate([g.diff_log, one.diff_log], axis=2),
            np.concatenate([g.canary_sum, one.canary_sum]),
            np.concatenate([g.cohort, one.cohort]),
            np.concatenate([g.counts, one.counts], axis=2),
        )  # fmt: skip

    def _clear(self, row: int) -> None:
        self._freeze(row)
        self.diff_log[..., row] = 0
        self.canary_sum[row] = 0
        for a in (self.loglik, self.log_e, self.bad, self.window_bad):
            a[..., row] = 0
        for b in (self.stable_sum, self.share_sum, self.window_n):
            b[row] = 0
        self.counts[:, row] = 0
        self.aborted[row] = False
        self.category[row] = -1
        self.triaged.pop(self.envs[row], None)

    def apply_state(self, state: RolloutState) -> None:
        """A rollout-state snapshot: which release the environment's canary carries."""
        row = self._row(state.env)
        self._states_changed = True
        if state.current_pod_hash != self.pod_hash[row]:
            self._clear(row)
            self.pod_hash[row] = state.current_pod_hash
        in_progress = state.canary_in_progress and bool(state.release)
        self.release_of_row[row] = state.release
        self.in_progress[row] = in_progress
        if state.release and (in_progress or state.aborted):
            self.cohort[row] = self._code(state.release)
            if self.pass_cohort[row] < 0 and not self.loglik[:, :, row].any():
                self.pass_cohort[row] = self.cohort[row]
        else:
            self.cohort[row] = -1
        if self.pass_cohort[row] >= 0 and state.release != self.releases[self.pass_cohort[row]]:
            # Another release on the same revision (rare): its evidence no longer counts for
            # either release's pass (frozen for the old one, not lent to the new one).
            self._freeze(row)
        if state.aborted:
            self.aborted[row] = True

    def apply_summary(self, summary: EnvSummary) -> bool:
        """Store an environment's evidence (latest wins); False if it is for another revision."""
        row = self.row_of.get(summary.env)
        if row is None or summary.pod_hash != self.pod_hash[row]:
            return False
        if summary.release != self.release_of_row[row]:
            return False
        ll = np.asarray(summary.loglik, dtype=np.float64)
        if ll.shape != (self.n_sig, self.settings.grid_rows):
            raise ValueError(
                f"summary loglik shape {ll.shape}, want {(self.n_sig, self.settings.grid_rows)}"
            )
        self.loglik[:, :, row] = ll
        self.stable_sum[row] = summary.stable_sum
        self.share_sum[row] = summary.share_sum
        self.log_e[:, row] = summary.log_e
        self.counts[:, row] = (summary.canary_requests, summary.stable_requests)
        self.bad[0, :, row] = summary.canary_bad
        self.bad[1, :, row] = summary.stable_bad
        self.window_n[row] = summary.window_stable_requests
        self.window_bad[:, row] = summary.window_stable_bad
        diff = np.asarray(summary.diff_log, dtype=np.float64)
        if diff.shape == self.diff_log.shape[:2]:
            self.diff_log[:, :, row] = diff
            self.canary_sum[row] = summary.canary_sum
        if summary.aborted:
            self.aborted[row] = True
        return True

    def restore_halt(self, verdict: ReleaseVerdict) -> None:
        """A halt decided before (the release agent's table): latched, never decided again."""
        self._code(verdict.release)
        self.halted[verdict.release] = verdict

    def restore_triage(self, record: TriageRecord) -> bool:
        """A triage published before, latched for the same revision; False if it is stale."""
        row = self.row_of.get(record.env)
        if row is None or self.pod_hash[row] != record.pod_hash:
            return False
        self.category[row] = TRIAGE_ORDER.index(record.category)
        self.triaged[record.env] = record
        return True

    def fleet(self) -> FleetArrays:
        n = len(self.envs)
        return FleetArrays(
            loglik=self.loglik[:, :, :n],
            stable_sum=self.stable_sum[:n],
            share_sum=self.share_sum[:n],
            log_e=self.log_e[:, :n],
            canary_requests=self.counts[0, :n],
            stable_requests=self.counts[1, :n],
            canary_bad=self.bad[0, :, :n],
            stable_bad=self.bad[1, :, :n],
            window_stable_requests=self.window_n[:n],
            window_stable_bad=self.window_bad[:, :n],
            cohort=self.cohort[:n],
            aborted=self.aborted[:n],
        )

    def evaluate(self, now: float) -> BoardPass:
        s = self.settings
        fleet = self.fleet()
        n_rel = len(self.releases)
        latched = np.zeros(n_rel, dtype=np.bool_)
        for release in self.halted:
            latched[self.code_of[release]] = True
        pooled = pool(fleet, n_rel, s, self.scratch, latched)
        out = BoardPass(pooled=pooled)
        # New halts, and halted releases whose cohort gained environments (latched: a halt
        # stays, and reaches environments that start the release later too).
        codes = set(np.flatnonzero(pooled.crossed & ~latched).tolist())
        if self._states_changed:
            codes |= {self.code_of[r] for r in self.halted}
        self._states_changed = False
        for code in sorted(codes):
            release = self.releases[code]
            verdict = self._verdict(release, code, pooled, fleet, now)
            if verdict is not None:
                out.verdicts.append(verdict)
        if s.fleet_control is FleetControl.EBH:
            for t in range(self.n_sig):
                chosen = ebh(fleet.log_e[t], fleet.cohort, n_rel, s.fdr)
                for row in np.flatnonzero(chosen):
                    env = self.envs[int(row)]
                    key = f"{env}@{self.pod_hash[int(row)]}"
                    if self.in_progress[int(row)] and key not in self.ebh_done:
                        self.ebh_done.add(key)
                        out.ebh_aborts.append((env, self.pod_hash[int(row)]))
        latched = np.zeros(n_rel, dtype=np.bool_)
        for release in self.halted:
            latched[self.code_of[release]] = True
        out.triage = self._triage(fleet, pooled, latched, now)
        out.passes = self._passes(now)
        return out

    def pass_rows(self) -> PassRows:
        """Every row's pass evidence, live rows then frozen ones."""
        n = len(self.envs)
        counts = np.stack(
            [np.broadcast_to(self.counts[0, :n], (self.n_sig, n)),
             np.broadcast_to(self.counts[1, :n], (self.n_sig, n)),
             self.bad[0, :, :n], self.bad[1, :, :n]]
        )  # fmt: skip
        live = PassRows(
            self.loglik[:, :, :n],
            self.diff_log[:, :, :n],
            self.canary_sum[:n],
            self.pass_cohort[:n],
            counts.astype(np.int64),
        )
        g = self.ghosts
        if g is None:
            return live
        return PassRows(
            np.concatenate([live.loglik, g.loglik], axis=2),
            np.concatenate([live.diff_log, g.diff_log], axis=2),
            np.concatenate([live.canary_sum, g.canary_sum]),
            np.concatenate([live.cohort, g.cohort]),
            np.concatenate([live.counts, g.counts], axis=2),
        )

    def _passes(self, now: float) -> list[ReleasePass]:
        """Latch the pooled passes; the records due: a new pass, or `refresh_s` since the
        last record of a release that has passed a signal and still has a canary running."""
        n_rel = len(self.releases)
        if n_rel == 0:
            return []
        rows = self.pass_rows()
        log_e = self.pooled_pass.log_e(rows, n_rel)
        passed = np.maximum(*log_e) >= self.pass_settings.threshold
        if self.pass_latched.shape[1] < n_rel:
            grown = np.zeros((self.n_sig, n_rel), dtype=np.bool_)
            grown[:, : self.pass_latched.shape[1]] = self.pass_latched
            self.pass_latched = grown
        self.pass_latched |= passed
        running = np.zeros(n_rel, dtype=np.bool_)
        live = self.cohort[: len(self.envs)]
        running[live[live >= 0]] = True
        out = []
        for code in np.flatnonzero(self.pass_latched.any(axis=0) & running).tolist():
            release = self.releases[code]
            state = tuple(bool(x) for x in self.pass_latched[:, code])
            sent = self.pass_sent.get(release)
            if (
                sent is not None
                and sent[1] == state
                and now - sent[0] < self.pass_settings.refresh_s
            ):
                continue
            out.append(self._pass_record(rows, log_e, code, now))
            self.pass_sent[release] = (now, state)
        return out

    def _pass_record(
        self, rows: PassRows, log_e: tuple[Floats, Floats], code: int, now: float
    ) -> ReleasePass:
        ratio, diff = log_e
        mine = rows.cohort == code
        signals = []
        for t in range(self.n_sig):
            tol_ratio, tol_diff = self.pass_settings.tolerances[t]
            ratio_bound, diff_bound = self.pooled_pass.bounds(rows, code, t)
            c = rows.counts[:, t][:, mine].sum(axis=1)
            signals.append(
                PooledSignal(
                    signal=SIGNAL_NAMES[t] if t < len(SIGNAL_NAMES) else str(t),
                    passed=bool(self.pass_latched[t, code]),
                    ratio_bound=ratio_bound if math.isfinite(ratio_bound) else None,
                    diff_bound=diff_bound if diff_bound < 1.0 else None,
                    tol_ratio=tol_ratio,
                    tol_diff=tol_diff,
                    statistic=round(float(max(ratio[t, code], diff[t, code])), 6),
                    threshold=round(self.pass_settings.threshold, 6),
                    canary_requests=int(c[0]),
                    stable_requests=int(c[1]),
                    canary_bad=int(c[2]),
                    stable_bad=int(c[3]),
                )
            )
        return ReleasePass(
            release=self.releases[code],
            decided_at=now,
            beta=self.pass_settings.beta,
            environments=int(mine.sum()),
            signals=tuple(signals),
            env_cap=self.pass_settings.env_cap,
        )

    def _triage(
        self, fleet: FleetArrays, pooled: Pooled, halted: Bools, now: float
    ) -> list[TriageRecord]:
        """Triage is latched at the abort; it only moves from undetermined, or to release."""
        s = self.settings
        n = fleet.cohort.size
        aborted = np.flatnonzero(fleet.aborted & (fleet.cohort >= 0))
        prev = self.category[:n][aborted]
        in_halted = halted[fleet.cohort[aborted]]
        open_ = (prev < 0) | (prev == _UNDET) | (in_halted & (prev != _RELEASE))
        rows = aborted[open_]
        prev = prev[open_]
        if rows.size == 0:
            return []
        cats, rest = triage(fleet, pooled, halted, rows, s, prev < 0)
        changed = np.flatnonzero(cats != prev)
        if changed.size == 0:
            return []
        own = fleet.log_e[:, rows].max(axis=0)
        sig_of = np.argmax(fleet.log_e[:, rows], axis=0)
        failing = stable_failing(fleet, s, rows)
        records = []
        for i in changed.tolist():
            row = int(rows[i])
            code = int(fleet.cohort[row])
            sig = int(sig_of[i])
            self.category[row] = cats[i]
            record = TriageRecord(
                env=self.envs[row],
                release=self.releases[code],
                pod_hash=self.pod_hash[row],
                category=TRIAGE_ORDER[int(cats[i])],
                at=now,
                own_statistic=float(own[i]),
                rest_statistic=float(rest[i]),
                release_statistic=float(pooled.statistic[sig, code]),
                stable_failing=bool(failing[sig, i]),
                surge=bool(pooled.surge[sig]),
            )
            self.triaged[record.env] = record
            records.append(record)
        return records

    def _verdict(
        self, release: str, code: int, pooled: Pooled, fleet: FleetArrays, now: float
    ) -> ReleaseVerdict | None:
        rows = np.flatnonzero(fleet.cohort == code)
        targets = tuple(
            (self.envs[int(r)], self.pod_hash[int(r)])
            for r in rows
            if self.in_progress[int(r)] and not fleet.aborted[int(r)]
        )
        previous = self.halted.get(release)
        if previous is not None:
            known = set(previous.targets)
            new = tuple(t for t in targets if t not in known)
            if not new:
                return None
            verdict = ReleaseVerdict(
                previous.decision_id, release, now, previous.evidence, previous.targets + new
            )
            self.halted[release] = verdict
            return verdict
        sig = int(pooled.signal[code])
        evidence = ReleaseEvidenceRecord(
            signal=SIGNAL_NAMES[sig] if sig < len(SIGNAL_NAMES) else str(sig),
            canary_requests=int(fleet.canary_requests[rows].sum()),
            canary_bad=int(fleet.canary_bad[sig, rows].sum()),
            stable_requests=int(fleet.stable_requests[rows].sum()),
            stable_bad=int(fleet.stable_bad[sig, rows].sum()),
            statistic=float(pooled.statistic[sig, code]),
            threshold=pooled.threshold,
            environments=int(rows.size),
            environments_with_bad=int(
                ((fleet.canary_bad[sig, rows] + fleet.stable_bad[sig, rows]) > 0).sum()
            ),
            ratio_estimate=float(pooled.ratio_estimate[sig, code]),
            pooling=self.settings.pooling.value,
            robust_envs=self.settings.robust_envs,
        )
        verdict = ReleaseVerdict(release_decision_id(release), release, now, evidence, targets)
        self.halted[release] = verdict
        return verdict


def summary_from_rows(
    env: str,
    release: str,
    pod_hash: str,
    at: float,
    evidence: ReleaseEvidence,
    row: int,
    counts: Sequence[int],
    window: Sequence[int],
    log_e: Iterable[float],
    aborted: bool = False,
) -> EnvSummary:
    """Build one environment's summary from a `ReleaseEvidence` row (worker side).

    counts: canary requests, stable requests, then canary bad and stable bad per signal;
    window: stable requests, then stable bad per signal, over the recent window.
    """
    n = evidence.signals
    return EnvSummary(
        env=env,
        release=release,
        pod_hash=pod_hash,
        at=at,
        canary_requests=int(counts[0]),
        stable_requests=int(counts[1]),
        canary_bad=tuple(int(x) for x in counts[2 : 2 + n]),
        stable_bad=tuple(int(x) for x in counts[2 + n : 2 + 2 * n]),
        window_stable_requests=int(window[0]),
        window_stable_bad=tuple(int(x) for x in window[1 : 1 + n]),
        loglik=tuple(tuple(float(x) for x in evidence.loglik[t, :, row]) for t in range(n)),
        stable_sum=float(evidence.stable_sum[row]),
        share_sum=float(evidence.share_sum[row]),
        log_e=tuple(float(x) for x in log_e),
        aborted=aborted,
        diff_log=tuple(tuple(float(x) for x in evidence.diff_log[t, :, row]) for t in range(n)),
        canary_sum=float(evidence.canary_sum[row]),
    )
