"""The actuator against a real kube-apiserver and a real Kafka.

The actuator's identity is the `actuator` token of LocalKubeAPI, bound by deploy/base RBAC. That
this identity gets 403 for a spec patch, a delete or a Secret read is asserted in
tests/integration/test_kube_rbac.py; here the actuator's own code path meets a 403 (run with the
read-only `bridge` identity) and must fail the command without losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import TopicPartition
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics, Outcome
from agents.kafka_admin import ensure_topics
from agents.processes import free_port, poll_until, read_metric
from agents.rolloutapi import MERGE_PATCH, KubeError, KubeRolloutApi, RolloutApi
from agents.settings import Settings, Topics, settings_to_env
from streams.actuation import EVENT_REASON, RetryPolicy
from streams.events import AbortCommand, Evidence, encode_abort_command
from streams.rollouts import GROUP, PLURAL, VERSION, Action, Rollout
from tests.support.localkube import LocalKubeAPI, default_rollout_crd

pytestmark = [pytest.mark.kube, pytest.mark.kafka]

NAMESPACE = "cw-actuator"
FAST = RetryPolicy(base_s=0.05, max_s=0.2, budget_s=30.0)


# --- helpers shared with test_bridge.py and test_kube_e2e.py -------------------------------


def rollout_manifest(
    namespace: str, name: str, image: str = "registry.example/web:2.0.0"
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            "strategy": {
                "canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}]}
            },
        },
    }


def ensure_namespace(kube: LocalKubeAPI, namespace: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})


def create_rollout(
    admin: k8s.ApiClient, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    """A Rollout created as admin, its status set through the status subresource (as the
    Argo controller would)."""
    objects = k8s.CustomObjectsApi(admin)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, rollout_manifest(namespace, name)
    )
    return set_status(admin, namespace, name, status)


def set_status(
    admin: k8s.ApiClient, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    obj = k8s.CustomObjectsApi(admin).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
    )
    return cast(dict[str, Any], obj)  # custom objects come back as untyped JSON (`object`)


def read_rollout(admin: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = k8s.CustomObjectsApi(admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return cast(dict[str, Any], obj)  # custom objects come back as untyped JSON (`object`)


def events_about(admin: k8s.ApiClient, namespace: str, name: str) -> list[k8s.CoreV1Event]:
    listed = k8s.CoreV1Api(admin).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return list(listed.items)


def command_for(namespace: str, name: str, pod_hash: str) -> AbortCommand:
    return AbortCommand(
        decision_id=f"{namespace}/{name}@{pod_hash}",
        namespace=namespace,
        rollout=name,
        pod_hash=pod_hash,
        decided_at=time.time(),
        evidence=Evidence("errors", 118, 9, 1042, 1, 5.31, 4.61, 0.1017, 41.5, 0.083, 0.001),
        release="registry.example/web:2.0.0",
        reason="CanaryErrorsRegression",
    )


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except GroupCoordinatorNotAvailableError:  # a fresh broker still creating __consumer_offsets
        return None
    finally:
        await admin.close()
    meta = offsets.get(tp)
    return None if meta is None or meta.offset < 0 else int(meta.offset)


async def wait_committed(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    await poll_until(
        lambda: asyncio.run(committed(bootstrap, group, tp)) == offset,
        30,
        f"{group} to commit offset {offset} on {tp}",
    )


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def unique_settings(kafka_bootstrap: str, tmp: Path, kind: str) -> Settings:
    run_id = uuid.uuid4().hex[:8]
    return Settings(
        replication_factor=1,
        bootstrap=kafka_bootstrap,
        app_id=f"{kind}-{run_id}",
        topics=Topics(f"{kind}-{run_id}"),
        partitions=1,
        data_dir=tmp,
    )


async def create_topics(settings: Settings) -> None:
    await ensure_topics(settings.bootstrap, settings.topic_partitions())


@contextlib.asynccontextmanager
async def running(actuator: Actuator) -> AsyncIterator[asyncio.Task[None]]:
    """The actuator's consumer loop as a task; stopped (leaving its group) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(actuator.run(stop))
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(kube_api: LocalKubeAPI) -> Iterator[k8s.ApiClient]:
    ensure_namespace(kube_api, NAMESPACE)
    with kube_api.client("admin") as api:
        yield api


@pytest.fixture
def actuator_api(kube_api: LocalKubeAPI) -> Iterator[KubeRolloutApi]:
    with kube_api.client("actuator") as api:
        yield KubeRolloutApi(api)


