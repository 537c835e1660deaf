"""The worker's side of the release-level analysis: per environment, blocks of requests and the
release grid's conditional-binomial log likelihoods (`ReleaseEvidence`), and the `EnvSummary` the
worker sends from a row of it. streams/release.py explains the statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from streams.promotion import LAMBDAS
from streams.release import ReleaseSettings
from streams.releaserecords import EnvSummary

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


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
