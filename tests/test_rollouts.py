"""Rollout JSON -> snapshot, weights as Argo computes them, dedupe, exporter events."""

from __future__ import annotations

import copy
from typing import Any, cast

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.events import (
    DecodeError,
    RolloutState,
    decode_rollout_state,
    encode_rollout_state,
)
from streams.rollouts import (
    Change,
    Rollout,
    RolloutRef,
    SnapshotDedupe,
    aborted_since,
    current_set_weight,
    decode_exporter_event,
    ended_state,
    release_of,
    rollout_ref_from_event,
    rollout_state,
    spec_observed,
)

STEPS = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 40}, {"pause": {"duration": "1m"}}]


def rollout(**status: Any) -> Rollout:
    obj = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web", "namespace": "shop-prod", "uid": "u-1", "resourceVersion": "7"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "image": "registry.example/web:2.0.0"},
                        {"name": "sidecar", "image": "envoy:1.30"},
                    ]
                }
            },
            "strategy": {"canary": {"steps": copy.deepcopy(STEPS)}},
        },
        "status": {"currentPodHash": "6f7d9c8b5d", "stableRS": "58c9b7d4f6", **status},
    }
    return cast(Rollout, obj)


def test_snapshot_of_a_paused_canary() -> None:
    obj = rollout(currentStepIndex=1, phase="Paused")
    assert rollout_state(obj, 1764150000.0) == RolloutState(
        namespace="shop-prod",
        name="web",
        current_pod_hash="6f7d9c8b5d",
        stable_hash="58c9b7d4f6",
        step_index=1,
        phase="Paused",
        aborted=False,
        canary_weight=20,
        release="registry.example/web:2.0.0",
        observed_at=1764150000.0,
        resource_version="7",
    )


@pytest.mark.parametrize(
    ("index", "weight"),
    [(None, 20), (0, 20), (1, 20), (2, 40), (3, 40), (4, 100), (9, 100)],
)
def test_weight_is_the_nearest_set_weight_at_or_before_the_step(
    index: int | None, weight: int
) -> None:
    status = {} if index is None else {"currentStepIndex": index}
    assert current_set_weight(rollout(**status)) == weight


def test_weight_from_traffic_routing_wins_over_steps() -> None:
    obj = rollout(currentStepIndex=0, canary={"weights": {"canary": {"weight": 7}}})
    assert current_set_weight(obj) == 7


def test_weight_edge_cases() -> None:
    assert current_set_weight(rollout(abort=True, currentStepIndex=2)) == 0
    no_weight_yet = rollout(currentStepIndex=0)
    no_weight_yet["spec"]["strategy"]["canary"]["steps"] = [{"pause": {}}, {"setWeight": 50}]
    assert current_set_weight(no_weight_yet) == 0
    no_steps = rollout()
    no_steps["spec"]["strategy"]["canary"]["steps"] = []
    assert current_set_weight(no_steps) == 100
    blue_green = rollout(currentStepIndex=0)
    blue_green["spec"]["strategy"] = cast(Any, {"blueGreen": {"activeService": "web"}})
    assert current_set_weight(blue_green) is None
    # No canary in progress: the weight is not a canary's.
    assert current_set_weight(rollout(currentPodHash="58c9b7d4f6", currentStepIndex=4)) is None


def test_no_snapshot_before_the_controller_reconciled() -> None:
    obj = rollout()
    del obj["status"]
    assert rollout_state(obj, 0.0) is None
    unnamed = rollout()
    del unnamed["metadata"]["name"]
    assert rollout_state(unnamed, 0.0) is None


def test_workload_ref_rollout_has_no_release_and_aborted_is_read() -> None:
    obj = rollout(abort=True, phase="Degraded")
    del obj["spec"]["template"]
    state = rollout_state(obj, 0.0)
    assert state is not None
    assert (state.release, state.aborted, state.phase) == ("", True, "Degraded")
    assert not state.canary_in_progress
    assert release_of(rollout()) == "registry.example/web:2.0.0"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    status=st.dictionaries(
        st.sampled_from(
            ["currentPodHash", "stableRS", "currentStepIndex", "phase", "abort", "canary"]
        ),
        json_values,
    ),
    spec=json_values,
)
def test_any_json_maps_to_a_snapshot_or_none_never_raises(status: Any, spec: Any) -> None:
    obj = cast(
        Rollout, {"metadata": {"name": "web", "namespace": "ns"}, "status": status, "spec": spec}
    )
    state = rollout_state(obj, 1.0)
    if state is not None:
        assert state.current_pod_hash == status["currentPodHash"]
        assert state.canary_weight is None or isinstance(state.canary_weight, int)


