"""The gate's verdict snapshots for many rows at once, from the fleet's arrays in one pass.

`Fleet.pass_state` builds a `VerdictSnapshot` per canary in progress. Built one row at a time
(a scalar promotion bound, bisection and log-sum-exp per row and signal), 500 snapshots cost a
worker loading 5,000 canaries 35 % of its time (docs/performance.md). Here every array-derived
figure (bounds, e-values, evidence counts, window ratios) is computed for all requested rows
with one numpy call per signal; only the dataclasses are made per row. Same values as the
scalar form (tests/test_verdicts_vectorised.py holds the two side by side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from streams.decisions import SIGNALS, PassResult, Verdict, bad_series
from streams.events import RolloutState
from streams.promotion import (
    ABORT,
    INCONCLUSIVE,
    PASS,
    PromotionSettings,
    PromotionTest,
    SignalPass,
    VerdictSnapshot,
    eta_seconds,
    finite_or_none,
)
from streams.windows import ARM_CANARY, ARM_STABLE, CANARY_REQUESTS, STABLE_REQUESTS

_DECISION_NAMES = {int(v): v.name.lower() for v in Verdict}
_REASONS = {
    ABORT: "the streaming test aborted this canary",
    PASS: "every signal is shown to be within its tolerance",
    INCONCLUSIVE: "not yet shown to be within tolerance",
}


def _ratio(bad: NDArray[np.float64], total: NDArray[np.float64]) -> list[float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total != 0, bad / np.where(total != 0, total, 1.0), 0.0)
    values: list[float] = out.tolist()
    return values


def _bounds(
    test: PromotionTest, t: int, rows: NDArray[np.intp]
) -> tuple[list[float | None], list[float], NDArray[np.float64]]:
    """(ratio bounds as published, ln e-value of "ratio >= tol", diff bounds as floats)."""
    log_e = test.log_e_ratio_all(t, rows)  # [grid, rows], once for both uses
    rejected = log_e >= test.threshold
    suffix = np.flip(np.cumprod(np.flip(rejected, axis=0), axis=0), axis=0).astype(np.bool_)
    ratio = np.where(suffix.any(axis=0), test.grid[np.argmax(suffix, axis=0)], np.inf)
    ratio_out = [finite_or_none(r, math.inf) for r in ratio.tolist()]
    # The tolerance is a grid point (PromotionTest.__init__): its e-value is one of the rows.
    tol: list[float] = log_e[int(np.searchsorted(test.grid, test.tol_ratio[t]))].tolist()
    return ratio_out, tol, test.diff_bound(t, rows)


def verdict_snapshots(
    states: Sequence[RolloutState | None],
    test: PromotionTest,
    settings: PromotionSettings,
    result: PassResult,
    rows: Sequence[int],
) -> list[VerdictSnapshot]:
    """The snapshot of each row (a canary in progress: its state is known), in `rows` order."""
    index = np.asarray(rows, dtype=np.intp)
    if not index.size:
        return []
    k = index.size
    counts = result.cumulative[:, index]
    c = counts.astype(np.float64)
    w = result.window[:, index].astype(np.float64)
    share = _ratio(c[CANARY_REQUESTS], c[CANARY_REQUESTS] + c[STABLE_REQUESTS])
    elapsed_a = np.maximum(0.0, result.now - result.started_at[index].astype(np.float64))
    elapsed: list[float] = elapsed_a.tolist()
    codes = result.verdicts[:, index]
    aborted: list[bool] = (codes == Verdict.ABORT).any(axis=0).tolist()
    decisions = [[_DECISION_NAMES[int(v)] for v in col] for col in codes.T.tolist()]
    needed = result.needed
    width = needed.shape[1] if needed.ndim == 2 else 0
    inside = index < width
    needed_rows: list[list[int | None]] = [[None] * len(SIGNALS) for _ in range(k)]
    for t in range(len(SIGNALS)):
        if inside.any():
            values = needed[t, index[inside]].tolist()
            for j, value in zip(np.flatnonzero(inside).tolist(), values, strict=True):
                needed_rows[j][t] = int(value)
    c_req_i: list[int] = counts[CANARY_REQUESTS].tolist()
    s_req_i: list[int] = counts[STABLE_REQUESTS].tolist()
    per_signal: list[list[SignalPass]] = [[] for _ in range(k)]
    etas: list[list[float]] = [[] for _ in range(k)]
    windows: list[list[list[float]]] = [[] for _ in range(k)]
    for t, name in enumerate(SIGNALS):
        tol_ratio, tol_diff = settings.tolerances()[t]
        cb, sb = bad_series(t, ARM_CANARY), bad_series(t, ARM_STABLE)
        c_bad: list[int] = counts[cb].tolist()
        s_bad: list[int] = counts[sb].tolist()
        statistic: list[float] = result.statistic[t, index].astype(np.float64).tolist()
        signal_abort: list[bool] = (codes[t] == Verdict.ABORT).tolist()
        passed: list[bool] = test.passed[t, index].tolist()
        ratio_bounds, log_e_tol, diff_a = _bounds(test, t, index)
        diff_bounds = [finite_or_none(d, 1.0) for d in diff_a.tolist()]
        have: list[float] = np.maximum(test.log_e_diff(t, index, tol_diff), log_e_tol).tolist()
        cw = _ratio(w[cb], w[CANARY_REQUESTS])
        sw = _ratio(w[sb], w[STABLE_REQUESTS])
        threshold = round(result.threshold, 6)
        for j in range(k):
            if signal_abort[j]:
                verdict = ABORT
            elif passed[j]:
                verdict = PASS
            else:
                verdict = INCONCLUSIVE
                etas[j].append(
                    eta_seconds(
                        test.threshold - have[j],
                        c_req_i[j] / elapsed[j] if elapsed[j] > 0 else 0.0,
                        s_bad[j] / max(s_req_i[j], 1),
                        share[j],
                        tol_ratio,
                        tol_diff,
                    )
                )
            per_signal[j].append(
                SignalPass(
                    signal=name,
                    verdict=verdict,
                    ratio_bound=ratio_bounds[j],
                    diff_bound=diff_bounds[j],
                    tol_ratio=tol_ratio,
                    tol_diff=tol_diff,
                    canary_requests=c_req_i[j],
                    canary_bad=c_bad[j],
                    stable_requests=s_req_i[j],
                    stable_bad=s_bad[j],
                    abort_statistic=round(statistic[j], 6),
                    abort_threshold=threshold,
                )
            )
            windows[j].append([round(cw[j], 6), round(sw[j], 6)])
    out = []
    for j, row in enumerate(index.tolist()):
        state = states[row]
        assert state is not None
        signals = tuple(per_signal[j])
        if aborted[j]:
            verdict = ABORT
        elif all(s.verdict == PASS for s in signals):
            verdict = PASS
        else:
            verdict = INCONCLUSIVE
        eta = max(etas[j]) if etas[j] else None
        out.append(
            VerdictSnapshot(
                namespace=state.namespace,
                rollout=state.name,
                pod_hash=state.current_pod_hash,
                verdict=verdict,
                decided_at=result.now,
                since_canary_start_s=round(elapsed[j], 3),
                beta=settings.beta,
                signals=signals,
                eta_s=round(eta, 1) if eta is not None and math.isfinite(eta) else None,
                release=state.release,
                reason=_REASONS[verdict],
                extra={
                    "step_index": state.step_index,
                    "canary_weight": state.canary_weight,
                    "decision": decisions[j],
                    "needed_bad": needed_rows[j],
                    "window": windows[j],
                },
            )
        )
    return out
