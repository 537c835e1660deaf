"""The bridge against a real kube-apiserver and a real Kafka, as the read-only `bridge` identity."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.bridge import Bridge, BridgeMetrics, BridgeOptions, RolloutReader
from agents.kafka_admin import ensure_topics
from agents.processes import free_port, poll_until, read_metric
from agents.rolloutapi import MERGE_PATCH
from agents.settings import Settings, settings_to_env
from streams.events import RolloutState, decode_rollout_state
from streams.rollouts import GROUP, PLURAL, VERSION
from tests.integration.test_actuator import (
    count,
    create_rollout,
    ensure_namespace,
    produce,
    set_status,
    unique_settings,
)
from tests.support.localkube import LocalKubeAPI

pytestmark = [pytest.mark.kube, pytest.mark.kafka]

NAMESPACE = "cw-bridge"
IMAGE = "registry.example/web:2.0.0"
CANARY, STABLE = "6f7d9c8b5d", "58c9b7d4f6"


class Snapshots:
    """Everything on the rollouts topic, from the beginning, grouped by key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        self.by_key: dict[str, list[RolloutState]] = {}

    async def __aenter__(self) -> Snapshots:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def until(self, key: str, count: int, *, within: float = 30.0) -> list[RolloutState]:
        """The snapshots of `key` once there are at least `count` of them."""
        deadline = time.monotonic() + within
        while len(self.by_key.get(key, [])) < count:
            assert time.monotonic() < deadline, f"{key}: {self.by_key.get(key)}"
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    state = decode_rollout_state(record.value or b"")
                    # Keyed by namespace: co-partitioned with that namespace's request logs.
                    assert record.key == state.namespace.encode()
                    self.by_key.setdefault(state.env, []).append(state)
        return self.by_key[key]


def meaningful(states: list[RolloutState]) -> list[RolloutState]:
    """Without when and at which resourceVersion each was read (every snapshot has one)."""
    assert all(s.resource_version.isdigit() for s in states), states
    return [dataclasses.replace(s, observed_at=0.0, resource_version="") for s in states]


def expected(name: str, **fields: Any) -> RolloutState:
    base = RolloutState(
        namespace=NAMESPACE,
        name=name,
        current_pod_hash=CANARY,
        stable_hash=STABLE,
        step_index=0,
        phase="Progressing",
        aborted=False,
        canary_weight=20,
        release=IMAGE,
    )
    return dataclasses.replace(base, **fields)


@pytest.fixture(scope="module")
def admin(kube_api: LocalKubeAPI) -> Iterator[k8s.ApiClient]:
    ensure_namespace(kube_api, NAMESPACE)
    with kube_api.client("admin") as api:
        yield api


@pytest.fixture
def reader(kube_api: LocalKubeAPI) -> Iterator[RolloutReader]:
    with kube_api.client("bridge") as api:
        yield RolloutReader(api, timeout=(2, 10))


@contextlib.asynccontextmanager
async def running(bridge: Bridge, registry: CollectorRegistry) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await poll_until(
            lambda: task.done() or count(registry, "canarywatch_bridge_ready") == 1,
            within_s=30,
            what="the bridge to be ready",
        )
        if task.done():
            task.result()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def topics_for(settings: Settings, *extra: str) -> None:
    await ensure_topics(
        settings.bootstrap, {**settings.topic_partitions(), **dict.fromkeys(extra, 1)}
    )


def status(step: int, **more: Any) -> dict[str, Any]:
    return {
        "currentPodHash": CANARY,
        "stableRS": STABLE,
        "currentStepIndex": step,
        "phase": "Progressing",
        "observedGeneration": "1",  # the controller has reconciled the spec
        **more,
    }


