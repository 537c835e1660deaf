"""Is the canary good enough to promote? Anytime-valid upper bounds on how much worse it is.

Pure numpy, one object for every row and signal, fed the same per-pass increments as the
`DecisionEngine` (see `streams.fleet.Fleet.evaluate`). docs/decisions.md ("Promotion") explains
it for operators and proves the guarantee; in short, per row and signal:

**The null** ("the canary is worse than the tolerance"): in every block its bad rate is at
least ``tol_ratio`` x stable's **and** at least stable's + ``tol_diff``. A pass needs that null
rejected, which it is as soon as *either* part of the intersection is: an upper confidence
bound on the ratio below ``tol_ratio``, or one on the difference below ``tol_diff``. Each bound
is a (1 - beta/2) confidence sequence, so the chance of ever passing a canary inside the null
is at most beta/2 + beta/2 = beta, however often it is looked at.

**Ratio** (conditional binomial on the split of bad requests, as `streams.sequential`): in a
closed block with canary share rho, a canary `r` times worse puts each bad request in the canary
with probability theta(r) = rho*r / (rho*r + 1 - rho). ``loglik[g]`` accumulates the log
likelihood ratio of grid ratio r_g against r = 1 over blocks. The e-process for "ratio >= b" is
the mixture over the grid ratios below b of LR(r_g)/LR(b); it is a supermartingale for every
ratio >= b (theta(r) >= theta(b) only lowers each factor's mean). The reported bound is the
smallest grid ratio b such that every grid ratio >= b is rejected: "the canary's rate is below
b x stable's".

**Difference** (an exponential supermartingale, exact for binomial counts): for lambda > 0
and a block with n_c canary / n_s stable requests, x_c / x_s bad ones,

    exp(-lambda*x_c + x_s*ln(1 + (n_c/n_s)*(1 - e^-lambda)) + d*n_c*(1 - e^-lambda))

has mean <= 1 whenever p_c >= p_s + d, whatever p_s is: the stable term is chosen to cancel
the nuisance. ``L[l]`` keeps the first two terms summed over blocks, ``canary_requests`` the
sum of n_c; the mixture over a lambda grid is increasing in d, so the bound (the d where the
e-value reaches 2/beta) is found by bisection and the confidence set is one interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

# Rate ratios of the ratio confidence sequence: each is both a bound the sequence can report
# and an alternative for the bounds above it. Healthy canaries sit at 1: it gets the most weight.
RATIO_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
RATIO_WEIGHTS: tuple[float, ...] = (
    0.03, 0.07, 0.15, 0.15, 0.30, 0.12, 0.08, 0.04, 0.02, 0.02, 0.01, 0.01,
)  # fmt: skip
# Bets of the difference test; lambda = ln((p + d)/p) is best against tolerance d at base rate
# p (0.7 at 2 % slow and +1 point, 1.8 at 0.1 % errors and +0.5 points, 3.9 at 0.01 %).
LAMBDAS: tuple[float, ...] = (0.35, 0.7, 1.2, 1.8, 2.6, 3.9)
LAMBDA_WEIGHTS: tuple[float, ...] = (0.12, 0.22, 0.2, 0.22, 0.14, 0.1)

PASS, INCONCLUSIVE, ABORT = "pass", "inconclusive", "abort"


@dataclass(frozen=True, slots=True)
class PromotionSettings:
    """When a canary may be promoted.

    beta: the probability that a canary worse than the tolerance (on a signal) ever passes,
        however long it runs and however often it is looked at.
    tol_ratio, tol_diff: the errors signal's tolerance: a canary passes once it is shown to be
        below tol_ratio x stable's rate **or** below stable's + tol_diff (either suffices).
    latency_tol_ratio, latency_tol_diff: the same for slow requests.
    block_requests: requests per block (as `DecisionSettings.block_requests`).
    """

    beta: float = 0.01
    tol_ratio: float = 1.5
    tol_diff: float = 0.005
    latency_tol_ratio: float = 1.5
    latency_tol_diff: float = 0.01
    block_requests: int = 50

    def __post_init__(self) -> None:
        if not 0.0 < self.beta < 1.0:
            raise ValueError("beta must be in (0, 1)")
        for ratio in (self.tol_ratio, self.latency_tol_ratio):
            if not ratio > RATIO_GRID[0]:
                raise ValueError(f"tolerance ratios must exceed {RATIO_GRID[0]}")
        for diff in (self.tol_diff, self.latency_tol_diff):
            if not 0.0 <= diff <= 1.0:
                raise ValueError("tolerance differences must be in [0, 1]")

    @property
    def threshold(self) -> float:
        """ln(2/beta): each of the two bounds runs at level beta/2."""
        return math.log(2.0 / self.beta)

    def tolerances(self) -> tuple[tuple[float, float], ...]:
        """(tol_ratio, tol_diff) per signal, in `streams.decisions.SIGNALS` order."""
        return ((self.tol_ratio, self.tol_diff), (self.latency_tol_ratio, self.latency_tol_diff))


def _lse(v: Floats, axis: int = 0) -> Floats:
    top = np.max(v, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(v - safe), axis=axis)) + np.squeeze(safe, axis=axis)
    return np.asarray(out, dtype=np.float64)


class PromotionTest:
    """Confidence sequences for [tests x rows]: one test per signal, `update` per pass."""

    def __init__(
        self,
        capacity: int,
        tol_ratio: Sequence[float],
        tol_diff: Sequence[float],
        beta: float = 0.01,
        block_requests: int = 50,
        ratio_grid: Sequence[float] = RATIO_GRID,
        ratio_weights: Sequence[float] = RATIO_WEIGHTS,
        lambdas: Sequence[float] = LAMBDAS,
        lambda_weights: Sequence[float] = LAMBDA_WEIGHTS,
    ) -> None:
        if len(tol_ratio) != len(tol_diff) or not tol_ratio:
            raise ValueError("one tol_ratio and one tol_diff per test")
        if len(ratio_grid) != len(ratio_weights) or len(lambdas) != len(lambda_weights):
            raise ValueError("one weight per grid point")
        n = len(tol_ratio)
        self.n_tests = n
        self.beta = beta
        self.threshold = math.log(2.0 / beta)
        self.block_requests = max(1, int(block_requests))
        self.tol_ratio = np.asarray(tol_ratio, dtype=np.float64)
        self.tol_diff = np.asarray(tol_diff, dtype=np.float64)
        # Every tolerance is a grid point (weight 0 as an alternative), so "ratio >= tol" is one
        # of the bounds the sequence tests.
        points = dict(zip(ratio_grid, ratio_weights, strict=True))
        for tol in tol_ratio:
            points.setdefault(float(tol), 0.0)
        grid = np.asarray(sorted(points), dtype=np.float64)
        weights = np.asarray([points[g] for g in grid], dtype=np.float64)
        self.grid = grid
        self._log_r = np.log(grid)[:, None]
        self._r_minus_1 = (grid - 1.0)[:, None]
        # _log_w_below[b, a]: ln weight of alternative a in the mixture for bound b (a < b),
        # normalised over a < b; -inf elsewhere. Bound 0 has no alternatives (never rejected).
        g = grid.size
        log_w = np.full((g, g), -np.inf)
        for b in range(1, g):
            below = weights[:b]
            if below.sum() > 0:
                with np.errstate(divide="ignore"):
                    log_w[b, :b] = np.log(below / below.sum())
        self._log_w_below = log_w
        self._tol_index = np.asarray([int(np.searchsorted(grid, t)) for t in tol_ratio])
        lam = np.asarray(lambdas, dtype=np.float64)
        if np.any(lam <= 0):
            raise ValueError("lambdas must be > 0")
        self.lambdas = lam
        self._lam = lam[:, None]
        self._c = (-np.expm1(-lam))[:, None]  # 1 - e^-lambda
        lw = np.asarray(lambda_weights, dtype=np.float64)
        self._log_lw = np.log(lw / lw.sum())[:, None]
        self.loglik: Floats = np.zeros((n, g, capacity))
        self.diff_log: Floats = np.zeros((n, lam.size, capacity))
        self.canary_requests: Floats = np.zeros(capacity)
        self.block: Ints = np.zeros((2 + 2 * n, capacity), dtype=np.int64)
        # Latched: once a row's test passes it stays passed until `reset` (a decision).
        self.passed: NDArray[np.bool_] = np.zeros((n, capacity), dtype=np.bool_)

    @property
    def capacity(self) -> int:
        return int(self.canary_requests.shape[0])

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        n = self.n_tests
        self.loglik = np.concatenate([self.loglik, np.zeros((n, self.grid.size, extra))], axis=2)
        self.diff_log = np.concatenate(
            [self.diff_log, np.zeros((n, self.lambdas.size, extra))], axis=2
        )
        self.canary_requests = np.concatenate([self.canary_requests, np.zeros(extra)])
        self.block = np.concatenate(
            [self.block, np.zeros((self.block.shape[0], extra), dtype=np.int64)], axis=1
        )
        self.passed = np.concatenate([self.passed, np.zeros((n, extra), dtype=np.bool_)], axis=1)

    def reset(self, rows: NDArray[np.intp]) -> None:
        """Evidence for these rows starts again from nothing."""
        self.loglik[:, :, rows] = 0.0
        self.diff_log[:, :, rows] = 0.0
        self.canary_requests[rows] = 0.0
        self.block[:, rows] = 0
        self.passed[:, rows] = False

    def update(
        self,
        canary_requests: Ints,
        stable_requests: Ints,
        canary_bad: Ints,
        stable_bad: Ints,
        rows: NDArray[np.intp] | None = None,
    ) -> None:
        """Add one pass: request counts [rows], bad counts [tests, rows] (all since last pass);
        `rows`: the counts are of these rows only (the others are unchanged)."""
        n = self.n_tests
        idx: NDArray[np.intp] | slice = slice(None) if rows is None else rows
        block = self.block[:, idx]
        block[0] += canary_requests
        block[1] += stable_requests
        block[2 : 2 + n] += canary_bad
        block[2 + n :] += stable_bad
        closing = (block[0] + block[1]) >= self.block_requests
        closed = block * closing
        block -= closed
        if rows is not None:
            self.block[:, rows] = block
        n_c, n_s = closed[0], closed[1]
        self.canary_requests[idx] += n_c
        closed_local = np.flatnonzero(closing & (n_c > 0))
        closed_rows = closed_local if rows is None else rows[closed_local]
        for t in range(n):
            x_c, x_s = closed[2 + t], closed[2 + n + t]
            local = np.flatnonzero(x_c + x_s)
            if local.size:
                bad_rows = local if rows is None else rows[local]
                self._update_rows(t, bad_rows, n_c[local], n_s[local], x_c[local], x_s[local])
                # Only rows whose split evidence moved can change their ratio verdict, and a
                # pass is latched: rows already passed need no look.
                open_rows = bad_rows[~self.passed[t, bad_rows]]
                if open_rows.size:
                    self.passed[t, open_rows] |= self.ratio_pass(t, open_rows)
            # The difference evidence moves with every closed block holding canary requests.
            open_rows = closed_rows[~self.passed[t, closed_rows]]
            if open_rows.size:
                self.passed[t, open_rows] |= self.diff_pass(t, open_rows)

    def _update_rows(
        self, t: int, rows: NDArray[np.intp], n_c: Ints, n_s: Ints, x_c: Ints, x_s: Ints
    ) -> None:
        # A bad request is also a request; tolerate counts that disagree.
        n_c = np.maximum(n_c, x_c)
        n_s = np.maximum(n_s, x_s)
        bad = x_c + x_s
        rho = n_c / np.maximum(n_c + n_s, 1)
        step = x_c * self._log_r - bad * np.log1p(self._r_minus_1 * rho)
        self.loglik[t][:, rows] += step
        # Difference: -lambda*x_c + x_s*ln(1 + (n_c/n_s)*c); with n_s = 0 there is no x_s.
        odds = n_c / np.maximum(n_s, 1)
        diff = x_s * np.log1p(self._c * odds) - self._lam * x_c
        self.diff_log[t][:, rows] += diff

    # -- the ratio confidence sequence -------------------------------------------------------

    def log_e_ratio_all(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """ln e-value of "ratio >= grid[b]" for every grid bound b: [grid, rows]."""
        loglik = self.loglik[t][:, rows]  # [a, k]
        # v[b, a, k] = w[b, a] + loglik[a] - loglik[b]
        v = self._log_w_below[:, :, None] + loglik[None, :, :] - loglik[:, None, :]
        return _lse(v, axis=1)

    def ratio_rejected(self, t: int, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        """[grid, rows]: every grid bound >= grid[b] is rejected (a suffix of the grid)."""
        rejected = self.log_e_ratio_all(t, rows) >= self.threshold
        # Suffix-AND along the grid: reversed cumulative product.
        out: NDArray[np.bool_] = np.flip(np.cumprod(np.flip(rejected, axis=0), axis=0), axis=0)
        return out.astype(np.bool_)

    def ratio_bound(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """Upper confidence bound on the rate ratio (inf when nothing is rejected)."""
        suffix = self.ratio_rejected(t, rows)
        any_rejected = suffix.any(axis=0)
        first = np.argmax(suffix, axis=0)
        return np.where(any_rejected, self.grid[first], np.inf)

    def ratio_pass(self, t: int, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        """The ratio bound is at or below the tolerance: every grid ratio >= tol rejected.
        Only the bounds at and above the tolerance are computed."""
        first = int(self._tol_index[t])
        loglik = self.loglik[t][:, rows]
        v = self._log_w_below[first:, :, None] + loglik[None, :, :] - loglik[first:, None, :]
        out: NDArray[np.bool_] = np.asarray((_lse(v, axis=1) >= self.threshold).all(axis=0))
        return out

    def log_e_ratio_tol(self, t: int, rows: NDArray[np.intp]) -> Floats:
        """ln e-value of "ratio >= tol_ratio" for these rows."""
        out: Floats = self.log_e_ratio_all(t, rows)[self._tol_index[t]]
        return out

    # -- the difference confidence sequence --------------------------------------------------

    def log_e_diff(self, t: int, rows: NDArray[np.intp], d: Floats | float) -> Floats:
        """ln e-value of "p_c - p_s >= d" for these rows (d per row or one value)."""
        d_a = np.asarray(d, dtype=np.float64)
        v = self._log_lw + self.diff_log[t][:, rows] + self._c * (d_a * self.canary_requests[rows])
        return _lse(v, axis=0)

    def diff_pass(self, t: int, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = self.log_e_diff(t, rows, self.tol_diff[t]) >= self.threshold
        return out

    def diff_bound(self, t: int, rows: NDArray[np.intp], iterations: int = 40) -> Floats:
        """Upper confidence bound on p_c - p_s (1.0, no information, when not even d = 1 is
        rejected). The e-value increases with d: bisection on [-1, 1]."""
        lo = np.full(rows.size, -1.0)
        hi = np.full(rows.size, 1.0)
        known = self.log_e_diff(t, rows, hi) >= self.threshold
        for _ in range(iterations):
            mid = (lo + hi) / 2.0
            above = self.log_e_diff(t, rows, mid) >= self.threshold
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
        return np.where(known, hi, 1.0)

    def passes_now(self, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        """[tests, rows]: the null (worse than tolerance) is rejected by the evidence now."""
        return np.stack(
            [self.ratio_pass(t, rows) | self.diff_pass(t, rows) for t in range(self.n_tests)]
        )


# -- the verdict a gate serves ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalPass:
    signal: str
    verdict: str  # pass | inconclusive | abort
    ratio_bound: float | None  # the canary's rate is below this x stable's (None: no bound yet)
    diff_bound: float | None  # ... and below stable's + this (None: no bound yet)
    tol_ratio: float
    tol_diff: float
    canary_requests: int
    canary_bad: int
    stable_requests: int
    stable_bad: int
    abort_statistic: float
    abort_threshold: float


@dataclass(frozen=True, slots=True)
class VerdictSnapshot:
    """What canarywatch says about one Rollout's current canary revision: the gate's answer.

    `eta_s`: for an inconclusive canary, roughly how long a pass would take at its traffic so
    far if the canary is as good as stable (None: no traffic to estimate it from, or passed).
    """

    namespace: str
    rollout: str
    pod_hash: str
    verdict: str
    decided_at: float
    since_canary_start_s: float
    beta: float
    signals: tuple[SignalPass, ...]
    eta_s: float | None = None
    release: str = ""
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> str:
        return f"{self.namespace}/{self.rollout}"

    def same_verdict(self, other: VerdictSnapshot | None) -> bool:
        return (
            other is not None
            and other.pod_hash == self.pod_hash
            and other.verdict == self.verdict
            and [s.verdict for s in other.signals] == [s.verdict for s in self.signals]
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["signals"] = [asdict(s) for s in self.signals]
        return out

    def encode(self) -> bytes:
        # The same document as `to_json`, without `asdict`'s deep copies (it was most of the
        # cost of a worker publishing 500 snapshots a pass): fields read in declaration order.
        out = {name: getattr(self, name) for name in _SNAPSHOT_ORDER}
        out["signals"] = [{name: getattr(s, name) for name in _SIGNAL_ORDER} for s in self.signals]
        return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()

    @staticmethod
    def decode(raw: bytes) -> VerdictSnapshot:
        data = orjson.loads(raw)
        # Fields this codec does not know (a newer writer's) are ignored: compatible both ways.
        signals = tuple(
            SignalPass(**s)
            if s.keys() <= _SIGNAL_FIELDS
            else SignalPass(**{k: v for k, v in s.items() if k in _SIGNAL_FIELDS})
            for s in data.pop("signals")
        )
        known = (
            data
            if data.keys() <= _SNAPSHOT_FIELDS
            else {k: v for k, v in data.items() if k in _SNAPSHOT_FIELDS}
        )
        return VerdictSnapshot(signals=signals, **known)


_SIGNAL_ORDER = tuple(SignalPass.__dataclass_fields__)
_SNAPSHOT_ORDER = tuple(VerdictSnapshot.__dataclass_fields__)
_SIGNAL_FIELDS = frozenset(SignalPass.__dataclass_fields__)
_SNAPSHOT_FIELDS = frozenset(VerdictSnapshot.__dataclass_fields__) - {"signals"}


def finite_or_none(value: float, ceiling: float) -> float | None:
    return None if not math.isfinite(value) or value >= ceiling else float(value)


def eta_seconds(
    needed: float,
    canary_rate: float,
    stable_bad_rate: float,
    share: float,
    tol_ratio: float,
    tol_diff: float,
) -> float:
    """Seconds until a pass is expected, for a canary as good as stable, at these rates.

    `needed` nats are still missing; a canary request adds about d - p*ln(1 + d/p) nats to the
    difference test (its best bet), a bad request KL(theta(1) || theta(tol)) to the ratio test.
    An estimate for operators, not part of any guarantee.
    """
    if needed <= 0:
        return 0.0
    p = min(max(stable_bad_rate, 1e-6), 0.5)
    rates = []
    if canary_rate > 0 and tol_diff > 0:
        per_request = tol_diff - p * math.log1p(tol_diff / p)
        if per_request > 0:
            rates.append(per_request * canary_rate)
    if 0 < share < 1 and tol_ratio > 1 and canary_rate > 0:
        theta0 = share * tol_ratio / (share * tol_ratio + 1 - share)
        kl = share * math.log(share / theta0) + (1 - share) * math.log((1 - share) / (1 - theta0))
        bad_rate = p * canary_rate / share
        rates.append(kl * bad_rate)
    best = max(rates, default=0.0)
    return needed / best if best > 0 else math.inf