def canary_status(canary: str, stable: str) -> dict[str, Any]:
    """As the controller writes it, having reconciled the Rollout's first (only) generation."""
    return {
        "currentPodHash": canary,
        "stableRS": stable,
        "currentStepIndex": 1,
        "phase": "Paused",
        "observedGeneration": "1",
    }


def name() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


async def pending_abort(
    settings: Settings, admin: k8s.ApiClient
) -> tuple[str, dict[str, Any], AbortCommand]:
    """The topics, a Rollout with a canary in progress, and its abort command on the topic."""
    await create_topics(settings)
    rollout = name()
    before = create_rollout(admin, NAMESPACE, rollout, canary_status("6f7d9c8b5d", "58c9b7d4f6"))
    command = command_for(NAMESPACE, rollout, "6f7d9c8b5d")
    payload = encode_abort_command(command)
    await produce(settings.bootstrap, settings.topics.commands, [(command.env.encode(), payload)])
    return rollout, before, command


# --- tests ----------------------------------------------------------------------------------


async def test_abort_patches_the_status_subresource_and_records_an_event(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "act")
    rollout, before, command = await pending_abort(settings, admin)

    registry = CollectorRegistry()
    actuator = Actuator(settings, actuator_api, ActuatorMetrics(registry), policy=FAST)
    async with running(actuator):
        after = await poll_until(
            lambda: (o := read_rollout(admin, NAMESPACE, rollout))["status"].get("abort") and o,
            within_s=30,
            what="status.abort",
        )
        await wait_committed(
            kafka_bootstrap, actuator.group_id, TopicPartition(settings.topics.commands, 0), 1
        )

    assert after["status"] == {**before["status"], "abort": True}
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    # The write went through the status subresource (a main-resource patch of status would be
    # ignored by a CRD with the subresource, and would be recorded without `subresource`).
    status_writes = [
        entry
        for entry in after["metadata"]["managedFields"]
        if entry.get("subresource") == "status" and "f:abort" in str(entry.get("fieldsV1"))
    ]
    assert status_writes, after["metadata"]["managedFields"]

    (event,) = events_about(admin, NAMESPACE, rollout)
    assert (event.type, event.reason) == ("Warning", EVENT_REASON)
    assert event.involved_object.kind == "Rollout"
    assert event.involved_object.uid == before["metadata"]["uid"]
    assert command.evidence.describe() in (event.message or "")
    assert command.decision_id in (event.message or "")
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1
    assert count(registry, "canarywatch_actuator_events_total", outcome="recorded") == 1


async def test_commands_that_are_moot_touch_nothing_and_are_committed(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "act")
    await create_topics(settings)
    moved_on, promoted, aborted, healthy = name(), name(), name(), name()
    create_rollout(admin, NAMESPACE, moved_on, canary_status("7a8b9c0d1e", "58c9b7d4f6"))
    create_rollout(admin, NAMESPACE, promoted, canary_status("6f7d9c8b5d", "6f7d9c8b5d"))
    create_rollout(
        admin, NAMESPACE, aborted, {**canary_status("6f7d9c8b5d", "58c9b7d4f6"), "abort": True}
    )
    create_rollout(admin, NAMESPACE, healthy, canary_status("6f7d9c8b5d", "58c9b7d4f6"))
    names = (moved_on, promoted, aborted, healthy)
    before = {n: read_rollout(admin, NAMESPACE, n) for n in names}
    commands = [command_for(NAMESPACE, n, "6f7d9c8b5d") for n in (moved_on, promoted, aborted)]
    commands.append(command_for(NAMESPACE, "no-such-rollout", "6f7d9c8b5d"))
    # The healthy canary's command, decided longer ago than the TTL: never applied.
    old = command_for(NAMESPACE, healthy, "6f7d9c8b5d")
    expired_at = old.decided_at - settings.command_ttl_s - 1
    commands.append(dataclasses.replace(old, decided_at=expired_at))
    # ... and one for another cluster's Rollout of the same name: not this actuator's.
    commands.append(dataclasses.replace(old, cluster="eu-2"))
    await produce(
        kafka_bootstrap,
        settings.topics.commands,
        [(c.env.encode(), encode_abort_command(c)) for c in commands],
    )

    registry = CollectorRegistry()
    actuator = Actuator(settings, actuator_api, ActuatorMetrics(registry), policy=FAST)
    async with running(actuator):
        await wait_committed(
            kafka_bootstrap, actuator.group_id, TopicPartition(settings.topics.commands, 0), 6
        )

    for n in names:
        assert read_rollout(admin, NAMESPACE, n) == before[n], n
        assert events_about(admin, NAMESPACE, n) == [], n
    assert count(registry, "canarywatch_actuator_commands_total", outcome="stale") == 3
    assert count(registry, "canarywatch_actuator_commands_total", outcome="not_found") == 1
    assert count(registry, "canarywatch_actuator_commands_total", outcome="expired") == 1
    assert count(registry, "canarywatch_actuator_commands_total", outcome="other_cluster") == 1
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 0


