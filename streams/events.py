"""Event schemas and their codecs: request logs, rollout state, abort commands.

Pure: bytes in, typed values out (or a DecodeError with a reason a human can act on).
The wire formats are documented in docs/events.md; keep the two in step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

# A message larger than this is refused before it is parsed; log shippers batch, but a
# multi-megabyte message is a bug upstream and must not stall a worker.
MAX_MESSAGE_BYTES = 1_048_576

POD_HASH_LABEL = "rollouts-pod-template-hash"


class DecodeError(ValueError):
    """A message that cannot be used; `reason` is a short stable code for metrics and DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One served HTTP request, as a log shipper reports it."""

    ts: float  # epoch seconds
    namespace: str  # the environment
    pod: str
    pod_hash: str  # rollouts-pod-template-hash of the serving pod
    status: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class RolloutState:
    """A snapshot of one Argo Rollout; the key of the stream is `env_key(namespace, name)`."""

    namespace: str
    name: str
    current_pod_hash: str  # status.currentPodHash: the newest (canary) template
    stable_hash: str  # status.stableRS
    step_index: int | None = None  # status.currentStepIndex
    phase: str = ""  # status.phase
    aborted: bool = False  # status.abort
    canary_weight: int | None = None  # percent, when known
    release: str = ""  # image / release version of the canary template
    observed_at: float = 0.0  # epoch seconds the snapshot was taken
    resource_version: str = ""  # metadata.resourceVersion of the object read ("" if unknown)
    ended: bool = False  # the Rollout is gone (deleted, or missing from a relist)
    cluster: str = ""  # the bridge's CANARYWATCH_CLUSTER ("" when unnamed)

    @property
    def env(self) -> str:
        return env_key(self.namespace, self.name)

    @property
    def canary_in_progress(self) -> bool:
        return (
            bool(self.current_pod_hash)
            and bool(self.stable_hash)
            and self.current_pod_hash != self.stable_hash
            and not self.aborted
            and not self.ended
        )


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a verdict was reached: enough for an operator to check it by hand."""

    signal: str  # "errors" (5xx) or "latency" (slower than the objective)
    canary_requests: int
    canary_bad: int
    stable_requests: int
    stable_bad: int
    statistic: float  # the test statistic (log e-value)
    threshold: float  # abort when statistic >= threshold
    canary_share: float  # canary's share of requests since the canary started
    since_canary_start_s: float
    canary_window_ratio: float = 0.0  # bad/total over the sliding window
    stable_window_ratio: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.signal}: canary {self.canary_bad}/{self.canary_requests} bad, "
            f"stable {self.stable_bad}/{self.stable_requests} bad, "
            f"canary share {self.canary_share:.1%}, statistic {self.statistic:.2f} >= "
            f"threshold {self.threshold:.2f}, {self.since_canary_start_s:.1f}s into the canary"
        )


@dataclass(frozen=True, slots=True)
class AbortCommand:
    """An instruction to abort one canary revision, with the evidence that justified it."""

    decision_id: str
    namespace: str
    rollout: str
    pod_hash: str  # the canary template to abort; stale when the rollout moved on
    decided_at: float
    evidence: Evidence
    release: str = ""
    reason: str = "CanaryRegression"
    extra: dict[str, str] = field(default_factory=dict)
    cluster: str = ""  # only the actuator of this cluster (CANARYWATCH_CLUSTER) applies it

    @property
    def env(self) -> str:
        return env_key(self.namespace, self.rollout)


def env_key(namespace: str, rollout: str) -> str:
    return f"{namespace}/{rollout}"


def decision_id_for(namespace: str, rollout: str, pod_hash: str, cluster: str = "") -> str:
    """One decision per rollout revision: applying the same id twice is harmless. A named
    cluster prefixes it (`cluster:namespace/rollout@hash`)."""
    revision = f"{namespace}/{rollout}@{pod_hash}"
    return f"{cluster}:{revision}" if cluster else revision


# --- codecs -----------------------------------------------------------------------------------


