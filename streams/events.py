"""Event schemas and their codecs: request logs, rollout state, abort commands.

Pure: bytes in, typed values out (or a DecodeError with a reason a human can act on).
The wire formats are documented in docs/events.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from streams.fields import (
    EPOCH,
    MAX_COUNT,
    MAX_EPOCH,
    MAX_NAME,
    MAX_NAMESPACE,
    MAX_POD_HASH,
    MAX_SHORT_TEXT,
    MAX_STEP_INDEX,
    MAX_TEXT,
    MAX_TIMESTAMP,
    FieldRule,
    boolean,
    cluster_name,
    epoch_name,
    integer,
    json_object,
    namespace_name,
    non_empty_text,
    number,
    one_of,
    pod_hash,
    pod_hash_or_empty,
    rollout_name,
    string_map,
    text,
    timestamp,
    validate_fields,
)
from streams.fields import DecodeError as DecodeError  # every reader of events raises it

# A message larger than this is refused before it is parsed; log shippers batch, but a
# multi-megabyte message is a bug upstream and must not stall a worker.
MAX_MESSAGE_BYTES = 1_048_576

POD_HASH_LABEL = "rollouts-pod-template-hash"


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
    # The decision epoch: set by the worker when it stores a canary that starts (the
    # resource_version of the snapshot that started it, see `epoch_of`), kept while the same
    # revision runs. A retry (aborted, then running again with the same pod hash) starts a new
    # epoch, so it is judged afresh: decision ids carry it.
    epoch: str = ""

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
            f"canary share {self.canary_share:.1%}, statistic {self.statistic:.2f} "
            f"{'>=' if self.statistic >= self.threshold else '<'} "
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


def epoch_of(state: RolloutState) -> str:
    """The epoch a canary that starts with this snapshot gets: its resource_version when that
    is a plain token (Kubernetes' are decimal), else a digest of it; the observation time in
    milliseconds when the snapshot has none."""
    rv = state.resource_version
    if rv and len(rv) <= MAX_EPOCH and EPOCH.fullmatch(rv):
        return rv
    if rv:
        return "h" + hashlib.sha256(rv.encode()).hexdigest()[:16]
    return f"t{int(state.observed_at * 1000)}"


def decision_id_for(
    namespace: str, rollout: str, pod_hash: str, cluster: str = "", epoch: str = ""
) -> str:
    """One decision per rollout revision and epoch: applying the same id twice is harmless.
    A named cluster prefixes it, an epoch follows it (`cluster:namespace/rollout@hash#epoch`)."""
    revision = f"{namespace}/{rollout}@{pod_hash}"
    if epoch:
        revision = f"{revision}#{epoch}"
    return f"{cluster}:{revision}" if cluster else revision


def check_decision_id(raw: bytes) -> str:
    """A decision id read back (a table key), or DecodeError unless it is
    `[cluster:]ns/rollout@hash[#epoch]`."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise DecodeError("bad_format", "decision id is not UTF-8") from None
    env, at, pod = text.rpartition("@")
    pod, hashmark, epoch = pod.partition("#")
    if hashmark and not (len(epoch) <= MAX_EPOCH and EPOCH.fullmatch(epoch)):
        raise DecodeError("bad_format", f"decision id {text[:80]!r} has a bad epoch")
    cluster, colon, env = env.rpartition(":")
    if colon:
        cluster_name("cluster", cluster)
    namespace, slash, rollout = env.partition("/")
    if not (at and slash):
        raise DecodeError("bad_format", f"decision id {text[:80]!r} is not ns/rollout@hash")
    namespace_name("namespace", namespace)
    rollout_name("rollout", rollout)
    pod_hash("pod_hash", pod)
    return text


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


# The field tables of the wire formats (checks: streams/fields.py).
SIGNAL_NAMES = ("errors", "latency")  # streams.decisions.SIGNALS (a test keeps them equal)

ROLLOUT_STATE_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("namespace", namespace_name, required=True),
    FieldRule("name", rollout_name, required=True),
    FieldRule("current_pod_hash", pod_hash, required=True),
    FieldRule("stable_hash", pod_hash_or_empty, default="", has_default=True),
    FieldRule("step_index", integer(0, MAX_STEP_INDEX, optional=True)),
    FieldRule("phase", text(MAX_SHORT_TEXT)),
    FieldRule("aborted", boolean),
    FieldRule("canary_weight", integer(0, 100, optional=True)),
    FieldRule("release", text(MAX_TEXT)),
    FieldRule("observed_at", timestamp),
    FieldRule("resource_version", text(MAX_SHORT_TEXT)),
    FieldRule("ended", boolean),
    FieldRule("cluster", cluster_name),
    FieldRule("epoch", epoch_name),
)