async def test_publishes_one_snapshot_per_meaningful_change(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, reader: RolloutReader
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "bridge")
    await topics_for(settings)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))  # exists before the bridge lists
    registry = CollectorRegistry()
    bridge = Bridge(settings, reader, BridgeMetrics(registry))  # every namespace
    key = f"{NAMESPACE}/{name}"
    async with (
        Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
        running(bridge, registry),
    ):
        await snapshots.until(key, 1)
        set_status(admin, NAMESPACE, name, {"availableReplicas": 2, "readyReplicas": 2})
        set_status(admin, NAMESPACE, name, {"currentStepIndex": 1, "phase": "Paused"})
        set_status(admin, NAMESPACE, name, {"currentStepIndex": 2, "phase": "Progressing"})
        set_status(admin, NAMESPACE, name, {"abort": True, "phase": "Degraded"})
        states = await snapshots.until(key, 4)
        await poll_until(
            lambda: (
                count(
                    registry,
                    "canarywatch_bridge_snapshots_total",
                    source="watch",
                    outcome="unchanged",
                )
                >= 1
            ),
            within_s=10,
            what="the replica-count change to be read and dropped",
        )

    assert meaningful(states) == [
        expected(name),
        expected(name, step_index=1, phase="Paused"),
        expected(name, step_index=2, canary_weight=60),
        expected(name, step_index=2, phase="Degraded", aborted=True, canary_weight=0),
    ]
    assert all(s.observed_at > 0 for s in states)
    assert (
        count(registry, "canarywatch_bridge_snapshots_total", source="list", outcome="published")
        >= 1
    )


async def test_no_status_change_is_lost_across_an_apiserver_restart(
    kafka_bootstrap: str,
    tmp_path: Path,
    admin: k8s.ApiClient,
    reader: RolloutReader,
    kube_api: LocalKubeAPI,
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "bridge")
    await topics_for(settings)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))
    registry = CollectorRegistry()
    options = BridgeOptions(namespaces=(NAMESPACE,), backoff_s=0.1, backoff_max_s=0.5)
    bridge = Bridge(settings, reader, BridgeMetrics(registry), options)
    key = f"{NAMESPACE}/{name}"
    async with (
        Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
        running(bridge, registry),
    ):
        await snapshots.until(key, 1)
        set_status(admin, NAMESPACE, name, {"currentStepIndex": 1, "phase": "Paused"})
        await asyncio.to_thread(kube_api.restart_apiserver)  # right after the change
        set_status(admin, NAMESPACE, name, {"currentStepIndex": 2, "phase": "Progressing"})
        states = await snapshots.until(key, 3, within=60)
        restarts = {
            reason: count(registry, "canarywatch_bridge_watch_restarts_total", reason=reason)
            for reason in ("closed", "expired", "error")
        }

    assert meaningful(states) == [
        expected(name),
        expected(name, step_index=1, phase="Paused"),
        expected(name, step_index=2, canary_weight=60),
    ]
    assert sum(restarts.values()) >= 1, restarts  # the watch did break and was resumed


def exporter_event(namespace: str, name: str, reason: str, kind: str = "Rollout") -> bytes:
    """An Event as kubernetes-event-exporter's Kafka sink publishes it (no layout)."""
    return orjson.dumps(
        {
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:10]}", "namespace": namespace},
            "reason": reason,
            "message": "Rollout step 1/3 completed (setWeight: 20)",
            "type": "Normal",
            "count": 1,
            "source": {"component": "rollouts-controller"},
            "firstTimestamp": "2026-11-26T09:00:00Z",
            "clusterName": "test",
            "involvedObject": {
                "kind": kind,
                "namespace": namespace,
                "name": name,
                "apiVersion": "argoproj.io/v1alpha1",
            },
        }
    )