async def test_dry_run_reads_counts_and_commits_but_patches_nothing(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    settings = dataclasses.replace(
        unique_settings(kafka_bootstrap, tmp_path, "act"), action_policy=Action.DRY_RUN
    )
    rollout, before, _ = await pending_abort(settings, admin)

    registry = CollectorRegistry()
    actuator = Actuator(settings, actuator_api, ActuatorMetrics(registry), policy=FAST)
    async with running(actuator):
        await wait_committed(
            kafka_bootstrap, actuator.group_id, TopicPartition(settings.topics.commands, 0), 1
        )

    assert read_rollout(admin, NAMESPACE, rollout) == before
    (event,) = events_about(admin, NAMESPACE, rollout)
    assert (event.type, event.reason) == ("Normal", "CanarywatchDryRun"), event
    assert count(registry, "canarywatch_actuator_commands_total", outcome="dry_run") == 1


async def test_forbidden_patch_fails_the_command_into_the_dead_letter_topic(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, kube_api: LocalKubeAPI
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "act")
    rollout, before, command = await pending_abort(settings, admin)

    registry = CollectorRegistry()
    with kube_api.client("bridge") as read_only:  # may read Rollouts, may not patch them
        actuator = Actuator(
            settings, KubeRolloutApi(read_only), ActuatorMetrics(registry), policy=FAST
        )
        async with running(actuator):
            await wait_committed(
                kafka_bootstrap, actuator.group_id, TopicPartition(settings.topics.commands, 0), 1
            )

    assert read_rollout(admin, NAMESPACE, rollout) == before
    assert count(registry, "canarywatch_actuator_commands_total", outcome="failed") == 1
    assert count(registry, "canarywatch_actuator_retries_total", status="403") == 0
    consumer = AIOKafkaConsumer(
        settings.topics.deadletter, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == encode_abort_command(command)
    headers = dict(record.headers)
    assert headers["canarywatch.reason"] == b"apply_failed"
    assert b"403" in headers["canarywatch.detail"]


class FailingAborts:
    """The real API, except that every abort patch answers 503 (a fault in front of it)."""

    def __init__(self, api: KubeRolloutApi) -> None:
        self.api = api
        self.patches = 0

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        return self.api.get_rollout(namespace, name)

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        self.patches += 1
        raise KubeError(503, "Service Unavailable (injected)")

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Any]:
        return self.api.rollout_events(namespace, name, uid)

    def record_event(self, namespace: str, event: Any) -> bool:
        return self.api.record_event(namespace, event)

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        return self.api.pause_rollout(namespace, name, resource_version)

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        return self.api.replica_set_revision(namespace, name)


@pytest.mark.parametrize("fault", ["unreconciled", "503"])
async def test_a_command_deferred_too_often_is_dead_lettered_with_the_apis_answer(
    kafka_bootstrap: str,
    tmp_path: Path,
    admin: k8s.ApiClient,
    actuator_api: KubeRolloutApi,
    fault: str,
) -> None:
    """Deferred more than `max_deferrals` times: dead-lettered (reason `deferred`, the last
    answer in the detail), counted as `gave_up` (alert CanarywatchActuatorGaveUp), committed.
    unreconciled: the controller is down, so a spec change is never observed (the real API
    server serves it); 503: every patch fails in front of the real API server."""
    settings = dataclasses.replace(
        unique_settings(kafka_bootstrap, tmp_path, "act"), max_deferrals=2
    )
    rollout, _, command = await pending_abort(settings, admin)
    api: RolloutApi = actuator_api
    if fault == "unreconciled":
        k8s.CustomObjectsApi(admin).patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, rollout,
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:3"}]}}}},
            _content_type=MERGE_PATCH,
        )  # fmt: skip
        expected = "has not observed generation 2"
    else:
        api = FailingAborts(actuator_api)
        expected = "503: Service Unavailable (injected)"
    before = read_rollout(admin, NAMESPACE, rollout)
    registry = CollectorRegistry()
    short = RetryPolicy(base_s=0.05, max_s=0.1, budget_s=0.3)
    actuator = Actuator(settings, api, ActuatorMetrics(registry), policy=short)
    async with running(actuator):
        await wait_committed(
            kafka_bootstrap, actuator.group_id, TopicPartition(settings.topics.commands, 0), 1
        )

    assert read_rollout(admin, NAMESPACE, rollout)["status"] == before["status"]
    assert count(registry, "canarywatch_actuator_commands_total", outcome="deferred") == 3
    assert count(registry, "canarywatch_actuator_commands_total", outcome="gave_up") == 1
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 0
    consumer = AIOKafkaConsumer(
        settings.topics.deadletter, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == encode_abort_command(command)
    headers = dict(record.headers)
    assert headers["canarywatch.reason"] == b"deferred"
    detail = headers["canarywatch.detail"].decode()
    assert detail.startswith("deferred 3 times; the last answer: ") and expected in detail, detail


async def test_no_command_is_lost_when_the_actuator_restarts_mid_retry(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "act")
    tp = TopicPartition(settings.topics.commands, 0)
    rollout, _, _ = await pending_abort(settings, admin)

    # First instance: every patch fails; stop it (as a crash or a deploy would) mid-retry.
    failing = FailingAborts(actuator_api)
    first_registry = CollectorRegistry()
    first = Actuator(settings, failing, ActuatorMetrics(first_registry), policy=FAST)
    task = asyncio.create_task(first.run())
    await poll_until(lambda: failing.patches >= 3, within_s=30, what="three failed patches")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await committed(kafka_bootstrap, first.group_id, tp) is None
    assert "abort" not in read_rollout(admin, NAMESPACE, rollout)["status"]
    assert count(first_registry, "canarywatch_actuator_retries_total", status="503") >= 3

    # Second instance, same group, a healthy API: it gets the command again and applies it.
    second_registry = CollectorRegistry()
    second = Actuator(settings, actuator_api, ActuatorMetrics(second_registry), policy=FAST)
    async with running(second):
        await poll_until(
            lambda: read_rollout(admin, NAMESPACE, rollout)["status"].get("abort"),
            within_s=30,
            what="status.abort after the restart",
        )
        await wait_committed(kafka_bootstrap, second.group_id, tp, 1)

    applied = [
        count(r, "canarywatch_actuator_commands_total", outcome="applied")
        for r in (first_registry, second_registry)
    ]
    assert applied == [0, 1]
    assert len(events_about(admin, NAMESPACE, rollout)) == 1


class HeldAborts:
    """The real API, except that the abort patch of one Rollout waits until released (a slow
    API server answer, a long retry)."""

    def __init__(self, api: KubeRolloutApi, held: str) -> None:
        self.api = api
        self.held = held
        self.waiting = threading.Event()
        self.release = threading.Event()

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        return self.api.get_rollout(namespace, name)

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        if name == self.held:
            self.waiting.set()
            if not self.release.wait(60):
                raise KubeError(504, "held too long (test)")
        return self.api.abort_rollout(namespace, name, resource_version)

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Any]:
        return self.api.rollout_events(namespace, name, uid)

    def record_event(self, namespace: str, event: Any) -> bool:
        return self.api.record_event(namespace, event)

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        return self.api.pause_rollout(namespace, name, resource_version)

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        return self.api.replica_set_revision(namespace, name)


