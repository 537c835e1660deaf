"""The actuator's decisions without a server: stale or not, retry or not, how long to wait."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics, Outcome
from agents.rolloutapi import KubeError, parse_retry_after
from agents.settings import Settings
from streams.actuation import (
    DRY_RUN_EVENT_REASON,
    EVENT_REASON,
    PAUSE_EVENT_REASON,
    RetryPolicy,
    abort_event,
    event_name,
)
from streams.events import AbortCommand, Evidence
from streams.rollouts import (
    POLICY_ANNOTATION,
    AbortVerdict,
    Action,
    Rollout,
    judge_abort,
    policy_of,
)

CANARY, STABLE = "6f7d9c8b5d", "58c9b7d4f6"
EVIDENCE = Evidence("errors", 118, 9, 1042, 1, 5.31, 4.61, 0.1017, 41.5, 0.083, 0.001)
COMMAND = AbortCommand(
    decision_id=f"shop-prod/web@{CANARY}",
    namespace="shop-prod",
    rollout="web",
    pod_hash=CANARY,
    decided_at=1000.0,
    evidence=EVIDENCE,
    release="registry.example/web:2.0.0",
    reason="CanaryErrorsRegression",
)


def make_rollout(**status: Any) -> Rollout:
    return cast(
        Rollout,
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {
                "name": "web",
                "namespace": "shop-prod",
                "uid": "uid-1",
                "generation": 1,
                "resourceVersion": "41",
            },
            "status": {
                "currentPodHash": CANARY,
                "stableRS": STABLE,
                "observedGeneration": "1",
                **status,
            },
        },
    )


# --- judge_abort ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        ({}, AbortVerdict.APPLY),
        ({"currentPodHash": "7a8b9c0d1e"}, AbortVerdict.STALE),  # the canary moved on
        ({"stableRS": CANARY}, AbortVerdict.STALE),  # promoted
        ({"abort": True}, AbortVerdict.STALE),  # already aborted
        ({"currentPodHash": ""}, AbortVerdict.STALE),
        # The spec changed and the controller has not caught up: currentPodHash may be stale.
        ({"observedGeneration": "0"}, AbortVerdict.UNRECONCILED),
        ({"observedGeneration": None}, AbortVerdict.UNRECONCILED),
        ({"observedGeneration": "0", "abort": True}, AbortVerdict.STALE),
    ],
)
def test_judge_abort(status: dict[str, Any], verdict: AbortVerdict) -> None:
    assert judge_abort(CANARY, make_rollout(**status)).verdict is verdict


def test_judge_abort_without_rollout_or_status() -> None:
    assert judge_abort(CANARY, None).verdict is AbortVerdict.NOT_FOUND
    bare = make_rollout()
    del bare["status"]
    assert judge_abort(CANARY, bare).verdict is AbortVerdict.STALE


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    policy = RetryPolicy(base_s=0.25, factor=2.0, max_s=2.0, jitter=0.5)
    assert [policy.delay(n, None, 1.0) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [policy.delay(n, None, 0.0) for n in range(3)] == [0.125, 0.25, 0.5]


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(base_s=0.25, max_retry_after_s=60.0)
    assert policy.delay(0, 7.0, 1.0) == 7.0
    assert policy.delay(0, 0.1, 1.0) == 0.25  # never shorter than the backoff
    assert policy.delay(0, 3600.0, 1.0) == 60.0


@pytest.mark.parametrize("status", [0, 409, 429, 500, 503, 504])
def test_retried(status: int) -> None:
    assert RetryPolicy.retryable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_not_retried(status: int) -> None:
    assert not RetryPolicy.retryable(status)


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("Thu, 26 Nov 2026 09:00:05 GMT", now) == 5.0
    assert parse_retry_after("Thu, 26 Nov 2026 08:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# --- the Event ------------------------------------------------------------------------------


def test_abort_event_names_the_rollout_and_carries_the_evidence() -> None:
    now = datetime(2026, 11, 26, 9, 0, 12, 250000, tzinfo=UTC)
    event = abort_event(COMMAND, make_rollout(), now, "actuator-0")
    assert event["type"] == "Warning"
    assert event["reason"] == EVENT_REASON
    assert event["involvedObject"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "namespace": "shop-prod",
        "name": "web",
        "uid": "uid-1",
        "resourceVersion": "41",
    }
    assert EVIDENCE.describe() in event["message"]
    assert COMMAND.decision_id in event["message"]
    assert "registry.example/web:2.0.0" in event["message"]
    assert event["firstTimestamp"] == "2026-11-26T09:00:12Z"
    assert event["metadata"]["name"] == event_name(COMMAND)
    # One name per decision: recording twice is a conflict, not a second Event.
    other = dataclasses.replace(COMMAND, decision_id="shop-prod/web@7a8b9c0d1e")
    assert event_name(other) != event_name(COMMAND)
    assert event_name(COMMAND).startswith("web.canarywatch-")


# --- handle(): the whole decision against a fake API, on a fake clock ------------------------


class FakeApi:
    """An in-memory RolloutApi; `failures[method]` are raised, in order, before it succeeds."""

    def __init__(self, rollout: Rollout | None) -> None:
        self.rollout = copy.deepcopy(rollout)
        self.failures: dict[str, list[KubeError]] = {}
        self.calls: list[str] = []
        self.events: dict[str, Mapping[str, Any]] = {}
        self.apply_before_failing = False  # the patch lands, then its answer is lost
        self.preconditions: list[str] = []  # resourceVersion sent with each abort patch
        self.other_events: list[Mapping[str, Any]] = []  # e.g. the controller's RolloutAborted
        self.replica_sets: dict[str, str] = {}  # ReplicaSet name -> its revision annotation

    def _fail(self, method: str) -> None:
        self.calls.append(method)
        queue = self.failures.get(method)
        if queue:
            raise queue.pop(0)

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        self._fail("get")
        return copy.deepcopy(self.rollout)

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        self.preconditions.append(resource_version)
        if self.apply_before_failing and self.rollout is not None:
            self.rollout["status"]["abort"] = True
        self._fail("patch")
        if self.rollout is None:
            return False
        self.rollout["status"]["abort"] = True
        return True

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        self._fail("rs")
        return self.replica_sets.get(name)

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        self.preconditions.append(resource_version)
        self._fail("pause")
        if self.rollout is None:
            return False
        self.rollout.setdefault("spec", {})["paused"] = True
        return True

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Mapping[str, Any]]:
        self._fail("events")
        return [*self.events.values(), *self.other_events]

    def record_event(self, namespace: str, event: Mapping[str, Any]) -> bool:
        self._fail("event")
        name = event["metadata"]["name"]
        if name in self.events:
            return False
        self.events[name] = event
        return True


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_actuator(
    api: FakeApi, fake: FakeTime, *, action: Action = Action.ABORT, budget_s: float = 120.0
) -> tuple[Actuator, CollectorRegistry]:
    registry = CollectorRegistry()
    actuator = Actuator(
        Settings(action_policy=action),
        api,
        ActuatorMetrics(registry),
        policy=RetryPolicy(base_s=0.25, factor=2.0, max_s=30.0, budget_s=budget_s),
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=lambda: 1002.5,
        rand=lambda: 1.0,
        instance="test",
    )
    return actuator, registry


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_applies_once_and_records_the_event() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    actuator, registry = make_actuator(api, fake)
    assert (await actuator.handle(COMMAND)).outcome is Outcome.APPLIED
    assert api.rollout is not None and api.rollout["status"]["abort"] is True
    assert api.calls == ["get", "events", "patch", "event"]
    assert api.preconditions == ["41"]  # the resourceVersion it was judged on
    assert len(api.events) == 1
    # The same command again (a redelivery after a crash): read, judged stale, untouched.
    assert (await actuator.handle(COMMAND)).outcome is Outcome.STALE
    assert api.calls[4:] == ["get"]
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1
    assert count(registry, "canarywatch_actuator_commands_total", outcome="stale") == 1
    assert count(registry, "canarywatch_actuator_events_total", outcome="recorded") == 1
    assert count(registry, "canarywatch_actuator_decision_to_abort_seconds_sum") == 2.5
    assert fake.sleeps == []


async def test_retries_with_exact_backoff_and_honours_retry_after() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    api.failures["get"] = [KubeError(503, "Service Unavailable"), KubeError(0, "refused")]
    api.failures["patch"] = [
        KubeError(409, "Conflict"),
        KubeError(429, "Too Many Requests", retry_after=7.0),
    ]
    actuator, registry = make_actuator(api, fake)
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.APPLIED
    assert fake.sleeps == [0.25, 0.5, 1.0, 7.0]
    assert api.calls == [
        *("get", "get", "get", "events", "patch"),
        *("get", "events", "patch", "get", "events", "patch", "event"),
    ]
    for status, n in (("503", 1), ("0", 1), ("409", 1), ("429", 1)):
        assert count(registry, "canarywatch_actuator_retries_total", status=status) == n
    assert len(api.events) == 1


async def test_forbidden_is_not_retried_and_fails() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    api.failures["patch"] = [KubeError(403, "Forbidden")]
    actuator, registry = make_actuator(api, fake)
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.FAILED
    assert "403" in result.detail
    assert fake.sleeps == []
    assert api.events == {}
    assert count(registry, "canarywatch_actuator_commands_total", outcome="failed") == 1


async def test_spent_budget_defers_the_command() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    api.failures["get"] = [KubeError(503, "Service Unavailable")] * 100
    actuator, _ = make_actuator(api, fake, budget_s=3.0)
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.DEFERRED
    assert fake.sleeps == [0.25, 0.5, 1.0]  # the next, 2.0 s, would end past 3.0 s
    assert api.rollout is not None and "abort" not in api.rollout["status"]


async def test_lost_answer_to_an_applied_patch_still_counts_as_applied() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    api.apply_before_failing = True
    api.failures["patch"] = [KubeError(504, "Gateway Timeout")]
    actuator, _ = make_actuator(api, fake)
    assert (await actuator.handle(COMMAND)).outcome is Outcome.APPLIED
    assert api.calls == ["get", "events", "patch", "get", "event"]  # no second patch
    assert len(api.events) == 1


async def test_stale_and_missing_rollouts_are_left_alone() -> None:
    for rollout, outcome in (
        (make_rollout(currentPodHash="7a8b9c0d1e"), Outcome.STALE),
        (make_rollout(stableRS=CANARY), Outcome.STALE),
        (None, Outcome.NOT_FOUND),
    ):
        api, fake = FakeApi(rollout), FakeTime()
        actuator, _ = make_actuator(api, fake)
        assert (await actuator.handle(COMMAND)).outcome is outcome
        assert api.calls == ["get"]
        assert api.rollout == rollout


async def test_dry_run_reads_and_records_an_event_but_never_patches() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    actuator, registry = make_actuator(api, fake, action=Action.DRY_RUN)
    assert (await actuator.handle(COMMAND)).outcome is Outcome.DRY_RUN
    assert api.calls == ["get", "events", "event"]
    assert api.rollout == make_rollout()
    (event,) = api.events.values()
    assert (event["type"], event["reason"]) == ("Normal", DRY_RUN_EVENT_REASON)
    assert event["message"].startswith(f"canarywatch would abort (dry run) canary {CANARY}")
    assert count(registry, "canarywatch_actuator_commands_total", outcome="dry_run") == 1


def annotated(policy: str) -> Rollout:
    rollout = make_rollout()
    rollout["metadata"]["annotations"] = {POLICY_ANNOTATION: policy}
    return rollout


@pytest.mark.parametrize(
    ("setting", "annotation", "calls"),
    [
        (Action.ABORT, "pause", ["get", "events", "pause", "event"]),
        (Action.ABORT, "dry-run", ["get", "events", "event"]),
        (Action.PAUSE, "abort", ["get", "events", "patch", "event"]),
        (Action.DRY_RUN, " Abort ", ["get", "events", "patch", "event"]),
        (Action.DRY_RUN, "paused", ["get", "events", "event"]),  # not a policy: the setting's
        (Action.PAUSE, "", ["get", "events", "pause", "event"]),
    ],
)
async def test_the_rollouts_annotation_overrides_the_setting(
    setting: Action, annotation: str, calls: list[str]
) -> None:
    api, fake = FakeApi(annotated(annotation)), FakeTime()
    actuator, _ = make_actuator(api, fake, action=setting)
    await actuator.handle(COMMAND)
    assert api.calls == calls


def test_the_policy_of_a_rollout() -> None:
    assert policy_of(None, Action.PAUSE) == (Action.PAUSE, "")
    assert policy_of(make_rollout(), Action.DRY_RUN) == (Action.DRY_RUN, "")
    assert policy_of(annotated("PAUSE"), Action.ABORT) == (Action.PAUSE, "")
    action, note = policy_of(annotated("rollback"), Action.ABORT)
    assert action is Action.ABORT and "'rollback' is not abort|pause|dry-run" in note


async def test_event_failures_do_not_undo_the_abort() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    api.failures["event"] = [KubeError(500, "boom")] * 10
    actuator, registry = make_actuator(api, fake)
    assert (await actuator.handle(COMMAND)).outcome is Outcome.APPLIED
    assert fake.sleeps == [0.25, 0.5, 1.0, 2.0]  # five attempts, four pauses
    assert count(registry, "canarywatch_actuator_events_total", outcome="failed") == 1


# --- never the wrong revision ----------------------------------------------------------------


async def test_a_command_older_than_the_ttl_is_never_applied() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    actuator, registry = make_actuator(api, fake)
    actuator.settings = dataclasses.replace(Settings(), command_ttl_s=2.0)  # 2.5 s old
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.EXPIRED
    assert api.calls == []
    assert count(registry, "canarywatch_actuator_commands_total", outcome="expired") == 1


async def test_a_redelivery_after_retry_does_not_abort_the_retried_canary() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    actuator, registry = make_actuator(api, fake)
    assert (await actuator.handle(COMMAND)).outcome is Outcome.APPLIED
    # `kubectl argo rollouts retry`: abort back to false, same pod hash, abortedAt cleared.
    assert api.rollout is not None
    api.rollout["status"]["abort"] = False
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.STALE
    assert "retried" in result.detail
    assert api.rollout["status"]["abort"] is False
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1


def controller_event(reason: str, at: str) -> dict[str, Any]:
    return {"reason": reason, "firstTimestamp": at, "lastTimestamp": at, "type": "Warning"}


@pytest.mark.parametrize(
    ("events", "outcome"),
    [
        ([], Outcome.APPLIED),
        # aborted (by anyone) and retried after the decision at t=1000: stale
        ([controller_event("RolloutAborted", "1970-01-01T00:16:41Z")], Outcome.STALE),
        # an abort and retry long before the decision: the decision judged the retried canary
        ([controller_event("RolloutAborted", "1970-01-01T00:10:00Z")], Outcome.APPLIED),
        ([controller_event("RolloutPaused", "1970-01-01T00:16:41Z")], Outcome.APPLIED),
    ],
)
async def test_an_abort_recorded_after_the_decision_makes_the_command_stale(
    events: list[dict[str, Any]], outcome: Outcome
) -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    api.other_events = list(events)
    actuator, _ = make_actuator(api, fake)
    assert (await actuator.handle(COMMAND)).outcome is outcome


class ChangingApi(FakeApi):
    """The Rollout changes between the read and the patch (a new template, then the controller
    reconciling it); the patch's precondition must catch it, as the API server does."""

    def __init__(self, rollout: Rollout, then: list[Rollout]) -> None:
        super().__init__(rollout)
        self.then = list(then)

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        self.calls.append("patch")
        self.preconditions.append(resource_version)
        assert self.rollout is not None
        if self.then:
            self.rollout = self.then.pop(0)
        if resource_version != self.rollout["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict")
        self.rollout["status"]["abort"] = True
        return True