async def test_exporter_events_trigger_a_read_of_their_rollout(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, reader: RolloutReader
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "bridge")
    events_topic = f"{settings.topics.prefix}.kube-events"
    await topics_for(settings, events_topic)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))
    registry = CollectorRegistry()
    # No watch: a snapshot can only come from an exporter event.
    options = BridgeOptions(watch=False, events_topic=events_topic)
    bridge = Bridge(settings, reader, BridgeMetrics(registry), options)
    key = f"{NAMESPACE}/{name}"
    async with (
        Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
        running(bridge, registry),
    ):
        await produce(
            kafka_bootstrap,
            events_topic,
            [
                (b"e1", b"not json"),
                (b"e2", exporter_event(NAMESPACE, name, "Started", kind="Pod")),
                (b"e3", exporter_event(NAMESPACE, name, "RolloutUpdated")),
            ],
        )
        await snapshots.until(key, 1)
        set_status(admin, NAMESPACE, name, {"currentStepIndex": 1, "phase": "Paused"})
        await produce(
            kafka_bootstrap,
            events_topic,
            [(b"e4", exporter_event(NAMESPACE, name, "RolloutStepCompleted"))],
        )
        states = await snapshots.until(key, 2)

    assert meaningful(states) == [expected(name), expected(name, step_index=1, phase="Paused")]
    for outcome, n in (("invalid", 1), ("ignored", 1), ("read", 2)):
        assert count(registry, "canarywatch_bridge_exporter_events_total", outcome=outcome) == n
    # The refused one is dead-lettered with its reason.
    assert (
        count(
            registry,
            "canarywatch_deadletter_messages_total",
            topic=events_topic,
            reason="not_json",
        )
        == 1
    )


class FirstWatchTooOld(RolloutReader):
    """The real reader, but its first watch asks for resourceVersion 1: long compacted out of
    the server's watch cache, so the server answers 410 Gone, as after a long disconnection."""

    forced = False

    def watch(
        self, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        if not self.forced:
            self.forced = True
            version = "1"
        return super().watch(namespace, version, timeout_s)


async def test_relists_when_the_watch_is_gone(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, kube_api: LocalKubeAPI
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "bridge")
    await topics_for(settings)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))
    registry = CollectorRegistry()
    key = f"{NAMESPACE}/{name}"
    with kube_api.client("bridge") as api:
        reader = FirstWatchTooOld(api, timeout=(2, 10))
        bridge = Bridge(settings, reader, BridgeMetrics(registry), BridgeOptions((NAMESPACE,)))
        async with (
            Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
            running(bridge, registry),
        ):
            await poll_until(
                lambda: count(registry, "canarywatch_bridge_lists_total") >= 2,
                within_s=30,
                what="a relist after 410 Gone",
            )
            set_status(admin, NAMESPACE, name, {"currentStepIndex": 1, "phase": "Paused"})
            states = await snapshots.until(key, 2)

    assert reader.forced
    assert count(registry, "canarywatch_bridge_watch_restarts_total", reason="expired") == 1
    # The relist re-read the unchanged Rollout without publishing it again.
    assert meaningful(states) == [expected(name), expected(name, step_index=1, phase="Paused")]


async def test_cli_publishes_with_a_kubeconfig_and_stops_on_sigterm(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, kube_api: LocalKubeAPI
) -> None:
    settings = dataclasses.replace(
        unique_settings(kafka_bootstrap, tmp_path, "bridge"), metrics_port=free_port()
    )
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig", identity="bridge")
    log_path = tmp_path / "bridge.log"
    argv = ["-m", "agents.cli", "bridge", "--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig)]
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
                    or read_metric(settings.metrics_port, "canarywatch_bridge_ready") == 1.0
                ),
                within_s=60,
                what="the bridge process to be ready",
            )
            assert process.returncode is None, log_path.read_text()
            async with Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots:
                states = await snapshots.until(f"{NAMESPACE}/{name}", 1)
        finally:
            process.terminate()
            code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0, log_path.read_text()
    assert meaningful(states) == [expected(name)]


# --- snapshots that are true ----------------------------------------------------------------

NEW_CANARY, NEW_IMAGE = "7a8b9c0d1e", "registry.example/web:3.0.0"


def snapshot_count(registry: CollectorRegistry, source: str, outcome: str) -> float:
    return count(registry, "canarywatch_bridge_snapshots_total", source=source, outcome=outcome)


def set_image(admin: k8s.ApiClient, name: str, image: str) -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, patch, _content_type=MERGE_PATCH
    )