def test_dedupe_publishes_meaningful_changes_only() -> None:
    dedupe = SnapshotDedupe()
    first = rollout_state(rollout(currentStepIndex=0), 1.0)
    assert first is not None
    assert dedupe.check(first, "10") is Change.NEW
    dedupe.record(first, "10")
    later_same = rollout_state(rollout(currentStepIndex=0), 2.0)  # only observed_at moved
    assert later_same is not None
    assert dedupe.check(later_same, "11") is Change.SAME
    stepped = rollout_state(rollout(currentStepIndex=2), 3.0)
    assert stepped is not None
    assert dedupe.check(stepped, "12") is Change.NEW
    dedupe.record(stepped, "12")
    # A lagging watch event (older resourceVersion) after a fresher GET is dropped.
    assert dedupe.check(first, "11") is Change.OLDER
    # Opaque (non-numeric) versions are never judged older.
    assert dedupe.check(first, "abc") is Change.NEW


def test_dedupe_forgets_what_a_relist_no_longer_holds() -> None:
    dedupe = SnapshotDedupe()
    for namespace in ("a", "b"):
        obj = rollout()
        obj["metadata"]["namespace"] = namespace
        state = rollout_state(obj, 0.0)
        assert state is not None
        dedupe.record(state)
    gone = dedupe.retain([], namespace="a")
    assert [g.env for g in gone] == ["a/web"]
    assert len(dedupe) == 1
    assert [g.env for g in dedupe.retain(["x/y"])] == ["b/web"]
    assert len(dedupe) == 0
    assert dedupe.forget("b/web") is None


def test_an_ended_snapshot_keeps_the_hashes_and_has_no_canary_in_progress() -> None:
    state = rollout_state(rollout(currentStepIndex=1), 1.0)
    assert state is not None and state.canary_in_progress
    ended = ended_state(state, 5.0)
    assert ended.ended and not ended.canary_in_progress
    assert (ended.current_pod_hash, ended.stable_hash, ended.observed_at) == (
        state.current_pod_hash,
        state.stable_hash,
        5.0,
    )
    assert decode_rollout_state(encode_rollout_state(ended)) == ended
    # Snapshots from before the field existed decode as not ended, without a version.
    old = orjson.loads(encode_rollout_state(state))
    del old["ended"], old["resource_version"]
    decoded = decode_rollout_state(orjson.dumps(old))
    assert (decoded.ended, decoded.resource_version) == (False, "")


def test_dedupe_ignores_the_resource_version_itself() -> None:
    dedupe = SnapshotDedupe()
    first = rollout_state(rollout(currentStepIndex=0), 1.0)
    assert first is not None
    dedupe.record(first, "7")
    obj = rollout(currentStepIndex=0)
    obj["metadata"]["resourceVersion"] = "8"  # e.g. availableReplicas changed
    again = rollout_state(obj, 2.0)
    assert again is not None and again.resource_version == "8"
    assert dedupe.check(again, "8") is Change.SAME


@pytest.mark.parametrize(
    ("generation", "observed", "expected"),
    [(3, "3", True), (3, 3, True), (3, "2", False), (3, None, False), (None, "3", False)],
)
def test_spec_observed_compares_observed_generation_with_generation(
    generation: int | None, observed: object, expected: bool
) -> None:
    obj = rollout()
    if generation is not None:
        obj["metadata"]["generation"] = generation
    if observed is not None:
        obj["status"]["observedGeneration"] = observed  # type: ignore[typeddict-item]
    assert spec_observed(obj) is expected


def test_aborted_since_reads_abort_events_at_or_after_the_decision() -> None:
    decided = 1795683600.0  # 2026-11-26T09:00:00Z
    aborted = {"reason": "RolloutAborted", "lastTimestamp": "2026-11-26T09:00:03Z"}
    ours = {"reason": "CanarywatchAbort", "firstTimestamp": "2026-11-26T09:00:01Z"}
    before = {"reason": "RolloutAborted", "lastTimestamp": "2026-11-26T08:00:00Z"}
    other = {"reason": "RolloutStepCompleted", "lastTimestamp": "2026-11-26T09:05:00Z"}
    assert (
        aborted_since([aborted], decided)
        == "RolloutAborted at 2026-11-26T09:00:03Z, after the decision"
    )
    assert aborted_since([ours], decided) is not None
    assert aborted_since([before, other, {"reason": "RolloutAborted"}], decided) is None
    assert (
        aborted_since([{"reason": "RolloutAborted", "lastTimestamp": "garbage"}], decided) is None
    )