async def test_a_slow_command_delays_no_other_rollouts_and_holds_the_commit(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    """One partition (one namespace), two Rollouts: the first one's patch hangs; the second
    one's command, behind it in the partition, is applied meanwhile, and nothing is committed
    until the first one is done (the commit point is the lowest command not yet applied)."""
    settings = unique_settings(kafka_bootstrap, tmp_path, "act")
    tp = TopicPartition(settings.topics.commands, 0)
    await create_topics(settings)
    slow, quick = name(), name()
    for rollout in (slow, quick):
        create_rollout(admin, NAMESPACE, rollout, canary_status("6f7d9c8b5d", "58c9b7d4f6"))
    commands = [command_for(NAMESPACE, n, "6f7d9c8b5d") for n in (slow, quick)]
    await produce(
        kafka_bootstrap,
        settings.topics.commands,
        [(c.namespace.encode(), encode_abort_command(c)) for c in commands],
    )
    api = HeldAborts(actuator_api, slow)
    registry = CollectorRegistry()
    actuator = Actuator(settings, api, ActuatorMetrics(registry), policy=FAST)
    try:
        async with running(actuator):
            await poll_until(api.waiting.is_set, 30, "the slow patch to be sent")
            await poll_until(
                lambda: read_rollout(admin, NAMESPACE, quick)["status"].get("abort"),
                within_s=30,
                what="the quick Rollout aborted while the slow one's patch hangs",
            )
            await poll_until(
                lambda: count(registry, "canarywatch_actuator_commands_total", outcome="applied"),
                30,
                "the quick command counted",
            )
            assert await committed(kafka_bootstrap, actuator.group_id, tp) in (None, 0)
            assert "abort" not in read_rollout(admin, NAMESPACE, slow)["status"]
            api.release.set()
            await wait_committed(kafka_bootstrap, actuator.group_id, tp, 2)
    finally:
        api.release.set()
    assert read_rollout(admin, NAMESPACE, slow)["status"]["abort"] is True
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 2


# --- the fallback for controllers without the status subresource ----------------------------

FALLBACK_GROUP = "fallback.canarywatch.test"


@pytest.fixture(scope="module")
def fallback_crd(kube_api: LocalKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Rollout CRD under another group, without the status subresource (old controllers)."""
    crd = yaml.safe_load(default_rollout_crd().read_text())
    crd = copy.deepcopy(crd)
    crd["metadata"] = {"name": f"{PLURAL}.{FALLBACK_GROUP}"}
    crd["spec"]["group"] = FALLBACK_GROUP
    for version in crd["spec"]["versions"]:
        version.pop("subresources", None)
    path = tmp_path_factory.mktemp("crd") / "rollout-crd-without-status.yaml"
    path.write_text(yaml.safe_dump(crd))
    kube_api.install_crd(path)
    return FALLBACK_GROUP


def test_abort_falls_back_to_the_main_resource_when_status_is_404(
    admin: k8s.ApiClient, fallback_crd: str
) -> None:
    rollout = name()
    manifest = rollout_manifest(NAMESPACE, rollout)
    manifest["apiVersion"] = f"{fallback_crd}/{VERSION}"
    manifest["status"] = canary_status("6f7d9c8b5d", "58c9b7d4f6")
    objects = k8s.CustomObjectsApi(admin)
    objects.create_namespaced_custom_object(fallback_crd, VERSION, NAMESPACE, PLURAL, manifest)
    api = KubeRolloutApi(admin, group=fallback_crd)

    assert api.abort_rollout(NAMESPACE, rollout) is True
    got = api.get_rollout(NAMESPACE, rollout)
    assert got is not None and got["status"]["abort"] is True
    assert api.get_rollout(NAMESPACE, "no-such-rollout") is None
    assert api.abort_rollout(NAMESPACE, "no-such-rollout") is False


async def test_cli_in_shadow_mode_with_a_kubeconfig(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, kube_api: LocalKubeAPI
) -> None:
    """`CANARYWATCH_ACTION_POLICY=dry-run canarywatch actuator --kubeconfig ...` as a process:
    metrics, SIGTERM."""
    settings = dataclasses.replace(
        unique_settings(kafka_bootstrap, tmp_path, "act"),
        metrics_port=free_port(),
        action_policy=Action.DRY_RUN,
    )
    rollout, before, _ = await pending_abort(settings, admin)
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig", identity="actuator")
    log_path = tmp_path / "actuator.log"
    argv = ["-m", "agents.cli", "actuator", "--kubeconfig", str(kubeconfig)]
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            env={**os.environ, **settings_to_env(settings)},
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await poll_until(
                lambda: (
                    process.returncode is not None
                    or read_metric(
                        settings.metrics_port,
                        "canarywatch_actuator_commands_total",
                        outcome="dry_run",
                    )
                    == 1.0
                ),
                within_s=60,
                what="the dry-run outcome on /metrics",
            )
            assert process.returncode is None, log_path.read_text()
        finally:
            process.terminate()
            code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0, log_path.read_text()
    assert read_rollout(admin, NAMESPACE, rollout) == before
    assert "dry run: would abort" in log_path.read_text()


class TemplateChangeBeforePatch:
    """The real API; just before the first abort patch someone deploys a new template, and no
    controller reconciles it (none runs in this namespace): `currentPodHash` still names the
    judged canary while `spec.template` is the next revision's."""

    def __init__(self, api: KubeRolloutApi, admin: k8s.ApiClient) -> None:
        self.api, self.admin = api, admin
        self.patches: list[str] = []

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        return self.api.get_rollout(namespace, name)

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Any]:
        return self.api.rollout_events(namespace, name, uid)

    def record_event(self, namespace: str, event: Any) -> bool:
        return self.api.record_event(namespace, event)

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        return self.api.pause_rollout(namespace, name, resource_version)

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        return self.api.replica_set_revision(namespace, name)

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        self.patches.append(resource_version)
        if len(self.patches) == 1:
            image = {"containers": [{"name": "app", "image": "registry.example/web:3.0.0"}]}
            k8s.CustomObjectsApi(self.admin).patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"spec": {"template": {"spec": image}}},
                _content_type=MERGE_PATCH,
            )
        return self.api.abort_rollout(namespace, name, resource_version)