async def test_a_template_change_between_judge_and_patch_never_aborts_the_new_revision() -> None:
    changed = make_rollout(observedGeneration="1")
    changed["metadata"] |= {"generation": 2, "resourceVersion": "42"}  # not reconciled yet
    reconciled = make_rollout(currentPodHash="7a8b9c0d1e", observedGeneration="2")
    reconciled["metadata"] |= {"generation": 2, "resourceVersion": "43"}
    api, fake = ChangingApi(make_rollout(), [changed]), FakeTime()
    actuator, registry = make_actuator(api, fake)
    api.failures["get"] = []

    real_get = api.get_rollout
    reads = 0

    def get_rollout(namespace: str, name: str) -> Rollout | None:
        nonlocal reads
        reads += 1
        if reads == 3:  # the controller reconciles while the actuator waits
            api.rollout = copy.deepcopy(reconciled)
        return real_get(namespace, name)

    api.get_rollout = get_rollout  # type: ignore[method-assign]
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.STALE, result
    assert "moved on to 7a8b9c0d1e" in result.detail
    assert api.preconditions == ["41"]  # one patch, refused
    assert api.rollout is not None and "abort" not in api.rollout["status"]
    assert count(registry, "canarywatch_actuator_retries_total", status="409") == 1
    assert count(registry, "canarywatch_actuator_retries_total", status="unreconciled") == 1


