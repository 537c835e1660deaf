"""Where counts become verdicts: one vectorised pass over every environment with a canary.

The engine keeps, per row, the counts accumulated since the canary revision started and an
anytime-valid sequential test per signal (`streams.sequential`), and turns them into a verdict
per signal: abort, continue, inconclusive (too little traffic to tell) or platform (stable is
failing too: not the canary's fault). The sliding windows only feed the platform verdict and
the exported ratios; the false-abort guarantee rests on the sequential test alone.
docs/decisions.md explains the statistics, the guarantee and the settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from streams.events import Evidence
from streams.rowstate import export_fields, import_fields, row_width
from streams.sequential import DEFAULT_RATIOS, DEFAULT_WEIGHTS, ChangePrior, Mixture, SplitTest
from streams.windows import (
    ARM_CANARY,
    ARM_STABLE,
    CANARY_REQUESTS,
    N_SERIES,
    SERIES_PER_ARM,
    STABLE_REQUESTS,
    Counts,
)

SIGNALS = ("errors", "latency")


class Verdict(IntEnum):
    CONTINUE = 0  # evidence so far says the canary is fine
    INCONCLUSIVE = 1  # too little traffic to tell yet; never an abort
    PLATFORM = 2  # stable fails as much as the canary: not the canary's fault
    ABORT = 3
    HOLD = 4  # stable degraded while the canary runs: shared breakage or an outage; pause


def bad_series(signal: int, arm: int) -> int:
    """Index of the bad-request series for a signal (0 errors, 1 latency) on an arm."""
    return arm * SERIES_PER_ARM + 1 + signal


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    """What the engine is allowed to conclude, and from how much.

    alpha: probability that a canary revision which is no worse than stable by more than the
        minimum regression is ever aborted, by either signal, however long it runs and however
        often it is evaluated (each signal gets alpha/2). It is a per-revision guarantee: across
        a fleet of N healthy rollouts expect at most alpha*N false aborts (~1 % of them, in
        practice far fewer because a healthy canary sits well inside the null), not one in total.
    min_ratio, min_diff: the smallest error regression worth an abort. The null hypothesis is
        "canary rate <= min_ratio x stable's  OR  canary rate <= stable's + min_diff": a canary
        must be worse by both the ratio and the absolute difference to be aborted, so 0.10 % ->
        0.12 % (1.2x, +0.02 points) is never worth one.
    latency_min_ratio, latency_min_diff: the same for the share of requests slower than
        `latency_objective_ms`, whose base rate is higher.
    mixture_ratios, mixture_weights: the alternatives the sequential test bets on.
    block_requests: the test reads the canary share over slices of at least this many requests
        (a slice closes at the end of a pass); a quiet environment's slice spans minutes.
    quiet_s, max_slice_s: a slice holding bad requests closes once its last bad request is
        quiet_s old (bursts stay in one slice: the test counts a burst once), or at max_slice_s.
    max_bet: what one slice can contribute: at most 1 + max_bet*(1-theta0)/theta0 (< 1/theta0).
    change_start, change_scale_s, change_tail: prior of when a regression begins (mass
        change_start at the canary's start, survival (1-start)(1+t/scale)^-tail after it).
    latency_grace_s: after a canary starts or steps (new pods), this long the latency test
        counts nothing on either arm: warm-ups do not abort.
    shared_policy: "hold" (stable degraded while the canary runs: verdict HOLD, a pause is
        requested and no abort is issued) or "platform" (verdict PLATFORM, as before).
    clear_ratio, clear_diff: a "clear regression" (rate max(clear_ratio x stable's, stable's +
        clear_diff)): while even one of those could not yet have produced the canary bad
        requests the test needs, the verdict is INCONCLUSIVE rather than CONTINUE.
    platform_*: stable is failing when its window bad ratio is >= platform_ratio, or >=
        platform_factor x its own level before the window + platform_min_diff, with at least
        platform_min_bad bad requests in the window; with the canary's window ratio no worse
        than platform_canary_factor x stable's (plus platform_canary_slack bad requests), the
        verdict is PLATFORM and no abort is issued.
    """

    alpha: float = 0.01
    min_ratio: float = 1.25
    min_diff: float = 0.0002
    latency_min_ratio: float = 1.25
    latency_min_diff: float = 0.002
    latency_objective_ms: float = 1000.0
    mixture_ratios: tuple[float, ...] = DEFAULT_RATIOS
    mixture_weights: tuple[float, ...] = DEFAULT_WEIGHTS
    block_requests: int = 20
    quiet_s: float = 1.0
    max_slice_s: float = 2.0
    max_bet: float = 0.9
    change_start: float = 0.5
    change_scale_s: float = 600.0
    change_tail: float = 0.5
    latency_grace_s: float = 60.0
    shared_policy: str = "hold"
    clear_ratio: float = 10.0
    clear_diff: float = 0.01
    platform_ratio: float = 0.05
    platform_factor: float = 3.0
    platform_min_diff: float = 0.01
    platform_min_bad: int = 5
    platform_baseline_requests: int = 1000
    platform_canary_factor: float = 2.0
    platform_canary_slack: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        Mixture(self.mixture_ratios, self.mixture_weights)  # validates
        ChangePrior(self.change_start, self.change_scale_s, self.change_tail)
        if self.shared_policy not in ("hold", "platform"):
            raise ValueError("shared_policy must be 'hold' or 'platform'")

    @property
    def threshold(self) -> float:
        """Abort when ln(e-value) reaches this: ln(1/(alpha per signal))."""
        return math.log(len(SIGNALS) / self.alpha)

    def min_regression(self, signal: int) -> tuple[float, float]:
        if signal == 0:
            return self.min_ratio, self.min_diff
        return self.latency_min_ratio, self.latency_min_diff


@dataclass(frozen=True, slots=True)
class PassResult:
    """One evaluation pass. Arrays are indexed [signal, row] or [series, row].

    `statistic` is ln of the sequential test's e-value: the smaller of the ratio and the
    difference tests' once the ratio test reaches `threshold` (= ln(2/alpha)), the ratio test's
    alone below it; an abort needs statistic >= threshold. It covers the closed blocks (see
    `streams.sequential`), `cumulative` every request counted so far.
    """

    verdicts: NDArray[np.int8]
    statistic: NDArray[np.float64]
    threshold: float
    cumulative: Counts
    window: Counts
    started_at: NDArray[np.float64]
    now: float
    # Canary bad requests the test needs at least, at the canary's share so far [signal, row].
    needed: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    def evidence(self, row: int, signal: int) -> Evidence:
        c = self.cumulative[:, row]
        w = self.window[:, row]
        total = int(c[CANARY_REQUESTS] + c[STABLE_REQUESTS])
        return Evidence(
            signal=SIGNALS[signal],
            canary_requests=int(c[CANARY_REQUESTS]),
            canary_bad=int(c[bad_series(signal, ARM_CANARY)]),
            stable_requests=int(c[STABLE_REQUESTS]),
            stable_bad=int(c[bad_series(signal, ARM_STABLE)]),
            statistic=float(self.statistic[signal, row]),
            threshold=self.threshold,
            canary_share=float(c[CANARY_REQUESTS]) / total if total else 0.0,
            since_canary_start_s=max(0.0, self.now - float(self.started_at[row])),
            canary_window_ratio=_ratio(w[bad_series(signal, ARM_CANARY)], w[CANARY_REQUESTS]),
            stable_window_ratio=_ratio(w[bad_series(signal, ARM_STABLE)], w[STABLE_REQUESTS]),
        )


def _ratio(bad: np.int64, total: np.int64) -> float:
    return float(bad) / float(total) if total else 0.0


# The bad-request series of both signals, as slices (views, not copies): [signal, row].
_CANARY_BAD = slice(bad_series(0, ARM_CANARY), bad_series(len(SIGNALS), ARM_CANARY))
_STABLE_BAD = slice(bad_series(0, ARM_STABLE), bad_series(len(SIGNALS), ARM_STABLE))


_NEEDED_MAX = 256


def needed_canary_bad(threshold: float, min_ratio: float, share: float) -> int:
    """Canary bad requests the ratio test needs at least at canary share `share` (see
    `DecisionEngine._needed`); `_NEEDED_MAX` when there is no stable traffic to compare."""
    if share <= 0.0:
        return 1
    if share >= 1.0:
        return _NEEDED_MAX
    gain = math.log1p(share * (min_ratio - 1.0)) - math.log(share) - math.log(min_ratio)
    return int(min(_NEEDED_MAX, max(1, math.ceil(threshold / gain - 1e-12))))


def _needed_table(threshold: float, min_ratio: float) -> NDArray[np.float64]:
    """table[k-1]: the largest share at which k canary bad requests can be enough.

    k suffice iff ln(1/theta0(rho)) >= threshold/k iff theta0(rho) <= c = exp(-threshold/k),
    and theta0 = rho*m / (rho*m + 1 - rho) <= c iff rho <= c / (m*(1 - c) + c).
    """
    c = np.exp(-threshold / np.arange(1, _NEEDED_MAX, dtype=np.float64))
    table: NDArray[np.float64] = c / (min_ratio * (1.0 - c) + c)
    return table


class DecisionEngine:
    """Accumulates increments per canary revision and judges all rows at once."""

    def __init__(self, settings: DecisionSettings, capacity: int) -> None:
        self.settings = settings
        ratios, diffs = zip(*(settings.min_regression(s) for s in range(len(SIGNALS))), strict=True)
        self.test = SplitTest(
            capacity,
            min_ratio=ratios,
            min_diff=diffs,
            mixture=Mixture(settings.mixture_ratios, settings.mixture_weights),
            block_requests=settings.block_requests,
            quiet_s=settings.quiet_s,
            max_slice_s=settings.max_slice_s,
            max_bet=settings.max_bet,
            change=ChangePrior(
                settings.change_start, settings.change_scale_s, settings.change_tail
            ),
        )
        self.grace_until = np.zeros(capacity, dtype=np.float64)
        self.held = np.zeros(capacity, dtype=np.bool_)
        self.cumulative: Counts = np.zeros((N_SERIES, capacity), dtype=np.int64)
        self.started_at = np.zeros(capacity, dtype=np.float64)
        # An abort is a decision: once taken for a revision it stays, until `reset`.
        self.aborted = np.zeros((len(SIGNALS), capacity), dtype=np.bool_)
        self._min_ratio = np.asarray(ratios, dtype=np.float64)
        self._needed_table = np.stack(
            [_needed_table(settings.threshold, m) for m in self._min_ratio]
        )

    # Every per-row array of the engine (row axis last); the test's follow (`SplitTest`).
    ROW_FIELDS: tuple[str, ...] = ("grace_until", "held", "cumulative", "started_at", "aborted")

    def export_rows(self, rows: NDArray[np.intp]) -> NDArray[np.float64]:
        """[rows, width]: these rows' evidence (engine and test), for `import_rows`."""
        mine = export_fields(self, self.ROW_FIELDS, rows)
        return np.concatenate([mine, self.test.export_rows(rows)], axis=1)

    def import_rows(self, rows: NDArray[np.intp], data: NDArray[np.float64]) -> None:
        k = row_width(self, self.ROW_FIELDS)
        import_fields(self, self.ROW_FIELDS, rows, data[:, :k])
        self.test.import_rows(rows, data[:, k:])

    @property
    def row_width(self) -> int:
        return row_width(self, self.ROW_FIELDS) + self.test.row_width

    @property
    def capacity(self) -> int:
        return int(self.cumulative.shape[1])

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.cumulative = np.concatenate(
            [self.cumulative, np.zeros((N_SERIES, extra), dtype=np.int64)], axis=1
        )
        self.started_at = np.concatenate([self.started_at, np.zeros(extra)])
        self.aborted = np.concatenate(
            [self.aborted, np.zeros((len(SIGNALS), extra), dtype=np.bool_)], axis=1
        )
        self.grace_until = np.concatenate([self.grace_until, np.zeros(extra)])
        self.held = np.concatenate([self.held, np.zeros(extra, dtype=np.bool_)])
        self.test.grow(capacity)

    def reset(self, rows: NDArray[np.intp], now: float) -> None:
        """A canary revision started in these rows: evidence starts again from zero."""
        self.cumulative[:, rows] = 0
        self.started_at[rows] = now
        self.aborted[:, rows] = False
        self.held[rows] = False
        self.test.reset(rows, now)
        self.start_grace(rows, now)

    def start_grace(self, rows: NDArray[np.intp], now: float) -> None:
        """New pods in these rows (a canary start or step): the latency test counts nothing on
        either arm for `latency_grace_s`."""
        self.grace_until[rows] = now + self.settings.latency_grace_s

    def evaluate(
        self, increments: Counts, window: Counts, active: NDArray[np.bool_], now: float
    ) -> PassResult:
        """Add the increments since the previous pass, then judge every active row."""
        self._accumulate(None, increments, now)
        return self.judge(window, active, now, latch=True)

    def step_rows(
        self,
        rows: NDArray[np.intp],
        increments: Counts,
        window: Counts,
        active: NDArray[np.bool_],
        now: float,
    ) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
        """One closed event-time slice of these rows only (increments, window, active [.., rows]):
        add it and latch aborts and holds of these rows. Rows not listed, with no counts and no
        block waiting to close, would not change in a pass: a slice costs O(its rows).
        Returns (rows newly aborted, waiting [rows]: blocks that close later by time alone)."""
        waiting = self._accumulate(rows, increments, now)
        platform, degraded = self._platform(window, self.cumulative[:, rows])
        if self.settings.shared_policy == "hold":
            self.held[rows] |= (degraded & platform).any(axis=0) & active
        before = self.aborted[:, rows].any(axis=0)
        self._aborts(self.test.log_e_ratio[:, rows], platform, active, rows, latch=True)
        new: NDArray[np.intp] = rows[self.aborted[:, rows].any(axis=0) & ~before]
        return new, waiting

    def _accumulate(
        self, rows: NDArray[np.intp] | None, increments: Counts, now: float
    ) -> NDArray[np.bool_]:
        idx: NDArray[np.intp] | slice = slice(None) if rows is None else rows
        self.cumulative[:, idx] += increments
        canary_bad = increments[_CANARY_BAD]
        stable_bad = increments[_STABLE_BAD]
        canary_req: NDArray[np.int64] = increments[CANARY_REQUESTS]
        stable_req: NDArray[np.int64] = increments[STABLE_REQUESTS]
        grace = self.grace_until[idx] > now
        if grace.any():
            # Warm-up: the latency test sees neither requests nor slow ones of these rows.
            keep = ~grace
            canary_req = np.stack([canary_req, canary_req * keep])
            stable_req = np.stack([stable_req, stable_req * keep])
            canary_bad = canary_bad.copy()
            stable_bad = stable_bad.copy()
            canary_bad[1] *= keep
            stable_bad[1] *= keep
        return self.test.update(canary_req, stable_req, canary_bad, stable_bad, now, rows=rows)

    def _aborts(
        self,
        statistic: NDArray[np.float64],
        platform: NDArray[np.bool_],
        active: NDArray[np.bool_],
        rows: NDArray[np.intp] | None,
        *,
        latch: bool,
    ) -> None:
        """Both nulls must be rejected; the difference null is computed only where the ratio
        null already is (rare). With `latch` a new abort is taken: an abort is a decision, it
        stays. `statistic` [signal, rows] is updated in place."""
        threshold = self.settings.threshold
        for signal in range(len(SIGNALS)):
            candidates = np.flatnonzero(statistic[signal] >= threshold)
            candidates = candidates[active[candidates]]
            if candidates.size:
                both = self.test.log_e(signal, candidates if rows is None else rows[candidates])
                statistic[signal, candidates] = both
                if latch:
                    new = candidates[(both >= threshold) & ~platform[signal, candidates]]
                    self.aborted[signal, new if rows is None else rows[new]] = True

    def judge(
        self, window: Counts, active: NDArray[np.bool_], now: float, *, latch: bool = False
    ) -> PassResult:
        """Every active row's verdicts at `now`, from the evidence so far. With `latch`, new
        aborts and holds are taken here (processing time); without, only step_rows takes them
        (event time: decisions are made at slice ends, whatever the passes)."""
        s = self.settings
        threshold = s.threshold
        cum = self.cumulative
        canary_n = cum[CANARY_REQUESTS]
        stable_n = cum[STABLE_REQUESTS]
        share = canary_n / np.maximum(canary_n + stable_n, 1)
        statistic = self.test.log_e_ratio.copy()
        platform, degraded = self._platform(window, cum)
        if latch and s.shared_policy == "hold":
            self.held |= (degraded & platform).any(axis=0) & active
        self._aborts(statistic, platform, active, None, latch=latch)
        needed = self._needed(share)
        inconclusive = self._inconclusive(needed, canary_n, stable_n)
        # CONTINUE only when the evidence says so: none of the canary's bad requests waits in
        # an open slice, and the e-value does not lean towards a regression (ln e <= 0).
        inconclusive |= self.test.open_canary_bad() > 0
        inconclusive |= statistic > 0.0
        # Verdict values order their precedence: ABORT > PLATFORM > INCONCLUSIVE > CONTINUE.
        verdicts = inconclusive.view(np.int8).copy()
        np.maximum(verdicts, platform.view(np.int8) * np.int8(Verdict.PLATFORM), out=verdicts)
        np.maximum(verdicts, self.aborted.view(np.int8) * np.int8(Verdict.ABORT), out=verdicts)
        held = self.held & ~self.aborted.any(axis=0)
        verdicts[:, held] = np.int8(Verdict.HOLD)
        verdicts *= active
        return PassResult(
            verdicts=verdicts,
            statistic=statistic,
            threshold=threshold,
            cumulative=self.cumulative,
            window=window,
            started_at=self.started_at,
            now=now,
            needed=needed,
        )

    def _needed(self, share: NDArray[np.float64]) -> NDArray[np.int64]:
        """Fewest canary bad requests with which each signal's test could abort [signal, row].

        Each canary bad request raises the ratio test's likelihood ratio by at most
        1/theta0, theta0 = rho*min_ratio / (rho*min_ratio + 1 - rho) at canary share rho:
        ceil(threshold / ln(1/theta0)) of them are needed (at least ln(1/alpha)/ln(1/rho), as
        for any test). The count is a step function of rho, looked up in a precomputed table.
        """
        tables = self._needed_table
        first = np.searchsorted(tables[0], share, side="left")
        first += 1
        if len(tables) > 1 and np.array_equal(tables[0], tables[1]):
            return np.broadcast_to(first, (len(SIGNALS), first.size))
        rest = [np.searchsorted(t, share, side="left") + 1 for t in tables[1:]]
        return np.stack([first, *rest])

    def _inconclusive(
        self, needed: NDArray[np.int64], canary_n: Counts, stable_n: Counts
    ) -> NDArray[np.bool_]:
        """Too little traffic to tell [signal, row]: the canary has fewer bad requests than the
        test needs, and even a clear regression would by now expect fewer than that."""
        s = self.settings
        cum = self.cumulative
        stable_rate = cum[_STABLE_BAD] / np.maximum(stable_n, 1)
        clear = stable_rate * s.clear_ratio
        stable_rate += s.clear_diff
        np.maximum(clear, stable_rate, out=clear)
        np.minimum(clear, 1.0, out=clear)
        clear *= canary_n
        inconclusive: NDArray[np.bool_] = cum[_CANARY_BAD] < needed
        inconclusive &= clear < needed
        return inconclusive

    def _platform(
        self, window: Counts, cumulative: Counts
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Stable failing in the sliding window, and the canary not clearly worse [signal, row];
        and whether stable degraded while the canary runs (above its own level since the canary
        started, on platform_baseline_requests): not a platform that was failing already.

        Failing: at least platform_min_bad bad requests in the window, and a window ratio
        >= platform_ratio, or >= platform_factor x stable's level since the canary started
        (before the window, once it rests on platform_baseline_requests) + platform_min_diff.
        Written without divisions: every term is multiplied out by the request counts.
        """
        s = self.settings
        w_bad = window[_STABLE_BAD]
        w_n = window[STABLE_REQUESTS]
        # Stable's own level since the canary started, before the window.
        before_n = cumulative[STABLE_REQUESTS] - w_n
        before_bad = cumulative[_STABLE_BAD] - w_bad
        np.maximum(before_bad, 0, out=before_bad)
        bar = before_bad * s.platform_factor
        bar += before_n * s.platform_min_diff
        bar *= w_n
        degraded: NDArray[np.bool_] = w_bad * before_n.astype(np.float64) >= bar
        degraded &= before_n >= s.platform_baseline_requests
        degraded &= w_bad >= s.platform_min_bad
        elevated = degraded | (w_bad >= s.platform_ratio * w_n)
        elevated &= w_bad >= s.platform_min_bad
        # The canary is not clearly worse: its window bad count is within
        # platform_canary_factor x stable's window ratio (plus a few requests of slack).
        canary_bar = w_bad * (s.platform_canary_factor * window[CANARY_REQUESTS])
        canary_bar /= np.maximum(w_n, 1)
        canary_bar += s.platform_canary_slack
        elevated &= window[_CANARY_BAD] <= canary_bar
        return elevated, degraded
