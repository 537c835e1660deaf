"""Argo Rollout objects, read: the raw JSON shapes, the state snapshot, and abort staleness.

Pure: Kubernetes JSON (as dicts) in, `RolloutState`, judgements and references out. The bridge
(agents/bridge.py) and the actuator (agents/actuator.py) do the I/O around these functions.
Semantics follow Argo Rollouts v1.9.1 (`utils/replicaset/canary.go`, `GetCurrentSetWeight`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict

import orjson

from streams.events import (
    MAX_MESSAGE_BYTES,
    DecodeError,
    RolloutState,
    env_key,
)
from streams.fields import (
    MAX_TEXT,
    FieldRule,
    json_object,
    namespace_name,
    rollout_name,
    text,
    validate_fields,
)

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURAL = "rollouts"
KIND = "Rollout"

# The revision number Argo keeps on a Rollout and on each of its ReplicaSets (the newest one's
# equals the Rollout's once the controller has caught up).
REVISION_ANNOTATION = "rollout.argoproj.io/revision"

# Events on a Rollout that cannot change its snapshot; everything else triggers a re-read.
IGNORED_EVENT_REASONS = frozenset({"ScalingReplicaSet"})


# --- raw shapes (only the fields canarywatch reads; every one may be missing) ----------------


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    annotations: dict[str, str]
    labels: dict[str, str]


class Container(TypedDict, total=False):
    name: str
    image: str


class PodSpec(TypedDict, total=False):
    containers: list[Container]


class PodTemplate(TypedDict, total=False):
    spec: PodSpec


class CanaryStep(TypedDict, total=False):
    setWeight: int
    pause: dict[str, Any]


class CanaryStrategy(TypedDict, total=False):
    steps: list[CanaryStep]


class Strategy(TypedDict, total=False):
    canary: CanaryStrategy


class RolloutSpec(TypedDict, total=False):
    template: PodTemplate
    strategy: Strategy
    paused: bool


class WeightDestination(TypedDict, total=False):
    weight: int
    podTemplateHash: str


class TrafficWeights(TypedDict, total=False):
    canary: WeightDestination
    stable: WeightDestination


class CanaryStatus(TypedDict, total=False):
    weights: TrafficWeights


class RolloutCondition(TypedDict, total=False):
    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str
    lastUpdateTime: str


class RolloutStatus(TypedDict, total=False):
    currentPodHash: str
    stableRS: str
    currentStepIndex: int
    phase: str
    abort: bool
    abortedAt: str
    observedGeneration: str  # a string in Argo: the metadata.generation last reconciled
    conditions: list[RolloutCondition]
    canary: CanaryStatus


class Rollout(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: RolloutSpec
    status: RolloutStatus


# --- defensive readers: raw JSON may hold anything --------------------------------------------


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


# --- Rollout -> snapshot ------------------------------------------------------------------------


def current_set_weight(rollout: Rollout) -> int | None:
    """The canary's weight in percent, as the Argo controller computes it; None without a
    canary in progress or a canary strategy.

    `status.canary.weights.canary.weight` (traffic routing) wins; otherwise the nearest
    `setWeight` at or before `status.currentStepIndex`: 0 when none or aborted, 100 past the
    last step or with no steps.
    """
    status = _obj(rollout.get("status"))
    current, stable = _text(status.get("currentPodHash")), _text(status.get("stableRS"))
    if not current or current == stable:
        return None
    routed = _int(_obj(_obj(_obj(status.get("canary")).get("weights")).get("canary")).get("weight"))
    if routed is not None:
        return routed
    strategy = _obj(_obj(rollout.get("spec")).get("strategy"))
    if "canary" not in strategy:
        return None
    if status.get("abort") is True:
        return 0
    steps = _obj(strategy.get("canary")).get("steps")
    steps = steps if isinstance(steps, list) else []
    index = _int(status.get("currentStepIndex"))
    index = 0 if index is None else index
    if not steps or index >= len(steps) or index < 0:
        return 100
    for step in reversed(steps[: index + 1]):
        weight = _int(_obj(step).get("setWeight"))
        if weight is not None:
            return weight
    return 0


RELEASE_KEY = "canarywatch.io/release"


def release_of(rollout: Rollout) -> str:
    """The release the canary carries: the Rollout's `canarywatch.io/release` annotation, else
    its label of that name, else the image of the first container of the pod template ("" with
    a workloadRef and neither)."""
    meta = _obj(rollout.get("metadata"))
    for where in ("annotations", "labels"):
        named = _text(_obj(meta.get(where)).get(RELEASE_KEY))
        if named:
            return named
    template = _obj(_obj(rollout.get("spec")).get("template"))
    containers = _obj(template.get("spec")).get("containers")
    if isinstance(containers, list) and containers:
        return _text(_obj(containers[0]).get("image"))
    return ""


def spec_observed(rollout: Rollout) -> bool:
    """Has the controller reconciled the current spec? `status.observedGeneration` (a string in
    Argo) equals `metadata.generation`. Until then `spec.template` may be newer than
    `status.currentPodHash`: the spec (the release, the steps) says nothing true about the
    canary in progress."""
    generation = _int(_obj(rollout.get("metadata")).get("generation"))
    observed = _obj(rollout.get("status")).get("observedGeneration")
    if generation is None or isinstance(observed, bool):
        return False
    if isinstance(observed, int):
        return observed == generation
    return isinstance(observed, str) and observed.strip() == str(generation)


def revision_of(obj: Mapping[str, Any]) -> str:
    """The `rollout.argoproj.io/revision` annotation of a Rollout or ReplicaSet ("" if none)."""
    return _text(_obj(_obj(obj.get("metadata")).get("annotations")).get(REVISION_ANNOTATION))


def canary_lags_revision(rollout: Rollout, canary_revision: str | None) -> str | None:
    """Why `status.currentPodHash` may not be the Rollout's newest revision yet, or None.

    Observed with the real controller (v1.10.1): after a template change it creates the new
    ReplicaSet, writes the Rollout's revision annotation, then writes `observedGeneration`
    (= generation) in one status update and the new `currentPodHash` only in the next. Between
    the two, `currentPodHash` names the previous canary although the spec is observed; an abort
    then would abort the new one. `canary_revision` is the revision annotation of the
    ReplicaSet `currentPodHash` names (None: it does not exist). A Rollout without the
    annotation (no controller has handled it) is not checked."""
    expected = revision_of(rollout)
    if not expected or canary_revision == expected:
        return None
    current = _text(_obj(rollout.get("status")).get("currentPodHash"))
    return (
        f"the ReplicaSet of {current} is at revision {canary_revision or 'none'}, "
        f"the Rollout at {expected}: the controller has not caught up"
    )


def rollout_state(rollout: Rollout, observed_at: float, cluster: str = "") -> RolloutState | None:
    """The snapshot of a Rollout (in `cluster`); None while it has no name or no
    `status.currentPodHash` (the controller has not reconciled it yet)."""
    meta = _obj(rollout.get("metadata"))
    status = _obj(rollout.get("status"))
    namespace, name = _text(meta.get("namespace")), _text(meta.get("name"))
    current = _text(status.get("currentPodHash"))
    if not (namespace and name and current):
        return None
    return RolloutState(
        namespace=namespace,
        name=name,
        current_pod_hash=current,
        stable_hash=_text(status.get("stableRS")),
        step_index=_int(status.get("currentStepIndex")),
        phase=_text(status.get("phase")),
        aborted=status.get("abort") is True,
        canary_weight=current_set_weight(rollout),
        release=release_of(rollout),
        observed_at=observed_at,
        resource_version=resource_version(rollout),
        cluster=cluster,
    )


def ended_state(last: RolloutState, observed_at: float) -> RolloutState:
    """The snapshot that says a Rollout is gone (deleted, or missing from a relist): its last
    known hashes, no canary in progress."""
    return replace(last, ended=True, canary_weight=None, observed_at=observed_at)


def resource_version(rollout: Rollout) -> str:
    return _text(_obj(rollout.get("metadata")).get("resourceVersion"))


# --- publish only what changed ------------------------------------------------------------------


def _newer(candidate: str, seen: str) -> bool:
    """False only when both are integers and `candidate` is older (etcd revisions are; the API
    calls them opaque, so anything else counts as newer)."""
    if candidate.isdigit() and seen.isdigit():
        return int(candidate) >= int(seen)
    return True


def _meaningful(state: RolloutState) -> RolloutState:
    """The fields that make a snapshot worth publishing (not when or at which version it was
    read)."""
    return replace(state, observed_at=0.0, resource_version="")


class Change(StrEnum):
    NEW = "published"  # a meaningful field changed: publish it
    SAME = "unchanged"  # only observed_at or fields canarywatch does not read changed
    OLDER = "older"  # an older read of the object than the last one: drop it
    # The release changed but the pod hash did not: the template changed and the controller has
    # not written the new currentPodHash yet (it writes observedGeneration one status update
    # earlier), so the spec's release is not this hash's. Dropped; the next update brings both.
    UNRECONCILED = "unreconciled"


class SnapshotDedupe:
    """Remembers, per `namespace/name`, the last published snapshot (ignoring `observed_at`)
    and its resourceVersion, so that a snapshot is published only when a meaningful field
    changed, and an older read (a lagging watch after a fresher GET) never overwrites a newer."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[RolloutState, str]] = {}

    def check(self, state: RolloutState, version: str = "") -> Change:
        last = self._last.get(state.env)
        if last is None:
            return Change.NEW
        previous, previous_version = last
        if version and previous_version and not _newer(version, previous_version):
            return Change.OLDER
        if (
            state.current_pod_hash == previous.current_pod_hash
            and state.release != previous.release
            and not state.ended
        ):
            return Change.UNRECONCILED
        return Change.SAME if _meaningful(state) == _meaningful(previous) else Change.NEW

    def record(self, state: RolloutState, version: str = "") -> None:
        self._last[state.env] = (state, version)

    def forget(self, key: str) -> RolloutState | None:
        """Forget `key`; its last published snapshot, if any."""
        last = self._last.pop(key, None)
        return None if last is None else last[0]

    def retain(self, keys: Iterable[str], namespace: str | None = None) -> list[RolloutState]:
        """After a relist: forget keys (of `namespace`, or all) that the list no longer holds;
        the last published snapshots of those forgotten."""
        keep = set(keys)
        gone = []
        for key in list(self._last):
            in_scope = namespace is None or key.startswith(f"{namespace}/")
            if in_scope and key not in keep:
                gone.append(self._last.pop(key)[0])
        return gone

    def __len__(self) -> int:
        return len(self._last)


