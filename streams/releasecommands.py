"""The abort commands of the release agent, built from its decisions: the fan-out of a release
halt to one environment (`fanout_command`) and an e-BH selection (`ebh_command`). Pure.
"""

from __future__ import annotations

from streams.events import AbortCommand, Evidence, RolloutState, decision_id_for
from streams.releaseboard import ReleaseBoard
from streams.releaserecords import ReleaseVerdict

RELEASE_REASON = "ReleaseRegression"


def _share(canary: int, stable: int) -> float:
    return canary / max(1, canary + stable)


def fanout_command(verdict: ReleaseVerdict, state: RolloutState) -> AbortCommand:
    """The abort of one environment of a halted release: its own revision's decision id with
    the canary's decision epoch (as the worker's own abort of that canary would carry: the
    actuator and the worker's dedup accept it; applying it twice is harmless), the release
    decision and the triage in `extra`."""
    ev = verdict.evidence
    return AbortCommand(
        decision_id=decision_id_for(
            state.namespace, state.name, state.current_pod_hash, state.cluster, state.epoch
        ),
        namespace=state.namespace,
        rollout=state.name,
        pod_hash=state.current_pod_hash,
        decided_at=verdict.decided_at,
        evidence=Evidence(
            signal=ev.signal,
            canary_requests=ev.canary_requests,
            canary_bad=ev.canary_bad,
            stable_requests=ev.stable_requests,
            stable_bad=ev.stable_bad,
            statistic=ev.statistic,
            threshold=ev.threshold,
            canary_share=_share(ev.canary_requests, ev.stable_requests),
            since_canary_start_s=0.0,
        ),
        release=verdict.release,
        reason=RELEASE_REASON,
        extra={
            "release_decision": verdict.decision_id,
            "triage": "release",
            "release_evidence": ev.describe()[:1000],
        },
        cluster=state.cluster,
    )


def ebh_command(board: ReleaseBoard, state: RolloutState, now: float) -> AbortCommand:
    """The abort of one environment e-BH selected in its cohort (`fleet_control = ebh`), with
    the environment's own evidence from the board."""
    b = board
    row = b.row_of[state.env]
    return AbortCommand(
        decision_id=decision_id_for(
            state.namespace, state.name, state.current_pod_hash, state.cluster, state.epoch
        ),
        namespace=state.namespace,
        rollout=state.name,
        pod_hash=state.current_pod_hash,
        decided_at=now,
        evidence=Evidence(
            signal="errors" if b.log_e[0, row] >= b.log_e[1, row] else "latency",
            canary_requests=int(b.counts[0, row]),
            canary_bad=int(b.bad[0, :, row].max()),
            stable_requests=int(b.counts[1, row]),
            stable_bad=int(b.bad[1, :, row].max()),
            statistic=float(b.log_e[:, row].max()),
            threshold=float(b.settings.env_threshold),
            canary_share=_share(int(b.counts[0, row]), int(b.counts[1, row])),
            since_canary_start_s=0.0,
        ),
        release=state.release,
        reason="CanaryEbhSelected",
        extra={"fleet_control": "ebh", "fdr": f"{b.settings.fdr:g}"},
        cluster=state.cluster,
    )