# kubernetes-event-exporter's Kafka sink without a layout: the Event with involvedObject.
EXPORTED: dict[str, Any] = {
    "metadata": {"name": "web.1874f3c", "namespace": "shop-prod", "uid": "e-1"},
    "reason": "RolloutStepCompleted",
    "message": "Rollout step 1/4 completed (setWeight: 20)",
    "source": {"component": "rollouts-controller"},
    "firstTimestamp": "2026-11-26T09:00:00Z",
    "lastTimestamp": "2026-11-26T09:00:00Z",
    "count": 1,
    "type": "Normal",
    "clusterName": "eu-1",
    "involvedObject": {
        "kind": "Rollout",
        "namespace": "shop-prod",
        "name": "web",
        "uid": "u-1",
        "apiVersion": "argoproj.io/v1alpha1",
        "resourceVersion": "7",
        "labels": {"app": "web"},
    },
}


def test_exporter_event_names_its_rollout() -> None:
    assert decode_exporter_event(orjson.dumps(EXPORTED)) == RolloutRef("shop-prod", "web")


def test_exporter_events_that_cannot_change_a_rollout_are_ignored() -> None:
    pod = {**EXPORTED, "involvedObject": {**EXPORTED["involvedObject"], "kind": "Pod"}}
    scaling = {**EXPORTED, "reason": "ScalingReplicaSet"}
    other_group = {
        **EXPORTED,
        "involvedObject": {**EXPORTED["involvedObject"], "apiVersion": "example.com/v1"},
    }
    for event in (pod, scaling, other_group, {}):
        assert rollout_ref_from_event(event) is None


@pytest.mark.parametrize(
    ("involved", "reason"),
    [
        ({"kind": "Rollout"}, "missing_field"),
        ({"name": 5}, "wrong_type"),
        ({"namespace": ["shop"]}, "wrong_type"),
        ({"name": "Web_1"}, "bad_format"),
        ({"namespace": "x" * 64}, "bad_format"),
        ({"kind": True}, "wrong_type"),
    ],
)
def test_exporter_event_fields_are_typed(involved: dict[str, object], reason: str) -> None:
    event = {**EXPORTED, "involvedObject": {**EXPORTED["involvedObject"], **involved}}
    if involved == {"kind": "Rollout"}:
        event = {"involvedObject": involved}
    with pytest.raises(DecodeError) as exc:
        decode_exporter_event(orjson.dumps(event))
    assert exc.value.reason == reason


def test_exporter_event_reason_and_metadata_are_typed() -> None:
    changes: list[dict[str, object]] = [{"reason": 3}, {"metadata": "shop"}, {"involvedObject": []}]
    for change in changes:
        with pytest.raises(DecodeError) as exc:
            decode_exporter_event(orjson.dumps({**EXPORTED, **change}))
        assert exc.value.reason == "wrong_type"


@pytest.mark.parametrize(
    ("raw", "reason"), [(b"{", "not_json"), (b"[1]", "not_object"), (b"x" * 2_000_000, "oversized")]
)
def test_exporter_event_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_exporter_event(raw)
    assert exc.value.reason == reason


def test_a_new_release_under_the_old_pod_hash_is_held_back() -> None:
    dedupe = SnapshotDedupe()
    first = rollout_state(rollout(currentStepIndex=1), 1.0)
    assert first is not None
    dedupe.record(first, "10")
    # The template changed (a new image) and observedGeneration caught up, but currentPodHash
    # is still the previous canary's: the real controller's intermediate status write.
    obj = rollout(currentStepIndex=1)
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/web:3.0.0"
    torn = rollout_state(obj, 2.0)
    assert torn is not None
    assert dedupe.check(torn, "11") is Change.UNRECONCILED
    obj["status"]["currentPodHash"] = "7a8b9c0d1e"  # the next write: the new canary
    whole = rollout_state(obj, 3.0)
    assert whole is not None and dedupe.check(whole, "12") is Change.NEW


def test_release_label_or_annotation_takes_precedence_over_the_image() -> None:
    labelled = rollout()
    labelled["metadata"]["labels"] = {"canarywatch.io/release": "payments-7.3"}
    assert release_of(labelled) == "payments-7.3"
    annotated = rollout()
    annotated["metadata"]["labels"] = {"canarywatch.io/release": "from-label"}
    annotated["metadata"]["annotations"] = {"canarywatch.io/release": "from-annotation"}
    assert release_of(annotated) == "from-annotation"
    state = rollout_state(annotated, 0.0)
    assert state is not None and state.release == "from-annotation"
    empty = rollout()
    empty["metadata"]["labels"] = {"canarywatch.io/release": ""}
    assert release_of(empty) == "registry.example/web:2.0.0"
