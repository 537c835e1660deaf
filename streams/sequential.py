"""An anytime-valid test of "is the canary's bad-request rate worse than stable's?", per row.

Pure numpy; one instance holds the state of every row for several independent tests (one per
signal: 5xx errors, slow requests). docs/decisions.md explains it for operators; in short:

**Blocks.** Evaluation passes add their counts to an open block per row; a block closes at the
end of the first pass that brings it to `block_requests` requests (both arms together). Block
boundaries depend on request counts only, never on which requests were bad. In a busy
environment a block is a pass or two; in a quiet one it gathers minutes of traffic, so that
its canary share means something (a pass holding one request says nothing about the split).

**The split of bad requests.** Say a closed block holds `n_c` canary and `n_s` stable requests,
a canary share rho = n_c / (n_c + n_s). If the canary's bad rate is `r` times stable's, each
bad request of the block is the canary's with probability

    theta(r) = rho*r / (rho*r + 1 - rho),

whatever stable's own rate is (Poisson thinning; conditioning on the block's request counts
removes the nuisance). For a ratio `r` the block's likelihood ratio against `r0` is
(theta(r)/theta(r0))^x_c * ((1-theta(r))/(1-theta(r0)))^x_s. Products over blocks are test
martingales under the null whatever rho does from block to block (canary steps, noise). We
keep, per row and grid ratio r_g,

    loglik[r_g] = sum over blocks of  x_c*ln(r_g) - (x_c + x_s)*ln(1 + rho*(r_g - 1)),

the log likelihood ratio of r_g against r = 1. Grid entry 0 holds the null ratio `min_ratio`.

**Two nulls, both must be rejected** (an intersection-union test, valid at level alpha for
the union): the canary is no worse than stable by more than the minimum regression when its
rate is at most `min_ratio` times stable's, *or* at most stable's plus `min_diff`.

- Ratio test: e_ratio = sum_g w_g * exp(loglik[r_g] - loglik[min_ratio]) over r_g > min_ratio.
- Difference test: add min_diff * n_s pseudo bad requests to stable in every block; under
  "p_c <= p_s + min_diff" the inflated split is a ratio-1 null. The pseudo counts are
  replaced by their expectation (the e-value is convex in them, so this is conservative by
  Jensen), and their per-block shares are pooled into one weighted mean share (concavity of
  ln(1 + rho*(r-1)), conservative again). That costs two running sums per row:
  e_diff = sum_g w_g * exp(loglik[r_g] - D*S*ln(1 + rbar*(r_g-1))), S = sum n_s,
  rbar = sum(n_s*rho)/S.

By Ville's inequality each of e_ratio and e_diff exceeds 1/alpha with probability at most
alpha under its null, however often it is looked at. Only rows with a bad request in a closed
block change `loglik`, so a pass costs O(rows) plus O(rows with bad requests x grid).

Assumptions (docs/decisions.md): given the request counts, requests are bad independently
with their arm's rate (Poisson/binomial thinning), and rates do not move together with the
split inside one block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

# Alternatives: rate ratios the mixture bets on. The weights favour 4x-16x, where a handful of
# bad requests must suffice (a weight's cost, ln(1/w), is a large share of the little evidence a
# big regression needs); 2x keeps a fifth (it needs hundreds of bad requests, so the cost is
# relatively small); 32x-64x serve broken canaries. Chosen by simulation: docs/decisions.md.
DEFAULT_RATIOS: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DEFAULT_WEIGHTS: tuple[float, ...] = (0.20, 0.15, 0.30, 0.15, 0.10, 0.10)


@dataclass(frozen=True, slots=True)
class Mixture:
    """The alternatives: rate ratios (each > 1) and their prior weights (normalised here)."""

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    weights: tuple[float, ...] = DEFAULT_WEIGHTS

    def __post_init__(self) -> None:
        if len(self.ratios) == 0 or len(self.ratios) != len(self.weights):
            raise ValueError("need as many weights as ratios, at least one")
        if any(not r > 1.0 or not math.isfinite(r) for r in self.ratios):
            raise ValueError("mixture ratios must be finite and > 1")
        if any(not w >= 0.0 for w in self.weights) or sum(self.weights) <= 0.0:
            raise ValueError("mixture weights must be >= 0 with a positive sum")


def null_share(rho: Floats | float, ratio: float) -> Floats:
    """theta: the canary's share of bad requests when its rate is `ratio` times stable's."""
    rho_a = np.asarray(rho, dtype=np.float64)
    return np.asarray(rho_a * ratio / (rho_a * ratio + 1.0 - rho_a), dtype=np.float64)


def floor_canary_bad(alpha: float, rho: float) -> int:
    """Fewest canary bad requests with which any valid test can reject at level alpha.

    One canary bad request multiplies a likelihood ratio by at most 1/rho (all of them
    landing in the canary is the most surprising outcome), so ln(1/alpha)/ln(1/rho) are needed.
    """
    if not 0.0 < rho < 1.0:
        return 1 if rho >= 1.0 else 0
    return max(1, math.ceil(math.log(1.0 / alpha) / math.log(1.0 / rho) - 1e-12))


def _logsumexp_columns(v: Floats, scratch: NDArray[np.float32]) -> Floats:
    """ln(sum(exp(v), axis=0)) for v [grid, k]; `scratch` is a float32 [grid, k] buffer.

    The terms v - max(v) <= 0 go through float32 exp/log (several times faster than float64
    here); their sum lies in [1, grid], so the result is off by ~1e-7 at most.
    """
    top = v.max(axis=0)
    np.subtract(v, top, out=scratch, casting="same_kind")
    np.exp(scratch, out=scratch)
    total = scratch.sum(axis=0)
    np.log(total, out=total)
    out: Floats = top + total
    return out


class SplitTest:
    """Sequential tests of the canary/stable split of bad requests, [tests x rows x grid].

    `min_ratio[t]` and `min_diff[t]` define test t's null ("no worse by more than"). The state
    of a row starts at zero evidence on `reset`; `update` adds one pass of counts.
    """

    def __init__(
        self,
        capacity: int,
        min_ratio: Sequence[float],
        min_diff: Sequence[float],
        mixture: Mixture | None = None,
        block_requests: int = 50,
    ) -> None:
        if len(min_ratio) != len(min_diff) or not min_ratio:
            raise ValueError("one min_ratio and one min_diff per test")
        mixture = mixture or Mixture()
        grid = np.asarray(mixture.ratios, dtype=np.float64)
        weights = np.asarray(mixture.weights, dtype=np.float64)
        weights = weights / weights.sum()
        n = len(min_ratio)
        self.n_tests = n
        self.block_requests = max(1, int(block_requests))
        self.grid = grid
        self.min_ratio = np.asarray(min_ratio, dtype=np.float64)
        self.min_diff = np.asarray(min_diff, dtype=np.float64)
        if np.any(self.min_ratio < 1.0) or np.any(self.min_diff < 0.0):
            raise ValueError("min_ratio must be >= 1 and min_diff >= 0")
        # Grid entry 0: the ratio test's null; entries 1..: the alternatives. Arrays are laid
        # out [grid, rows] so that every operation runs along contiguous rows.
        ratios = np.empty((n, grid.size + 1, 1))
        ratios[:, 0, 0] = self.min_ratio
        ratios[:, 1:, 0] = grid
        self._log_r = np.log(ratios)
        self._r_minus_1 = ratios - 1.0
        self._grid_minus_1 = (grid - 1.0)[:, None]
        # Ratio test: only alternatives above its null keep a weight (a component at or below
        # the null would not be an e-value for the composite null).
        self._log_w_ratio = np.full((n, grid.size, 1), -np.inf)
        for t in range(n):
            keep = grid > self.min_ratio[t]
            kept = float(weights[keep].sum())
            if kept <= 0.0:
                raise ValueError(f"no weighted mixture ratio above min_ratio {self.min_ratio[t]}")
            with np.errstate(divide="ignore"):
                self._log_w_ratio[t, keep, 0] = np.log(weights[keep] / kept)
        with np.errstate(divide="ignore"):
            self._log_w_diff = np.log(weights)[:, None]
        self.loglik: Floats = np.zeros((n, grid.size + 1, capacity))
        self.log_e_ratio: Floats = np.zeros((n, capacity))
        self.stable_requests: Floats = np.zeros(capacity)  # sum of n_s over blocks
        self.stable_share: Floats = np.zeros(capacity)  # sum of n_s * rho over blocks
        # The open block: canary, stable requests, canary bad [tests], stable bad [tests].
        self.block: Ints = np.zeros((2 + 2 * n, capacity), dtype=np.int64)
        self._allocate_scratch(capacity)

    def _allocate_scratch(self, capacity: int) -> None:
        g = self.grid_size + 1
        self._total = np.zeros(capacity, dtype=np.int64)
        self._closing = np.zeros(capacity, dtype=np.bool_)
        self._closed = np.zeros((2 + 2 * self.n_tests, capacity), dtype=np.int64)
        self._share = np.zeros(capacity)
        self._step = np.zeros((g, capacity))
        self._gain = np.zeros((g, capacity))
        self._v32 = np.zeros((g - 1, capacity), dtype=np.float32)

    @property
    def capacity(self) -> int:
        return int(self.loglik.shape[2])

    @property
    def grid_size(self) -> int:
        return int(self.grid.size)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        n, g = self.n_tests, self.grid_size + 1
        self.loglik = np.concatenate([self.loglik, np.zeros((n, g, extra))], axis=2)
        self.log_e_ratio = np.concatenate([self.log_e_ratio, np.zeros((n, extra))], axis=1)
        self.stable_requests = np.concatenate([self.stable_requests, np.zeros(extra)])
        self.stable_share = np.concatenate([self.stable_share, np.zeros(extra)])
        self.block = np.concatenate(
            [self.block, np.zeros((self.block.shape[0], extra), dtype=np.int64)], axis=1
        )
        self._allocate_scratch(capacity)

    def reset(self, rows: NDArray[np.intp]) -> None:
        """Evidence for these rows starts again from nothing (e = 1)."""
        self.loglik[:, :, rows] = 0.0
        self.log_e_ratio[:, rows] = 0.0
        self.stable_requests[rows] = 0.0
        self.stable_share[rows] = 0.0
        self.block[:, rows] = 0

    def update(
        self,
        canary_requests: Ints,
        stable_requests: Ints,
        canary_bad: Ints,
        stable_bad: Ints,
    ) -> None:
        """Add one pass: request counts [rows], bad counts [tests, rows] (all since last pass)."""
        n = self.n_tests
        block = self.block
        block[0] += canary_requests
        block[1] += stable_requests
        block[2 : 2 + n] += canary_bad
        block[2 + n :] += stable_bad
        closing = self._closing
        np.add(block[0], block[1], out=self._total)
        np.greater_equal(self._total, self.block_requests, out=closing)
        # Dense from here on: rows whose block stays open contribute zeros.
        closed = self._closed
        np.multiply(block, closing, out=closed)
        block -= closed
        n_c, n_s = closed[0], closed[1]
        # Pseudo-count sums of the difference test (two numbers per row).
        share = self._share
        np.add(n_c, n_s, out=share)
        np.maximum(share, 1.0, out=share)
        np.divide(n_c, share, out=share)
        share *= n_s
        self.stable_share += share
        self.stable_requests += n_s
        # Only rows with a bad request in a closed block move their likelihoods.
        bad_total = closed[2 : 2 + n] + closed[2 + n :]
        for t in range(n):
            rows = np.flatnonzero(bad_total[t])
            if rows.size:
                self._update_rows(
                    t, rows, n_c[rows], n_s[rows], closed[2 + t, rows], bad_total[t, rows]
                )

    def _update_rows(
        self,
        t: int,
        rows: NDArray[np.intp],
        n_c: Ints,
        n_s: Ints,
        x_c: Ints,
        bad: Ints,
    ) -> None:
        k = rows.size
        # A bad request is also a request; tolerate counts that disagree.
        np.maximum(n_c, x_c, out=n_c)
        denominator = n_s + n_c
        np.maximum(denominator, bad, out=denominator)
        rho = n_c / denominator
        # step[g] = x_c*ln(r_g) - bad*ln(1 + rho*(r_g - 1)), in preallocated scratch.
        step = self._step[:, :k]
        np.multiply(self._r_minus_1[t], rho, out=step)
        step += 1.0
        np.log(step, out=step)
        step *= -bad
        gain = self._gain[:, :k]
        np.multiply(self._log_r[t], x_c, out=gain)
        step += gain
        loglik = self.loglik[t]
        block = gain
        np.take(loglik, rows, axis=1, out=block, mode="clip")
        block += step
        loglik[:, rows] = block
        self.log_e_ratio[t, rows] = self._log_e_ratio_of(t, block)

    def _log_e_ratio_of(self, t: int, block: Floats) -> Floats:
        """ln sum_g w_g exp(loglik[g] - loglik[null]) for a [grid + 1, k] block."""
        k = block.shape[1]
        v = self._step[1:, :k]
        np.subtract(block[1:], block[0], out=v)
        v += self._log_w_ratio[t]
        return _logsumexp_columns(v, self._v32[:, :k])

    def log_e_diff(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """ln e-value of test t's difference null for these rows (+inf when min_diff is 0).

        With min_diff = 0 the difference null (p_c <= p_s) lies inside the ratio null
        (min_ratio >= 1), so the ratio test alone decides.
        """
        if self.min_diff[t] == 0.0:
            return np.full(rows.size, np.inf)
        s = self.stable_requests[rows]
        rbar = self.stable_share[rows] / np.maximum(s, 1.0)
        penalty = self._grid_minus_1 * rbar
        penalty += 1.0
        np.log(penalty, out=penalty)
        penalty *= self.min_diff[t] * s
        v = self.loglik[t][1:, rows] - penalty
        v += self._log_w_diff
        return _logsumexp_columns(v, np.empty(v.shape, dtype=np.float32))

    def log_e(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """ln of the smaller e-value of the two nulls: what must reach ln(1/alpha)."""
        out: Floats = np.minimum(self.log_e_ratio[t, rows], self.log_e_diff(t, rows))
        return out
