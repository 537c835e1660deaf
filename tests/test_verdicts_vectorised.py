"""The vectorised verdict snapshots (streams/verdictrows.py) against the per-row form they
replaced, kept here as the reference: same snapshot for every row, every pass."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streams.decisions import SIGNALS, PassResult, Verdict
from streams.events import RolloutState
from streams.fleet import Fleet
from streams.promotion import (
    ABORT,
    INCONCLUSIVE,
    PASS,
    SignalPass,
    VerdictSnapshot,
    eta_seconds,
    finite_or_none,
)
from tests.test_fleet import lines


def reference_verdict(fleet: Fleet, row: int, result: PassResult) -> VerdictSnapshot:
    """One row at a time, scalar bounds: `Fleet.verdict_of` before it was vectorised."""
    state = fleet.attribution.states[row]
    assert state is not None
    p = fleet.promotion_settings
    test = fleet.promotion
    index = np.asarray([row], dtype=np.intp)
    elapsed = max(0.0, result.now - float(result.started_at[row]))
    aborted = bool((result.verdicts[:, row] == Verdict.ABORT).any())
    signals = []
    etas = []
    for t, name in enumerate(SIGNALS):
        evidence = result.evidence(row, t)
        tol_ratio, tol_diff = p.tolerances()[t]
        if result.verdicts[t, row] == Verdict.ABORT:
            verdict = ABORT
        elif bool(test.passed[t, row]):
            verdict = PASS
        else:
            verdict = INCONCLUSIVE
            have = max(
                float(test.log_e_diff(t, index, tol_diff)[0]),
                float(test.log_e_ratio_tol(t, index)[0]),
            )
            etas.append(
                eta_seconds(
                    test.threshold - have,
                    evidence.canary_requests / elapsed if elapsed > 0 else 0.0,
                    evidence.stable_bad / max(evidence.stable_requests, 1),
                    evidence.canary_share,
                    tol_ratio,
                    tol_diff,
                )
            )
        signals.append(
            SignalPass(
                signal=name,
                verdict=verdict,
                ratio_bound=finite_or_none(float(test.ratio_bound(t, index)[0]), math.inf),
                diff_bound=finite_or_none(float(test.diff_bound(t, index)[0]), 1.0),
                tol_ratio=tol_ratio,
                tol_diff=tol_diff,
                canary_requests=evidence.canary_requests,
                canary_bad=evidence.canary_bad,
                stable_requests=evidence.stable_requests,
                stable_bad=evidence.stable_bad,
                abort_statistic=round(evidence.statistic, 6),
                abort_threshold=round(evidence.threshold, 6),
            )
        )
    if aborted:
        verdict, reason = ABORT, "the streaming test aborted this canary"
    elif all(s.verdict == PASS for s in signals):
        verdict, reason = PASS, "every signal is shown to be within its tolerance"
    else:
        verdict, reason = INCONCLUSIVE, "not yet shown to be within tolerance"
    eta = max(etas) if etas else None
    needed = result.needed
    width = needed.shape[1] if needed.ndim == 2 else 0
    return VerdictSnapshot(
        namespace=state.namespace,
        rollout=state.name,
        pod_hash=state.current_pod_hash,
        verdict=verdict,
        decided_at=result.now,
        since_canary_start_s=round(elapsed, 3),
        beta=p.beta,
        signals=tuple(signals),
        eta_s=round(eta, 1) if eta is not None and math.isfinite(eta) else None,
        release=state.release,
        reason=reason,
        extra={
            "step_index": state.step_index,
            "canary_weight": state.canary_weight,
            "decision": [Verdict(int(v)).name.lower() for v in result.verdicts[:, row]],
            "needed_bad": [
                int(needed[t, row]) if row < width else None for t in range(len(SIGNALS))
            ],
            "window": [
                [round(e.canary_window_ratio, 6), round(e.stable_window_ratio, 6)]
                for e in (result.evidence(row, t) for t in range(len(SIGNALS)))
            ],
        },
    )


def mixed_fleet() -> Fleet:
    """Canaries that pass, abort, stay quiet, fail with stable (platform), or see no line."""
    fleet = Fleet()
    kinds = ("busy", "bad", "quiet", "plat", "idle", "slow")
    for i, ns in enumerate(kinds):
        fleet.apply_rollout(
            RolloutState(ns, "web", f"c{i}", f"s{i}", step_index=i, canary_weight=20), 0.0
        )
    return fleet


def traffic(t: int) -> list[bytes]:
    batch = lines("busy", "c0", 40, 0, t) + lines("busy", "s0", 160, 0, t)
    batch += lines("bad", "c1", 40, 10, t) + lines("bad", "s1", 160, 0, t)
    batch += lines("plat", "c3", 10, 4, t) + lines("plat", "s3", 40, 16, t)
    batch += lines("slow", "c5", 20, 1, t) + lines("slow", "s5", 80, 1, t)
    if t % 7 == 0:
        batch += lines("quiet", "c2", 1, 0, t) + lines("quiet", "s2", 4, 0, t)
    return batch


def test_every_snapshot_equals_the_per_row_reference_at_every_pass() -> None:
    fleet = mixed_fleet()
    verdicts: set[str] = set()
    for t in range(1, 90):
        fleet.count(traffic(t), float(t))
        result, _ = fleet.evaluate(float(t))
        rows = fleet.verdict_codes()[0].tolist()
        got = fleet.pass_state()
        want = [reference_verdict(fleet, row, result) for row in rows]
        assert got == want, t
        verdicts |= {s.verdict for s in got}
        # A subset, in any order, is the same as those rows alone.
        some = rows[::-2]
        assert fleet.pass_state(some) == [reference_verdict(fleet, r, result) for r in some]
    assert verdicts == {ABORT, PASS, INCONCLUSIVE}  # the fleet covered all three


def test_a_row_is_judged_alone_whatever_rows_come_with_it() -> None:
    fleet = mixed_fleet()
    for t in range(1, 40):
        fleet.count(traffic(t), float(t))
        fleet.evaluate(float(t))
    rows = fleet.verdict_codes()[0].tolist()
    together = fleet.pass_state(rows)
    alone = [fleet.pass_state([row])[0] for row in rows]
    assert together == alone
    assert fleet.pass_state([]) == []


@pytest.mark.parametrize("rows", [[0, 0], [3, 1, 3]])
def test_repeated_rows_repeat_their_snapshot(rows: list[int]) -> None:
    fleet = mixed_fleet()
    fleet.count(traffic(1), 1.0)
    result, _ = fleet.evaluate(1.0)
    assert fleet.pass_state(rows) == [reference_verdict(fleet, r, result) for r in rows]


def test_the_encoding_is_the_json_of_to_json() -> None:
    fleet = mixed_fleet()
    for t in range(1, 30):
        fleet.count(traffic(t), float(t))
        fleet.evaluate(float(t))
    for snap in fleet.pass_state():
        assert (
            snap.encode()
            == json.dumps(snap.to_json(), separators=(",", ":"), allow_nan=False).encode()
        )
        assert VerdictSnapshot.decode(snap.encode()) == snap