# --- abort commands against the live object -------------------------------------------------


class Action(StrEnum):
    """What the actuator does with a bad canary's command: the environment's policy
    (`Settings.action_policy`), overridden per Rollout by its `POLICY_ANNOTATION`.

    abort: `status.abort=true` (needs `patch` on `rollouts/status`). pause: `spec.paused: true`,
    a person then aborts or promotes (needs `patch` on `rollouts`). dry-run: the judgement, a
    log line and an Event, no patch (needs neither)."""

    ABORT = "abort"
    PAUSE = "pause"
    DRY_RUN = "dry-run"


POLICY_ANNOTATION = "canarywatch.io/policy"


def policy_of(rollout: Rollout | None, default: Action) -> tuple[Action, str]:
    """The Rollout's policy: its annotation, else `default`; and a note when the annotation
    says something else than a policy (then `default` holds, and the note says so)."""
    annotations = _obj(_obj(rollout.get("metadata") if rollout else None).get("annotations"))
    raw = annotations.get(POLICY_ANNOTATION)
    if raw is None:
        return default, ""
    try:
        return Action(_text(raw).strip().lower()), ""
    except ValueError:
        allowed = "|".join(a.value for a in Action)
        return default, f"{POLICY_ANNOTATION}={raw!r} is not {allowed}: {default.value} applies"


