"""Event schemas and their codecs: request logs, rollout state, abort commands.

Pure: bytes in, typed values out (or a DecodeError with a reason a human can act on).
The wire formats are documented in docs/events.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
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

    def detached(self) -> DecodeError:
        """This error without its traceback and the exception it was raised from: kept in a
        list, their frames would hold the list (and so the error) in a reference cycle that only
        the cyclic collector frees, for every refused line of a flood."""
        self.__context__ = self.__cause__ = None
        return self.with_traceback(None)


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


MAX_EPOCH = 64
EPOCH = re.compile(r"[A-Za-z0-9._-]+")


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


# --- field-by-field validation ----------------------------------------------------------------
#
# Every field of a rollout state, an abort command and its evidence has one entry in a table
# below: its name, how to check it, and whether it may be missing (then its default applies).
# A new optional field is one entry. Checks are strict: a string is a `str`, an integer an `int`
# and not a `bool`, a boolean a `bool` (`"false"` is refused, not read as true). Unknown keys are
# ignored, so a newer writer can add fields. Reasons (stable, for metrics and dead letters):
# `missing_field`, `wrong_type`, `out_of_range`, `bad_format`.

# Kubernetes names: a namespace is a DNS-1123 label (<= 63), a Rollout name a DNS-1123
# subdomain (<= 253); a pod-template hash a label value, short (Argo's are <= 10 characters).
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
MAX_NAMESPACE = 63
MAX_NAME = 253
MAX_POD_HASH = 32
MAX_TEXT = 1024  # release (an image reference), detail-like strings
MAX_SHORT_TEXT = 64  # phase, reason
MAX_STEP_INDEX = 10_000
MAX_COUNT = 2**53  # exact in a double
# Epoch seconds: 0 (unknown) up to 2100-01-01.
MAX_TIMESTAMP = 4_102_444_800.0
MAX_EXTRA_ENTRIES = 32
SIGNAL_NAMES = ("errors", "latency")  # streams.decisions.SIGNALS (a test keeps them equal)

Check = Callable[[str, Any], Any]  # (field name, raw value) -> the value, or DecodeError


@dataclass(frozen=True, slots=True)
class FieldRule:
    name: str
    check: Check
    required: bool = False  # else a missing key takes `default`, or the dataclass's default
    default: object = None
    has_default: bool = False


def validate_fields(
    obj: dict[str, Any], rules: tuple[FieldRule, ...], *, prefix: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule in rules:
        if rule.name not in obj:
            if rule.required:
                raise DecodeError("missing_field", f"need {prefix}{rule.name}")
            if rule.has_default:
                out[rule.name] = rule.default
            continue
        out[rule.name] = rule.check(prefix + rule.name, obj[rule.name])
    return out


def _wrong(name: str, want: str, value: object) -> DecodeError:
    return DecodeError("wrong_type", f"{name} must be {want}, not {type(value).__name__}")


def _text_of(name: str, value: object, max_len: int, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _wrong(name, "a string", value)
    if len(value) > max_len:
        raise DecodeError("bad_format", f"{name} is {len(value)} characters > {max_len}")
    if not value and not empty:
        raise DecodeError("bad_format", f"{name} must not be empty")
    if not value.isprintable():
        raise DecodeError("bad_format", f"{name} holds control characters")
    return value


def _matching(pattern: re.Pattern[str], max_len: int, what: str, *, empty: bool = False) -> Check:
    def check(name: str, value: object) -> str:
        text = _text_of(name, value, max_len, empty=empty)
        if text and not pattern.fullmatch(text):
            raise DecodeError("bad_format", f"{name} {text[:80]!r} is not {what}")
        return text

    return check


def text(max_len: int = MAX_TEXT) -> Check:
    return lambda name, value: _text_of(name, value, max_len)


def non_empty_text(max_len: int = MAX_TEXT) -> Check:
    return lambda name, value: _text_of(name, value, max_len, empty=False)


namespace_name = _matching(DNS1123_LABEL, MAX_NAMESPACE, "a DNS-1123 label")
rollout_name = _matching(DNS1123_SUBDOMAIN, MAX_NAME, "a DNS-1123 subdomain")
pod_hash = _matching(LABEL_VALUE, MAX_POD_HASH, "a pod-template hash")
pod_hash_or_empty = _matching(LABEL_VALUE, MAX_POD_HASH, "a pod-template hash", empty=True)
# CANARYWATCH_CLUSTER: empty (one cluster) or a DNS-1123 label, as cluster names usually are.
cluster_name = _matching(DNS1123_LABEL, MAX_NAMESPACE, "a DNS-1123 label", empty=True)
epoch_name = _matching(EPOCH, MAX_EPOCH, "a decision epoch", empty=True)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong(name, "true or false", value)
    return value


def integer(lo: int, hi: int, *, optional: bool = False) -> Check:
    def check(name: str, value: object) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(name, "an integer", value)
        if not lo <= value <= hi:
            raise DecodeError("out_of_range", f"{name} {value} is not in {lo}..{hi}")
        return value

    return check


def number(lo: float, hi: float) -> Check:
    def check(name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(name, "a number", value)
        result = float(value)
        if not (math.isfinite(result) and lo <= result <= hi):
            raise DecodeError("out_of_range", f"{name} {result!r} is not in {lo:g}..{hi:g}")
        return result

    return check


timestamp = number(0.0, MAX_TIMESTAMP)


def one_of(*choices: str) -> Check:
    def check(name: str, value: object) -> str:
        if not isinstance(value, str):
            raise _wrong(name, "a string", value)
        if value not in choices:
            raise DecodeError("bad_format", f"{name} {value[:80]!r} is not one of {choices}")
        return value

    return check


def json_object(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(name, "an object", value)
    return value


def string_map(name: str, value: object) -> dict[str, str]:
    mapping = json_object(name, value)
    if len(mapping) > MAX_EXTRA_ENTRIES:
        raise DecodeError(
            "out_of_range", f"{name} has {len(mapping)} entries > {MAX_EXTRA_ENTRIES}"
        )
    return {
        _text_of(f"{name} key", k, MAX_SHORT_TEXT): _text_of(f"{name}.{k}", v, MAX_TEXT)
        for k, v in mapping.items()
    }


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
