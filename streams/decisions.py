"""Where counts become verdicts: one vectorised pass over every environment with a canary.

The engine keeps, per row, the counts accumulated since the canary revision started, and
judges each signal (5xx errors, slow requests) separately. The rule lives in `_judge`: the one
function to replace when the statistics change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from streams.events import Evidence
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


def bad_series(signal: int, arm: int) -> int:
    """Index of the bad-request series for a signal (0 errors, 1 latency) on an arm."""
    return arm * SERIES_PER_ARM + 1 + signal


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    min_canary_requests: int = 50  # below this a canary is inconclusive
    min_canary_bad: int = 5
    ratio: float = 3.0  # canary bad ratio must exceed stable's by this factor...
    min_abs_diff: float = 0.02  # ...and by this absolute difference
    platform_ratio: float = 0.05  # stable window bad ratio at which the platform is failing
    latency_objective_ms: float = 1000.0


@dataclass(frozen=True, slots=True)
class PassResult:
    """One evaluation pass. Arrays are indexed [signal, row] or [series, row]."""

    verdicts: NDArray[np.int8]
    statistic: NDArray[np.float64]
    threshold: float
    cumulative: Counts
    window: Counts
    started_at: NDArray[np.float64]
    now: float

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


class DecisionEngine:
    """Accumulates increments per canary revision and judges all rows at once."""

    def __init__(self, settings: DecisionSettings, capacity: int) -> None:
        self.settings = settings
        self.cumulative: Counts = np.zeros((N_SERIES, capacity), dtype=np.int64)
        self.started_at = np.zeros(capacity, dtype=np.float64)

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

    def reset(self, rows: NDArray[np.intp], now: float) -> None:
        """A canary revision started in these rows: evidence starts again from zero."""
        self.cumulative[:, rows] = 0
        self.started_at[rows] = now

    def evaluate(
        self, increments: Counts, window: Counts, active: NDArray[np.bool_], now: float
    ) -> PassResult:
        """Add the increments since the previous pass, then judge every active row."""
        self.cumulative += increments
        verdicts, statistic, threshold = _judge(self.cumulative, window, self.settings)
        verdicts[:, ~active] = Verdict.CONTINUE
        return PassResult(
            verdicts=verdicts,
            statistic=statistic,
            threshold=threshold,
            cumulative=self.cumulative,
            window=window,
            started_at=self.started_at,
            now=now,
        )


def _judge(
    cumulative: Counts, window: Counts, s: DecisionSettings
) -> tuple[NDArray[np.int8], NDArray[np.float64], float]:
    """Walking-skeleton rule: canary bad ratio well above stable's, with enough bad requests.

    statistic = canary bad ratio / stable bad ratio (floored), threshold = `s.ratio`.
    """
    n_signals = len(SIGNALS)
    rows = cumulative.shape[1]
    verdicts = np.full((n_signals, rows), Verdict.CONTINUE, dtype=np.int8)
    statistic = np.zeros((n_signals, rows), dtype=np.float64)
    canary_n = cumulative[CANARY_REQUESTS].astype(np.float64)
    stable_n = cumulative[STABLE_REQUESTS].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for signal in range(n_signals):
            canary_bad = cumulative[bad_series(signal, ARM_CANARY)]
            canary_ratio = np.where(canary_n > 0, canary_bad / canary_n, 0.0)
            stable_ratio = np.where(
                stable_n > 0, cumulative[bad_series(signal, ARM_STABLE)] / stable_n, 0.0
            )
            stable_window_ratio = np.where(
                window[STABLE_REQUESTS] > 0,
                window[bad_series(signal, ARM_STABLE)] / window[STABLE_REQUESTS],
                0.0,
            )
            statistic[signal] = canary_ratio / np.maximum(stable_ratio, 1e-4)
            worse = (
                (canary_bad >= s.min_canary_bad)
                & (canary_ratio > s.ratio * stable_ratio)
                & (canary_ratio - stable_ratio > s.min_abs_diff)
            )
            verdicts[signal, canary_n < s.min_canary_requests] = Verdict.INCONCLUSIVE
            verdicts[signal, worse] = Verdict.ABORT
            verdicts[signal, stable_window_ratio >= s.platform_ratio] = Verdict.PLATFORM
    return verdicts, statistic, s.ratio