def _loads(raw: bytes) -> Any:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError("oversized", f"{len(raw)} bytes > limit {MAX_MESSAGE_BYTES}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)) from None


def _require_object(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DecodeError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _str(obj: dict[str, Any], *names: str) -> str:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str) and value:
            return value
    raise DecodeError("missing_field", f"need a non-empty string in one of {', '.join(names)}")


def _number(obj: dict[str, Any], *names: str) -> float:
    for name in names:
        value = obj.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    raise DecodeError("missing_field", f"need a number in one of {', '.join(names)}")


def request_line_from_obj(obj: Any) -> RequestLine:
    o = _require_object(obj)
    pod_hash = o.get(POD_HASH_LABEL) or o.get("pod_hash")
    if not pod_hash:
        labels = o.get("labels")
        if isinstance(labels, dict):
            pod_hash = labels.get(POD_HASH_LABEL)
    if not isinstance(pod_hash, str) or not pod_hash:
        raise DecodeError("missing_field", f"need {POD_HASH_LABEL} (top level or in labels)")
    status = _number(o, "status")
    if not 100 <= status <= 599:
        raise DecodeError("bad_field", f"status {status:g} is not an HTTP status")
    return RequestLine(
        ts=_number(o, "ts"),
        namespace=_str(o, "namespace", "env"),
        pod=_str(o, "pod"),
        pod_hash=pod_hash,
        status=int(status),
        duration_ms=_number(o, "duration_ms"),
    )


def decode_request_lines(
    raw: bytes, max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[list[RequestLine], list[tuple[bytes, DecodeError]]]:
    """Decode one message: a JSON object, or NDJSON with one object per line.

    Returns the good lines and, for each bad line, its bytes and the error: one bad line in a
    batch of 500 must not lose the other 499.
    """
    if len(raw) > max_bytes:
        return [], [(raw, DecodeError("oversized", f"{len(raw)} bytes > limit {max_bytes}"))]
    good: list[RequestLine] = []
    bad: list[tuple[bytes, DecodeError]] = []
    for chunk in raw.split(b"\n"):
        if not chunk.strip():
            continue
        try:
            good.append(request_line_from_obj(_loads(chunk)))
        except DecodeError as exc:
            bad.append((chunk, exc))
    if not good and not bad:
        bad.append((raw, DecodeError("empty", "message holds no request line")))
    return good, bad


def encode_request_line(line: RequestLine) -> bytes:
    return orjson.dumps(
        {
            "ts": line.ts,
            "namespace": line.namespace,
            "pod": line.pod,
            POD_HASH_LABEL: line.pod_hash,
            "status": line.status,
            "duration_ms": line.duration_ms,
        }
    )


def encode_rollout_state(state: RolloutState) -> bytes:
    return orjson.dumps(asdict(state))


def decode_rollout_state(raw: bytes) -> RolloutState:
    o = _require_object(_loads(raw))
    weight = o.get("canary_weight")
    step = o.get("step_index")
    return RolloutState(
        namespace=_str(o, "namespace"),
        name=_str(o, "name"),
        current_pod_hash=_str(o, "current_pod_hash"),
        stable_hash=o.get("stable_hash") or "",
        step_index=int(step) if isinstance(step, int) else None,
        phase=str(o.get("phase") or ""),
        aborted=bool(o.get("aborted", False)),
        canary_weight=int(weight) if isinstance(weight, (int, float)) else None,
        release=str(o.get("release") or ""),
        observed_at=float(o.get("observed_at") or 0.0),
        resource_version=str(o.get("resource_version") or ""),
        ended=o.get("ended") is True,
        cluster=str(o.get("cluster") or ""),
    )


def encode_abort_command(command: AbortCommand) -> bytes:
    return orjson.dumps(asdict(command))


def decode_abort_command(raw: bytes) -> AbortCommand:
    o = _require_object(_loads(raw))
    ev = o.get("evidence")
    if not isinstance(ev, dict):
        raise DecodeError("missing_field", "need an evidence object")
    try:
        evidence = Evidence(**ev)
    except TypeError as exc:
        raise DecodeError("bad_field", f"evidence: {exc}") from None
    extra = o.get("extra") or {}
    return AbortCommand(
        decision_id=_str(o, "decision_id"),
        namespace=_str(o, "namespace"),
        rollout=_str(o, "rollout"),
        pod_hash=_str(o, "pod_hash"),
        decided_at=_number(o, "decided_at"),
        evidence=evidence,
        release=str(o.get("release") or ""),
        reason=str(o.get("reason") or "CanaryRegression"),
        extra={str(k): str(v) for k, v in extra.items()} if isinstance(extra, dict) else {},
        cluster=str(o.get("cluster") or ""),
    )