class AbortVerdict(StrEnum):
    APPLY = "apply"
    STALE = "stale"  # the canary the command names is no longer the one in progress
    NOT_FOUND = "not_found"
    UNRECONCILED = "unreconciled"  # the spec changed and the controller has not caught up: wait


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: AbortVerdict
    why: str
    already_aborted: bool = False  # already aborted (for a pause: already paused)


def judge_abort(pod_hash: str, rollout: Rollout | None, *, pause: bool = False) -> Judgement:
    """Should an abort of canary `pod_hash` be applied to `rollout` (None: it does not exist)?
    With `pause`: a pause (`spec.paused`) instead of the abort.

    Applying a command twice, or after the Rollout moved on, must do nothing: only the canary
    the command judged may be aborted, and only once.
    """
    if rollout is None:
        return Judgement(AbortVerdict.NOT_FOUND, "the Rollout does not exist")
    status = _obj(rollout.get("status"))
    current, stable = _text(status.get("currentPodHash")), _text(status.get("stableRS"))
    if status.get("abort") is True:
        return Judgement(AbortVerdict.STALE, "already aborted", already_aborted=not pause)
    if pause and _obj(rollout.get("spec")).get("paused") is True:
        return Judgement(AbortVerdict.STALE, "already paused", already_aborted=True)
    if not current:
        return Judgement(AbortVerdict.STALE, "the Rollout reports no currentPodHash")
    if not spec_observed(rollout):
        # An abort now would be applied by the controller to whatever the new spec makes the
        # canary, which is not the revision judged: wait until currentPodHash is true again.
        generation = _obj(rollout.get("metadata")).get("generation")
        observed = status.get("observedGeneration")
        return Judgement(
            AbortVerdict.UNRECONCILED,
            f"the controller has not observed generation {generation} yet (observed {observed})",
        )
    if current != pod_hash:
        return Judgement(AbortVerdict.STALE, f"the canary moved on to {current}")
    if current == stable:
        return Judgement(AbortVerdict.STALE, f"{current} was promoted to stable")
    return Judgement(AbortVerdict.APPLY, f"{current} is the canary in progress")


