"""The pooled halt test of every release at once (`pool`: product or average of the cohort's
evidence, robust to its strongest environments), stable failing and the platform surge, and
e-BH within a cohort. Pure numpy; streams/release.py explains the statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streams.release import Pooling, ReleaseSettings

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]


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
