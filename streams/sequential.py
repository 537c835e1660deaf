"""An anytime-valid test of "is the canary's bad-request rate worse than stable's?", per row.

Pure numpy; one instance holds the state of every row for several independent tests (one per
signal: 5xx errors, slow requests). docs/decisions.md explains it for operators; in short:

**Slices.** Evaluation passes add their counts to an open slice per row and test; a slice closes
at the end of a pass that brings it to `block_requests` requests (both arms together), once it
holds no bad request, or its last bad request is `quiet_s` old, or it is `max_slice_s` old. The
closing rule reads request counts and *when* bad requests came, never *which arm* they came
from, so a burst of bad requests (a retry storm, one user's broken session) stays in one slice.

**The split of bad requests.** In a closed slice with canary share rho = n_c / (n_c + n_s), a
canary `r` times worse than stable puts each bad request in the canary with probability
theta(r) = rho*r / (rho*r + 1 - rho), whatever stable's own rate is; so does each *cluster* of
bad requests when clusters (of any size, the same size law on both arms) arrive independently.
Either way the canary's fraction f = x_c / (x_c + x_s) of the slice's B bad requests has
E[f | B] = theta(r) <= theta(r0) under the null "r <= r0".

**Ratio test (cluster-robust).** Each slice multiplies the evidence for grid entry g by

    F_g = 1 + lambda_g * (f - theta0),  lambda_g = min(B * l_g, c_max / theta0),
    l_g = (theta(r_g) - theta0) / (theta0 * (1 - theta0)),

a bet on f. With one bad request F_g is exactly the likelihood ratio theta_g/theta0 (or
(1-theta_g)/(1-theta0)); with several it bets as much as B independent requests would, but one
slice never multiplies the evidence by more than 1 + c_max*(1-theta0)/theta0 < 1/theta0, however
many bad requests a burst puts in it. E[F_g] <= 1 under the null: a test supermartingale.

**Change points (no evidence debt).** The e-value mixes over the time the regression began:
e = sum_g w_g * sum_k m_k * prod_{slices j >= k} F_g,j + (prior mass not yet started), with a
prior of mass p0 at the canary's start and a tail (1 - p0) * (1 + t/t0)^-a after it, each mass
entering at the first slice after its time. Each term is a test supermartingale from its start
(1 before it), so the sum is one; recursively S_g <- (S_g + m) * F_g per closed slice.

**Difference test** ("canary <= stable + min_diff"): min_diff * n_s pseudo bad requests join
stable in every slice (their expectation; conservative by Jensen), the request-level likelihood
ratio x_c*ln(r_g) - (B + D)*ln(1 + rho*(r_g - 1)) against r = 1, with the same change-point
mixture. Pseudo counts of slices without bad requests are pooled (two running sums per row,
concavity: conservative) and applied at the next slice with bad requests. It keeps the
request-independence assumption; the abort needs both tests, and a canary as good as stable
lies in the ratio null, where the ratio test alone carries the guarantee.

By Ville's inequality each e-value exceeds 1/alpha with probability at most alpha under its
null, however often it is looked at. Only rows with a bad request in a closed slice touch the
[grid, rows] state, so a pass costs O(rows) plus O(rows with bad requests x grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streams.rowstate import export_fields, import_fields, row_width

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

# Alternatives: rate ratios the mixture bets on. 1.5x-2x hold a quarter (a 1.5x regression needs
# thousands of bad requests, so a weight's cost, ln(1/w), is small beside its evidence); 8x
# holds the most, where a handful of bad requests must suffice and the cost matters; 32x-64x
# serve broken canaries. Chosen by simulation: docs/decisions.md.
DEFAULT_RATIOS: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DEFAULT_WEIGHTS: tuple[float, ...] = (0.12, 0.12, 0.08, 0.10, 0.28, 0.10, 0.10, 0.10)


@dataclass(frozen=True, slots=True)
class ChangePrior:
    """When the regression began: mass `start` at the canary's start, the rest spread after it
    with survival (1 - start) * (1 + t/scale_s)^-tail (t seconds since the start)."""

    start: float = 0.5
    scale_s: float = 600.0
    tail: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.start <= 1.0 or self.scale_s <= 0.0 or self.tail <= 0.0:
            raise ValueError("need 0 < start <= 1, scale_s > 0, tail > 0")

    def cumulative(self, t: Floats) -> Floats:
        """Prior mass of onsets at or before t seconds (t >= 0)."""
        later = (1.0 + np.maximum(t, 0.0) / self.scale_s) ** (-self.tail)
        out: Floats = 1.0 - (1.0 - self.start) * later
        return out


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


# S is capped here (and a difference-test step at its log): capping only lowers an e-value.
_CEILING = 1e150
_LOG_CEILING = 300.0  # exp(300) * _CEILING stays finite


class _Buffers:
    """Reusable arrays by name and shape (one set per `SplitTest`)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, tuple[int, ...]], NDArray[Any]] = {}

    def _get(self, name: str, shape: tuple[int, ...], dtype: type) -> NDArray[Any]:
        key = (name, shape)
        a = self._arrays.get(key)
        if a is None:
            if len(self._arrays) > 64:  # shapes changed (grow): forget the old ones
                self._arrays.clear()
            a = np.empty(shape, dtype=dtype)
            self._arrays[key] = a
        return a

    def ints(self, name: str, shape: tuple[int, ...]) -> Ints:
        out: Ints = self._get(name, shape, np.int64)
        return out

    def floats(self, name: str, shape: tuple[int, ...]) -> Floats:
        out: Floats = self._get(name, shape, np.float64)
        return out

    def bools(self, name: str, shape: tuple[int, ...]) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = self._get(name, shape, np.bool_)
        return out