async def test_a_spec_the_controller_has_not_observed_is_not_published(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, reader: RolloutReader
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "bridge")
    await topics_for(settings)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(1, phase="Paused"))
    registry = CollectorRegistry()
    bridge = Bridge(settings, reader, BridgeMetrics(registry), BridgeOptions((NAMESPACE,)))
    key = f"{NAMESPACE}/{name}"
    async with (
        Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
        running(bridge, registry),
    ):
        await snapshots.until(key, 1)
        # A new template (generation 2): until the controller reconciles it, the status still
        # describes the old canary, and a snapshot would pair its hash with the new image.
        set_image(admin, name, NEW_IMAGE)
        await poll_until(
            lambda: (
                count(
                    registry,
                    "canarywatch_bridge_snapshots_total",
                    source="watch",
                    outcome="unreconciled",
                )
                >= 1
            ),
            within_s=10,
            what="the unreconciled Rollout to be read and held back",
        )
        # The controller's reconcile: the new canary, generation 2 observed.
        set_status(
            admin,
            NAMESPACE,
            name,
            {"currentPodHash": NEW_CANARY, "currentStepIndex": 0, "observedGeneration": "2"},
        )
        states = await snapshots.until(key, 2)

    assert meaningful(states) == [
        expected(name, step_index=1, phase="Paused"),
        expected(name, current_pod_hash=NEW_CANARY, release=NEW_IMAGE, phase="Paused"),
    ]


async def test_a_deleted_rollout_ends(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, reader: RolloutReader
) -> None:
    settings = dataclasses.replace(
        unique_settings(kafka_bootstrap, tmp_path, "bridge"), cluster="eu-1"
    )
    await topics_for(settings)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))
    registry = CollectorRegistry()
    bridge = Bridge(settings, reader, BridgeMetrics(registry), BridgeOptions((NAMESPACE,)))
    key = f"{NAMESPACE}/{name}"
    async with (
        Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
        running(bridge, registry),
    ):
        await snapshots.until(key, 1)
        k8s.CustomObjectsApi(admin).delete_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, name
        )
        states = await snapshots.until(key, 2)

    ended = states[1]
    assert [s.cluster for s in states] == ["eu-1", "eu-1"]  # the bridge's cluster name
    assert ended.ended and not ended.canary_in_progress
    assert (ended.current_pod_hash, ended.stable_hash) == (CANARY, STABLE)
    assert ended.observed_at >= states[0].observed_at
    assert (
        count(registry, "canarywatch_bridge_snapshots_total", source="watch", outcome="ended") == 1
    )


class DeletedWhileAway(RolloutReader):
    """The real reader; its first watch finds the Rollout `name` deleted meanwhile (as admin)
    and the watch expired (410 Gone, from resourceVersion 1), so only the relist can tell."""

    def __init__(self, api: k8s.ApiClient, admin: k8s.ApiClient, name: str) -> None:
        super().__init__(api, timeout=(2, 10))
        self.admin, self.name, self.forced = admin, name, False

    def watch(
        self, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        if not self.forced:
            self.forced = True
            k8s.CustomObjectsApi(self.admin).delete_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, self.name
            )
            version = "1"
        return super().watch(namespace, version, timeout_s)


async def test_a_rollout_missing_from_a_relist_ends(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, kube_api: LocalKubeAPI
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "bridge")
    await topics_for(settings)
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_rollout(admin, NAMESPACE, name, status(0))
    registry = CollectorRegistry()
    key = f"{NAMESPACE}/{name}"
    with kube_api.client("bridge") as api:
        reader = DeletedWhileAway(api, admin, name)
        bridge = Bridge(settings, reader, BridgeMetrics(registry), BridgeOptions((NAMESPACE,)))
        async with (
            Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
            running(bridge, registry),
        ):
            states = await snapshots.until(key, 2)

    assert reader.forced
    assert [s.ended for s in states] == [False, True]
    assert (
        count(registry, "canarywatch_bridge_snapshots_total", source="list", outcome="ended") == 1
    )