async def test_a_template_change_the_controller_has_not_seen_defers_the_abort(
    admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    rollout = name()
    create_rollout(admin, NAMESPACE, rollout, canary_status("6f7d9c8b5d", "58c9b7d4f6"))
    api = TemplateChangeBeforePatch(actuator_api, admin)
    registry = CollectorRegistry()
    policy = dataclasses.replace(FAST, budget_s=1.0)
    actuator = Actuator(Settings(), api, ActuatorMetrics(registry), policy=policy)

    result = await actuator.handle(command_for(NAMESPACE, rollout, "6f7d9c8b5d"))

    # 409 on the patch judged at generation 1; then generation 2 is not observed: it waits, and
    # defers the command to be read again, rather than abort what the new template becomes.
    assert result.outcome is Outcome.DEFERRED, result
    assert "has not observed generation 2" in result.detail
    assert len(api.patches) == 1
    after = read_rollout(admin, NAMESPACE, rollout)
    assert after["metadata"]["generation"] == 2
    assert "abort" not in after["status"]
    assert count(registry, "canarywatch_actuator_retries_total", status="409") == 1
    assert count(registry, "canarywatch_actuator_retries_total", status="unreconciled") >= 1


async def test_a_canary_hash_behind_the_rollouts_revision_defers_the_abort(
    admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    """The real controller's intermediate state after a template change, made by hand:
    revision 3 on the Rollout, observedGeneration caught up, but currentPodHash still naming the
    ReplicaSet of revision 2."""
    rollout, canary = name(), "6f7d9c8b5d"
    create_rollout(admin, NAMESPACE, rollout, canary_status(canary, "58c9b7d4f6"))
    revision = "rollout.argoproj.io/revision"
    objects = k8s.CustomObjectsApi(admin)
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, rollout,
        {"metadata": {"annotations": {revision: "3"}}}, _content_type=MERGE_PATCH,
    )  # fmt: skip
    labels = {"app": rollout, "rollouts-pod-template-hash": canary}
    replica_set: Any = {
        "metadata": {
            "name": f"{rollout}-{canary}",
            "labels": labels,
            "annotations": {revision: "2"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:2.0.0"}]},
            },
        },
    }
    apps = k8s.AppsV1Api(admin)
    apps.create_namespaced_replica_set(NAMESPACE, replica_set)
    registry = CollectorRegistry()
    policy = dataclasses.replace(FAST, budget_s=1.0)
    actuator = Actuator(Settings(), actuator_api, ActuatorMetrics(registry), policy=policy)
    command = command_for(NAMESPACE, rollout, canary)

    result = await actuator.handle(command)

    assert result.outcome is Outcome.DEFERRED and "not caught up" in result.detail, result
    assert "abort" not in read_rollout(admin, NAMESPACE, rollout)["status"]
    # The controller's next write would move currentPodHash on; here the revision catches up.
    apps.patch_namespaced_replica_set(
        f"{rollout}-{canary}", NAMESPACE, {"metadata": {"annotations": {revision: "3"}}}
    )
    assert (await actuator.handle(command)).outcome is Outcome.APPLIED
    assert read_rollout(admin, NAMESPACE, rollout)["status"]["abort"] is True