# --- pause instead of abort -------------------------------------------------------------------


async def test_the_pause_policy_pauses_once_and_never_after_a_resume() -> None:
    api, fake = FakeApi(make_rollout()), FakeTime()
    registry = CollectorRegistry()
    actuator = Actuator(
        Settings(action_policy=Action.PAUSE),
        api,
        ActuatorMetrics(registry),
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=lambda: 1002.5,
    )
    assert (await actuator.handle(COMMAND)).outcome is Outcome.APPLIED
    assert api.calls == ["get", "events", "pause", "event"]
    assert api.rollout is not None and api.rollout["spec"]["paused"] is True
    assert "abort" not in api.rollout["status"]
    (event,) = api.events.values()
    assert (event["reason"], event["action"]) == (PAUSE_EVENT_REASON, "Pause")
    assert event["message"].startswith(f"canarywatch paused at canary {CANARY}")
    # Redelivered while paused: already done.
    assert (await actuator.handle(COMMAND)).detail == "already paused"
    # A person resumed it (spec.paused false): the command must not pause it again.
    api.rollout["spec"]["paused"] = False
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.STALE and "resumed" in result.detail
    assert api.calls.count("pause") == 1
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1


async def test_an_actuator_applies_only_its_own_clusters_commands() -> None:
    for ours, theirs, outcome in (
        ("eu-1", "eu-2", Outcome.OTHER_CLUSTER),
        ("eu-1", "", Outcome.OTHER_CLUSTER),  # unnamed: from a bridge without a cluster name
        ("", "eu-1", Outcome.OTHER_CLUSTER),
        ("eu-1", "eu-1", Outcome.APPLIED),
    ):
        api, fake = FakeApi(make_rollout()), FakeTime()
        actuator, registry = make_actuator(api, fake)
        actuator.settings = dataclasses.replace(Settings(), cluster=ours)
        result = await actuator.handle(dataclasses.replace(COMMAND, cluster=theirs))
        assert result.outcome is outcome, (ours, theirs, result)
        if outcome is Outcome.OTHER_CLUSTER:
            assert api.calls == []
            assert count(registry, "canarywatch_actuator_commands_total", outcome="other_cluster")


async def test_a_canary_hash_behind_the_rollouts_revision_is_waited_for() -> None:
    # The real controller writes observedGeneration one status update before currentPodHash.
    rollout = make_rollout()
    rollout["metadata"]["annotations"] = {"rollout.argoproj.io/revision": "3"}
    api, fake = FakeApi(rollout), FakeTime()
    api.replica_sets[f"web-{CANARY}"] = "2"  # currentPodHash still names revision 2
    actuator, registry = make_actuator(api, fake, budget_s=1.0)
    result = await actuator.handle(COMMAND)
    assert result.outcome is Outcome.DEFERRED and "not caught up" in result.detail, result
    assert "patch" not in api.calls
    assert count(registry, "canarywatch_actuator_retries_total", status="unreconciled") >= 1
    api.replica_sets[f"web-{CANARY}"] = "3"
    assert (await actuator.handle(COMMAND)).outcome is Outcome.APPLIED
    assert api.calls[-4:] == ["rs", "events", "patch", "event"]