class SplitTest:
    """Sequential tests of the canary/stable split of bad requests, [tests x grid x rows].

    `min_ratio[t]` and `min_diff[t]` define test t's null ("no worse by more than"). A row starts
    at zero evidence (e = 1) on `reset`; `update` adds one pass of counts at time `now`.
    `quiet_s` = 0 and `max_slice_s` = inf close a slice on request counts alone.
    """

    def __init__(
        self,
        capacity: int,
        min_ratio: Sequence[float],
        min_diff: Sequence[float],
        mixture: Mixture | None = None,
        block_requests: int = 50,
        *,
        quiet_s: float = 0.0,
        max_slice_s: float = math.inf,
        max_bet: float = 0.9,
        change: ChangePrior | None = None,
    ) -> None:
        if len(min_ratio) != len(min_diff) or not min_ratio:
            raise ValueError("one min_ratio and one min_diff per test")
        if not 0.0 < max_bet < 1.0 or quiet_s < 0.0 or not max_slice_s > 0.0:
            raise ValueError("need 0 < max_bet < 1, quiet_s >= 0, max_slice_s > 0")
        mixture = mixture or Mixture()
        grid = np.asarray(mixture.ratios, dtype=np.float64)
        weights = np.asarray(mixture.weights, dtype=np.float64)
        weights = weights / weights.sum()
        n = len(min_ratio)
        self.n_tests = n
        self.block_requests = max(1, int(block_requests))
        self.quiet_s = float(quiet_s)
        self.max_slice_s = float(max_slice_s)
        self.max_bet = float(max_bet)
        self.change = change or ChangePrior()
        self.grid = grid
        self.min_ratio = np.asarray(min_ratio, dtype=np.float64)
        self.min_diff = np.asarray(min_diff, dtype=np.float64)
        if np.any(self.min_ratio < 1.0) or np.any(self.min_diff < 0.0):
            raise ValueError("min_ratio must be >= 1 and min_diff >= 0")
        self._grid_col = grid[:, None]
        self._log_grid = np.log(grid)[:, None]
        self._grid_minus_1 = (grid - 1.0)[:, None]
        # Ratio test: only alternatives above its null keep a weight (a component at or below
        # the null would not be an e-value for the composite null).
        self._w_ratio = np.zeros((n, grid.size))
        self._keep = np.zeros((n, grid.size), dtype=np.bool_)
        for t in range(n):
            keep = grid > self.min_ratio[t]
            kept = float(weights[keep].sum())
            if kept <= 0.0:
                raise ValueError(f"no weighted mixture ratio above min_ratio {self.min_ratio[t]}")
            self._keep[t] = keep
            self._w_ratio[t, keep] = weights[keep] / kept
        self._w_diff = weights
        g = grid.size
        # S per test, grid entry and row: the change-point sums of the two tests (linear scale;
        # capped at _CEILING, which only lowers them).
        self.s_ratio: Floats = np.zeros((n, g, capacity))
        self.s_diff: Floats = np.zeros((n, g, capacity))
        self.log_e_ratio: Floats = np.zeros((n, capacity))
        self.mass: Floats = np.zeros((n, capacity))  # change-point prior mass started so far
        self.started: Floats = np.zeros(capacity)
        # Pseudo counts of the difference test not yet applied: sum n_s, sum n_s * rho.
        self.pending_stable: Floats = np.zeros((n, capacity))
        self.pending_share: Floats = np.zeros((n, capacity))
        # The open slice per test: canary, stable requests; canary, stable bad; when it opened;
        # when its last bad request came.
        self.block: Ints = np.zeros((4, n, capacity), dtype=np.int64)
        self.opened: Floats = np.zeros((n, capacity))
        self.last_bad: Floats = np.full((n, capacity), -np.inf)
        self._scratch = _Buffers()

    # Every per-row array (row axis last): what a checkpoint of a row holds.
    ROW_FIELDS: tuple[str, ...] = (
        "s_ratio",
        "s_diff",
        "log_e_ratio",
        "mass",
        "started",
        "pending_stable",
        "pending_share",
        "block",
        "opened",
        "last_bad",
    )

    def export_rows(self, rows: NDArray[np.intp]) -> Floats:
        """[rows, width]: these rows' state (`ROW_FIELDS`), for `import_rows` elsewhere."""
        return export_fields(self, self.ROW_FIELDS, rows)

    def import_rows(self, rows: NDArray[np.intp], data: Floats) -> None:
        import_fields(self, self.ROW_FIELDS, rows, data)

    @property
    def row_width(self) -> int:
        return row_width(self, self.ROW_FIELDS)

    @property
    def capacity(self) -> int:
        return int(self.s_ratio.shape[2])

    @property
    def grid_size(self) -> int:
        return int(self.grid.size)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        n, g = self.n_tests, self.grid_size

        def pad(a: Floats, shape: tuple[int, ...], fill: float) -> Floats:
            return np.concatenate([a, np.full(shape, fill)], axis=-1)

        self.s_ratio = pad(self.s_ratio, (n, g, extra), 0.0)
        self.s_diff = pad(self.s_diff, (n, g, extra), 0.0)
        self.log_e_ratio = pad(self.log_e_ratio, (n, extra), 0.0)
        self.mass = pad(self.mass, (n, extra), 0.0)
        self.started = pad(self.started, (extra,), 0.0)
        self.pending_stable = pad(self.pending_stable, (n, extra), 0.0)
        self.pending_share = pad(self.pending_share, (n, extra), 0.0)
        self.opened = pad(self.opened, (n, extra), 0.0)
        self.last_bad = pad(self.last_bad, (n, extra), -np.inf)
        self.block = np.concatenate([self.block, np.zeros((4, n, extra), dtype=np.int64)], axis=2)

    def reset(self, rows: NDArray[np.intp], now: float = 0.0) -> None:
        """Evidence for these rows starts again from nothing (e = 1) at `now`."""
        self.s_ratio[:, :, rows] = 0.0
        self.s_diff[:, :, rows] = 0.0
        self.log_e_ratio[:, rows] = 0.0
        self.mass[:, rows] = 0.0
        self.started[rows] = now
        self.pending_stable[:, rows] = 0.0
        self.pending_share[:, rows] = 0.0
        self.block[:, :, rows] = 0
        self.opened[:, rows] = now
        self.last_bad[:, rows] = -np.inf

    def update(
        self,
        canary_requests: Ints,
        stable_requests: Ints,
        canary_bad: Ints,
        stable_bad: Ints,
        now: float = 0.0,
        rows: NDArray[np.intp] | None = None,
    ) -> NDArray[np.bool_]:
        """Add one pass at time `now`: request counts [rows] (or [tests, rows], when a test
        must not count some requests), bad counts [tests, rows], all since the last pass.

        `rows`: the counts are of these rows only (the others are unchanged: a row with no
        counts and no block `waiting` is unchanged by a pass). Returns `waiting` [rows]: rows
        whose block holds enough requests but waits for time (its bad requests' quiet) to close.
        """
        if rows is None:
            return self._update_all(canary_requests, stable_requests, canary_bad, stable_bad, now)
        idx: NDArray[np.intp] | slice = rows
        block = self.block[:, :, idx]
        last_bad = self.last_bad[:, idx]
        opened = self.opened[:, idx]
        block[0] += canary_requests
        block[1] += stable_requests
        block[2] += canary_bad
        block[3] += stable_bad
        bad_now = np.broadcast_to(np.asarray(canary_bad) + stable_bad > 0, last_bad.shape)
        last_bad[bad_now] = now
        total = block[0] + block[1]
        bad = block[2] + block[3]
        full = total >= self.block_requests
        closing = full
        if self.quiet_s > 0.0 or math.isfinite(self.max_slice_s):
            ready = bad == 0
            ready |= now - last_bad >= self.quiet_s
            ready |= now - opened >= self.max_slice_s
            closing = full & ready
        waiting: NDArray[np.bool_] = (full & ~closing).any(axis=0)
        if rows is not None:
            self.last_bad[:, rows] = last_bad
        if not closing.any():
            if rows is not None:
                self.block[:, :, rows] = block
            return waiting
        closed = block * closing
        block -= closed
        opened[closing] = now
        if rows is not None:
            self.block[:, :, rows] = block
            self.opened[:, rows] = opened
        n_c, n_s = closed[0], closed[1]
        # Pseudo counts of the difference test, pooled until the row's next bad slice.
        share = n_c / np.maximum(n_c + n_s, 1)
        self.pending_share[:, idx] += share * n_s
        self.pending_stable[:, idx] += n_s
        bad_closed = closed[2] + closed[3]
        self._take_bad_slices(closed, bad_closed, rows, now)
        return waiting

    def _update_all(
        self,
        canary_requests: Ints,
        stable_requests: Ints,
        canary_bad: Ints,
        stable_bad: Ints,
        now: float,
    ) -> NDArray[np.bool_]:
        """`update` of every row, in place and into reused buffers: at 20k rows a fresh
        temporary costs more (page faults under load) than the arithmetic on it."""
        block, shape, scratch = self.block, self.opened.shape, self._scratch
        block[0] += canary_requests
        block[1] += stable_requests
        block[2] += canary_bad
        block[3] += stable_bad
        bad_now = np.add(canary_bad, stable_bad, out=scratch.ints("bad_now", shape))
        np.copyto(self.last_bad, now, where=bad_now > 0)
        total = np.add(block[0], block[1], out=scratch.ints("total", shape))
        closing = np.greater_equal(total, self.block_requests, out=scratch.bools("closing", shape))
        waiting = np.zeros(shape[1], dtype=np.bool_)
        if self.quiet_s > 0.0 or math.isfinite(self.max_slice_s):
            bad = np.add(block[2], block[3], out=total)
            ready = np.equal(bad, 0, out=scratch.bools("ready", shape))
            ready |= now - self.last_bad >= self.quiet_s
            ready |= now - self.opened >= self.max_slice_s
            waiting = (closing & ~ready).any(axis=0)
            closing &= ready
        if not closing.any():
            return waiting
        closed = np.multiply(block, closing, out=scratch.ints("closed", block.shape))
        block -= closed
        np.copyto(self.opened, now, where=closing)
        n_c, n_s = closed[0], closed[1]
        # Pseudo counts of the difference test, pooled until the row's next bad slice.
        share = scratch.floats("share", shape)
        np.add(n_c, n_s, out=share)
        np.maximum(share, 1.0, out=share)
        np.divide(n_c, share, out=share)
        share *= n_s
        self.pending_share += share
        self.pending_stable += n_s
        bad_closed = np.add(closed[2], closed[3], out=bad_now)
        self._take_bad_slices(closed, bad_closed, None, now)
        return waiting

    def _take_bad_slices(
        self, closed: Ints, bad_closed: Ints, rows: NDArray[np.intp] | None, now: float
    ) -> None:
        """The closed slices with bad requests go into the test, test by test."""
        n_c, n_s = closed[0], closed[1]
        for t in range(self.n_tests):
            local = np.flatnonzero(bad_closed[t])
            if local.size:
                self._update_rows(
                    t,
                    local if rows is None else rows[local],
                    now,
                    n_c[t, local],
                    n_s[t, local],
                    closed[2, t, local],
                    bad_closed[t, local],
                )

    def _new_mass(self, t: int, rows: NDArray[np.intp], now: float) -> Floats:
        """Prior mass of the onsets since the rows' last slice with bad requests."""
        total = self.change.cumulative(now - self.started[rows])
        started = self.mass[t, rows]
        new: Floats = np.maximum(total - started, 0.0)
        self.mass[t, rows] = started + new
        return new

    def _update_rows(
        self,
        t: int,
        rows: NDArray[np.intp],
        now: float,
        n_c: Ints,
        n_s: Ints,
        x_c: Ints,
        bad: Ints,
    ) -> None:
        # A bad request is also a request; tolerate counts that disagree.
        n_c = np.maximum(n_c, x_c)
        denominator = np.maximum(n_s + n_c, bad)
        rho = n_c / denominator
        m = self._new_mass(t, rows, now)
        # Ratio test: F_g = 1 + lambda_g * (f - theta0), lambda_g = min(B * l_g, max_bet/theta0).
        r0 = self.min_ratio[t]
        theta0 = rho * r0 / (rho * (r0 - 1.0) + 1.0)
        np.clip(theta0, 1e-12, 1.0 - 1e-12, out=theta0)
        spread = self._grid_minus_1 * rho  # [grid, k]: 1 + rho*(r_g - 1) once 1 is added
        spread += 1.0
        bet = np.multiply(self._grid_col, rho)
        bet /= spread  # theta_g
        bet -= theta0
        bet *= bad / (theta0 * (1.0 - theta0))
        np.minimum(bet, self.max_bet / theta0, out=bet)
        bet *= x_c / bad - theta0
        bet += 1.0
        s = self.s_ratio[t][:, rows]
        s += m
        s *= bet
        np.minimum(s, _CEILING, out=s)
        self.s_ratio[t][:, rows] = s
        e = self._w_ratio[t] @ s
        e += 1.0 - self.mass[t, rows]
        self.log_e_ratio[t, rows] = np.log(np.maximum(e, 1e-300))
        # Difference test: the request-level likelihood ratio against r = 1, pseudo counts in.
        if self.min_diff[t] > 0.0:
            step: Floats = self._log_grid * x_c.astype(np.float64)
            np.log(spread, out=spread)
            spread *= bad
            step -= spread
            step -= self._pending_penalty(t, rows)
            np.minimum(step, _LOG_CEILING, out=step)
            np.exp(step, out=step)
            d = self.s_diff[t][:, rows]
            d += m
            d *= step
            np.minimum(d, _CEILING, out=d)
            self.s_diff[t][:, rows] = d
            self.pending_stable[t, rows] = 0.0
            self.pending_share[t, rows] = 0.0

    def _pending_penalty(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """D * S * ln(1 + rbar*(r_g - 1)) for the pooled pseudo counts not yet applied."""
        s = self.pending_stable[t, rows]
        rbar = self.pending_share[t, rows] / np.maximum(s, 1.0)
        penalty: Floats = np.log1p(self._grid_minus_1 * rbar)
        penalty *= self.min_diff[t] * s
        return penalty

    def log_e_diff(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """ln e-value of test t's difference null for these rows (+inf when min_diff is 0).

        With min_diff = 0 the difference null (p_c <= p_s) lies inside the ratio null
        (min_ratio >= 1), so the ratio test alone decides.
        """
        if self.min_diff[t] == 0.0:
            return np.full(rows.size, np.inf)
        v = self.s_diff[t][:, rows] * np.exp(-self._pending_penalty(t, rows))
        e = self._w_diff @ v
        e += 1.0 - self.mass[t, rows]
        out: Floats = np.log(np.maximum(e, 1e-300))
        return out

    def log_e(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """ln of the smaller e-value of the two nulls: what must reach ln(1/alpha)."""
        out: Floats = np.minimum(self.log_e_ratio[t, rows], self.log_e_diff(t, rows))
        return out

    def open_canary_bad(self) -> Ints:
        """Canary bad requests in the open slices [tests, rows]: not yet in the evidence."""
        out: Ints = self.block[2]
        return out
