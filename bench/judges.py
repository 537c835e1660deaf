"""The judges canarywatch is compared with, vectorised over canaries. Pure numpy.

- Argo Rollouts-style analysis: the canary's error ratio over a rate window, measured every
  `interval`; a measurement fails above a threshold; the run fails (abort) once failed
  measurements exceed `failureLimit` (Argo uses `>`). A window without canary requests gives
  NaN, which Argo treats as inconclusive: neither a success nor a failure.
- Kayenta-style: Mann-Whitney U test on per-minute error ratios, canary against stable, at
  98 % confidence (two-sided), judged every 10 minutes over all minutes so far; the canary
  fails when its ratios are significantly higher.
- Oracle: Wald's SPRT on the canary's requests, knowing stable's rate and the canary's true
  rate (the floor no judge can beat on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

NEVER = math.inf


@dataclass(frozen=True, slots=True)
class ArgoAnalysis:
    """One AnalysisTemplate metric: error ratio over `window_min`, every `interval_min`."""

    name: str
    max_error_ratio: float  # a measurement fails above this
    interval_min: int = 1
    window_min: int = 5
    failure_limit: int = 3  # abort when failures > failure_limit

    def abort_minute(self, requests: Ints, errors: Ints) -> Floats:
        """Minute of the abort per canary (NEVER if none); counts are per minute [minute, row]."""
        minutes, rows = requests.shape
        cum_req = np.vstack([np.zeros((1, rows), np.int64), np.cumsum(requests, axis=0)])
        cum_err = np.vstack([np.zeros((1, rows), np.int64), np.cumsum(errors, axis=0)])
        failures = np.zeros(rows, dtype=np.int64)
        abort = np.full(rows, NEVER)
        for m in range(self.interval_min, minutes + 1, self.interval_min):
            lo = max(0, m - self.window_min)
            w_req = cum_req[m] - cum_req[lo]
            w_err = cum_err[m] - cum_err[lo]
            failed = (w_req > 0) & (w_err > self.max_error_ratio * w_req)
            failures += failed
            newly = (failures > self.failure_limit) & ~np.isfinite(abort)
            abort[newly] = m
        return abort


def mann_whitney_z(x: Floats, y: Floats) -> tuple[Floats, Ints, Ints]:
    """z statistic of the Mann-Whitney U test that x tends to exceed y, row by row.

    x, y: [rows, samples] with NaN for missing samples. Normal approximation with the tie
    correction and a continuity correction of 1/2; z = 0 where the variance is 0.
    Returns (z, n_x, n_y).
    """
    rows = x.shape[0]
    n1 = np.sum(~np.isnan(x), axis=1)
    n2 = np.sum(~np.isnan(y), axis=1)
    u = np.zeros(rows)
    chunk = max(1, 4_000_000 // max(1, x.shape[1] * y.shape[1]))
    for start in range(0, rows, chunk):
        xs = x[start : start + chunk, :, None]
        ys = y[start : start + chunk, None, :]
        # Comparisons with NaN are False: missing samples drop out of every pair.
        u[start : start + chunk] = np.sum(xs > ys, axis=(1, 2)) + 0.5 * np.sum(
            xs == ys, axis=(1, 2)
        )
    ties = _tie_term(np.concatenate([x, y], axis=1))
    n = n1 + n2
    mean = n1 * n2 / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1.0)))
        diff = u - mean
        diff = np.sign(diff) * np.maximum(np.abs(diff) - 0.5, 0.0)
        z = np.where(var > 0, diff / np.sqrt(np.maximum(var, 1e-300)), 0.0)
    return z, n1, n2


def _tie_term(z: Floats) -> Floats:
    """Sum over groups of tied values of t^3 - t, per row (NaN never ties)."""
    s = np.sort(z, axis=1)  # NaN last
    width = s.shape[1]
    idx = np.arange(width)
    start = np.ones_like(s, dtype=np.bool_)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    end = np.ones_like(s, dtype=np.bool_)
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    left = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
    right = np.minimum.accumulate(np.where(end, idx, width)[:, ::-1], axis=1)[:, ::-1]
    run = (right - left + 1).astype(np.float64)
    # Each group of t tied values contributes t * (t^2 - 1): sum of (t^2 - 1) over members.
    return np.asarray(np.sum(run * run - 1.0, axis=1), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class KayentaJudge:
    """Mann-Whitney on per-minute error ratios, every `every_min` minutes, canary vs stable."""

    confidence: float = 0.98
    every_min: int = 10
    min_samples: int = 3

    def abort_minute(self, c_req: Ints, c_err: Ints, s_req: Ints, s_err: Ints) -> Floats:
        minutes, rows = c_req.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            c_ratio = np.where(c_req > 0, c_err / np.maximum(c_req, 1), np.nan).T
            s_ratio = np.where(s_req > 0, s_err / np.maximum(s_req, 1), np.nan).T
        critical = NormalDist().inv_cdf(1.0 - (1.0 - self.confidence) / 2.0)
        abort = np.full(rows, NEVER)
        for m in range(self.every_min, minutes + 1, self.every_min):
            live = np.flatnonzero(~np.isfinite(abort))
            if live.size == 0:
                break
            z, n1, n2 = mann_whitney_z(c_ratio[live, :m], s_ratio[live, :m])
            fail = (z > critical) & (n1 >= self.min_samples) & (n2 >= self.min_samples)
            abort[live[fail]] = m
        return abort


class SprtOracle:
    """Wald's SPRT on canary requests: H0 rate p0 (stable's, known) vs H1 rate p1 (the truth).

    One-sided (no acceptance boundary, so it never stops watching): aborts when the log
    likelihood ratio reaches ln(1/alpha).
    """

    def __init__(self, p0: Floats, p1: Floats, alpha: float) -> None:
        self.bad_gain = np.log(p1 / p0)
        self.good_gain = np.log1p(-p1) - np.log1p(-p0)
        self.threshold = math.log(1.0 / alpha)

    def crossed(self, canary_requests: Ints, canary_bad: Ints) -> NDArray[np.bool_]:
        llr = canary_bad * self.bad_gain + (canary_requests - canary_bad) * self.good_gain
        return np.asarray(llr >= self.threshold, dtype=np.bool_)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