# Event reasons that mean "this Rollout was aborted" (or paused by canarywatch): the
# controller's own, and the actuator's.
ABORT_EVENT_REASONS = frozenset({"RolloutAborted", "CanarywatchAbort", "CanarywatchPause"})
# Allowed clock difference between the worker (decided_at) and the cluster (Event times).
CLOCK_SKEW_S = 5.0


def _epoch(value: object) -> float | None:
    text = _text(value)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def aborted_since(events: Iterable[Mapping[str, Any]], decided_at: float) -> str | None:
    """An abort of the Rollout recorded at or after `decided_at` (less `CLOCK_SKEW_S`), from its
    core/v1 Events: a description of it, or None.

    Argo's `retry` sets `status.abort=false`; the controller then clears `status.abortedAt` and
    restarts the canary with the same pod hash, so the Rollout itself keeps no trace of the
    abort. Its Events (`RolloutAborted` from the controller, `CanarywatchAbort` from the actuator)
    do, for the API server's event TTL (1 h by default). A command decided before such an abort,
    arriving when the Rollout is no longer aborted, is about a canary that has since been
    retried: it must not abort the retry."""
    cutoff = decided_at - CLOCK_SKEW_S
    for event in events:
        if _text(event.get("reason")) not in ABORT_EVENT_REASONS:
            continue
        times = [_epoch(event.get(k)) for k in ("lastTimestamp", "eventTime", "firstTimestamp")]
        latest = max((t for t in times if t is not None), default=None)
        if latest is not None and latest >= cutoff:
            stamp = datetime.fromtimestamp(latest, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return f"{_text(event.get('reason'))} at {stamp}, after the decision"
    return None


# --- Events from kubernetes-event-exporter's Kafka sink ---------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutRef:
    namespace: str
    name: str

    @property
    def env(self) -> str:
        return env_key(self.namespace, self.name)


def rollout_ref_from_event(event: object) -> RolloutRef | None:
    """The Rollout a core/v1 Event is about, when it could have changed the Rollout's state.

    kubernetes-event-exporter's Kafka sink (no `layout`) publishes the Event's JSON with
    `involvedObject` (plus labels/annotations and `clusterName`). None for Events about other
    kinds, or with a reason in `IGNORED_EVENT_REASONS`. Fields are typed as for rollout states
    (`EXPORTER_EVENT_FIELDS`, `INVOLVED_OBJECT_FIELDS`): a wrong type, or a Rollout's namespace
    or name that is not a Kubernetes name, is a DecodeError, not a guess.
    """
    if not isinstance(event, dict):
        raise DecodeError("not_object", f"expected a JSON object, got {type(event).__name__}")
    obj = validate_fields(event, EXPORTER_EVENT_FIELDS)
    involved = validate_fields(
        obj.get("involvedObject", {}), INVOLVED_OBJECT_FIELDS, prefix="involvedObject."
    )
    if involved.get("kind", "") != KIND:
        return None
    api_version = involved.get("apiVersion", "")
    if api_version and not api_version.startswith(f"{GROUP}/"):
        return None
    if obj.get("reason", "") in IGNORED_EVENT_REASONS:
        return None
    meta = validate_fields(obj.get("metadata", {}), EVENT_METADATA_FIELDS, prefix="metadata.")
    namespace = involved.get("namespace", "") or meta.get("namespace", "")
    name = involved.get("name", "")
    if not (namespace and name):
        raise DecodeError("missing_field", "need involvedObject.name and a namespace")
    return RolloutRef(
        namespace_name("involvedObject.namespace", namespace),
        rollout_name("involvedObject.name", name),
    )


EXPORTER_EVENT_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("involvedObject", json_object),
    FieldRule("reason", text(MAX_TEXT)),
    FieldRule("metadata", json_object),
)
INVOLVED_OBJECT_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("kind", text(MAX_TEXT)),
    FieldRule("apiVersion", text(MAX_TEXT)),
    FieldRule("namespace", text(MAX_TEXT)),  # checked as a Kubernetes name for Rollouts
    FieldRule("name", text(MAX_TEXT)),
)
EVENT_METADATA_FIELDS: tuple[FieldRule, ...] = (FieldRule("namespace", text(MAX_TEXT)),)


def decode_exporter_event(raw: bytes) -> RolloutRef | None:
    """`rollout_ref_from_event` of one Kafka message; DecodeError when it cannot be used."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError("oversized", f"{len(raw)} bytes > limit {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)) from None
    return rollout_ref_from_event(obj)