EVIDENCE_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("signal", one_of(*SIGNAL_NAMES), required=True),
    FieldRule("canary_requests", integer(0, MAX_COUNT), required=True),
    FieldRule("canary_bad", integer(0, MAX_COUNT), required=True),
    FieldRule("stable_requests", integer(0, MAX_COUNT), required=True),
    FieldRule("stable_bad", integer(0, MAX_COUNT), required=True),
    FieldRule("statistic", number(-1e300, 1e300), required=True),
    FieldRule("threshold", number(-1e300, 1e300), required=True),
    FieldRule("canary_share", number(0.0, 1.0), required=True),
    FieldRule("since_canary_start_s", number(0.0, MAX_TIMESTAMP), required=True),
    FieldRule("canary_window_ratio", number(0.0, 1.0)),
    FieldRule("stable_window_ratio", number(0.0, 1.0)),
)

ABORT_COMMAND_FIELDS: tuple[FieldRule, ...] = (
    FieldRule(
        "decision_id",
        non_empty_text(2 * MAX_NAMESPACE + MAX_NAME + MAX_POD_HASH + MAX_EPOCH + 4),
        True,
    ),
    FieldRule("namespace", namespace_name, required=True),
    FieldRule("rollout", rollout_name, required=True),
    FieldRule("pod_hash", pod_hash, required=True),
    FieldRule("decided_at", timestamp, required=True),
    FieldRule("evidence", json_object, required=True),
    FieldRule("release", text(MAX_TEXT)),
    FieldRule("reason", non_empty_text(MAX_SHORT_TEXT)),
    FieldRule("extra", string_map),
    FieldRule("cluster", cluster_name),
)


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
            bad.append((chunk, exc.detached()))
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
    # orjson serialises the dataclass itself, the same bytes as `asdict` (flat fields) at a
    # tenth of the cost: every snapshot of a flood is encoded once by the rollout-state agent.
    # Copied to its own size: orjson 3.13's result keeps its ~8 KB write buffer allocated
    # (tracemalloc: 8,154 B for 272 bytes), and the rollout-state table keeps every value.
    return bytes(memoryview(orjson.dumps(state)))


def rollout_state_from_obj(obj: Any) -> RolloutState:
    """Validate a decoded JSON value field by field (`ROLLOUT_STATE_FIELDS`)."""
    return RolloutState(**validate_fields(_require_object(obj), ROLLOUT_STATE_FIELDS))


def decode_rollout_state(raw: bytes) -> RolloutState:
    """A rollout-state snapshot, or DecodeError: never a value validation would refuse."""
    return rollout_state_from_obj(_loads(raw))


def encode_abort_command(command: AbortCommand) -> bytes:
    return orjson.dumps(asdict(command))


def decode_abort_command(raw: bytes) -> AbortCommand:
    """An abort command, or DecodeError (`ABORT_COMMAND_FIELDS`, `EVIDENCE_FIELDS`)."""
    o = _require_object(_loads(raw))
    values = validate_fields(o, ABORT_COMMAND_FIELDS)
    ev = values["evidence"]
    values["evidence"] = Evidence(**validate_fields(ev, EVIDENCE_FIELDS, prefix="evidence."))
    return AbortCommand(**values)


def readable_abort_commands(values: Iterable[bytes | None]) -> Iterator[AbortCommand]:
    """The abort commands among record values, skipping what does not decode (readers that
    only show or wait for commands; the actuator dead-letters them instead)."""
    for raw in values:
        try:
            yield decode_abort_command(raw or b"")
        except DecodeError:
            continue
