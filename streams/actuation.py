"""The actuator's pure policy: how a failing API call is retried, and the Event an abort (a
pause, a dry run) records on the Rollout, named so that recording it twice is a no-op."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.events import AbortCommand
from streams.rollouts import GROUP, KIND, VERSION, Action, Rollout

EVENT_REASON = "CanarywatchAbort"
PAUSE_EVENT_REASON = "CanarywatchPause"
DRY_RUN_EVENT_REASON = "CanarywatchDryRun"
EVENT_REASONS = {
    Action.ABORT: EVENT_REASON,
    Action.PAUSE: PAUSE_EVENT_REASON,
    Action.DRY_RUN: DRY_RUN_EVENT_REASON,
}
COMPONENT = "canarywatch-actuator"
UNREACHABLE = 0  # an API call's status when no HTTP answer came back


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 0.25
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5  # the delay is drawn from [(1 - jitter) * d, d]
    max_retry_after_s: float = 120.0
    budget_s: float = 120.0  # per command, before it is deferred (sought back, read again)
    event_attempts: int = 5

    @staticmethod
    def retryable(status: int) -> bool:
        return status in (UNREACHABLE, 409, 429) or status >= 500

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds before retry number `attempt + 1`; `rand` is uniform in [0, 1]."""
        ceiling = min(self.max_s, self.base_s * self.factor**attempt)
        jittered = ceiling * (1.0 - self.jitter * (1.0 - rand))
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_retry_after_s))
        return jittered


def event_name(command: AbortCommand) -> str:
    """One Event per decision, named deterministically: recording it twice is a no-op (409)."""
    digest = hashlib.sha256(command.decision_id.encode()).hexdigest()[:12]
    return f"{command.rollout}.canarywatch-{digest}"


def event_message(command: AbortCommand, action: Action = Action.ABORT) -> str:
    release = f" (release {command.release})" if command.release else ""
    verb = {Action.PAUSE: "paused at", Action.DRY_RUN: "would abort (dry run)"}.get(
        action, "aborted"
    )
    text = (
        f"canarywatch {verb} canary {command.pod_hash}{release}: {command.reason}; "
        f"{command.evidence.describe()}; decision {command.decision_id}{triage_note(command)}"
    )
    return text[:1024]


def triage_note(command: AbortCommand) -> str:
    """What a release agent put in the command: the release decision, the triage."""
    extra = command.extra
    note = ""
    if decision := extra.get("release_decision"):
        note += f"; release decision {decision}"
    if triage := extra.get("triage"):
        note += f"; triage {triage}"
    if evidence := extra.get("release_evidence"):
        note += f" ({evidence})"
    return note


def abort_event(
    command: AbortCommand,
    rollout: Rollout,
    now: datetime,
    instance: str,
    action: Action = Action.ABORT,
) -> dict[str, Any]:
    """The core/v1 Event recorded on the Rollout after an abort (a pause; a Normal one for a
    dry run)."""
    meta = rollout.get("metadata", {})
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(command), "namespace": command.namespace},
        "involvedObject": {
            "apiVersion": rollout.get("apiVersion") or f"{GROUP}/{VERSION}",
            "kind": KIND,
            "namespace": command.namespace,
            "name": command.rollout,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": "Normal" if action is Action.DRY_RUN else "Warning",
        "reason": EVENT_REASONS[action],
        "action": action.value.capitalize(),
        "message": event_message(command, action),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
