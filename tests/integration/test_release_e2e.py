"""Release-level analysis end to end: two worker processes -> summaries -> two release agents ->
fan-out aborts -> actuator -> Rollouts in the real API server; triage on its topic.

A bad release across 200 quiet environments (each far too quiet for its own test) must be
halted once and every one of its Rollouts read `status.abort=true`; a healthy release beside it
is untouched, except one environment whose own code is broken: the worker aborts it, and the
release agent's triage of that abort says `environment`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics, KubeRolloutApi
from agents.kafka_admin import partition_for_key
from agents.processes import WorkerProcess, free_port, poll_until, read_metric
from agents.releases import ReleaseAgent, ReleaseMetrics, ensure_release_topics
from agents.settings import Settings, Topics
from agents.simulator import producer_for
from agents.triagenotify import TRIAGE_EVENT_REASON, TriageNotifier
from streams.events import decode_abort_command, encode_rollout_state
from streams.release import (
    ReleaseVerdict,
    Triage,
    TriageRecord,
    decode_release_verdict,
    decode_triage,
    release_decision_id,
)
from streams.simulation import (
    ReleaseEnv,
    ReleaseFleetSettings,
    ReleaseScenario,
    plan_release_fleet,
    release_fleet_lines,
    to_messages,
)
from tests.integration.test_actuator import (
    count,
    create_rollout,
    ensure_namespace,
    events_about,
    read_rollout,
    running,
)
from tests.support.localkube import LocalKubeAPI

pytestmark = [pytest.mark.kube, pytest.mark.kafka]

FLEET = ReleaseFleetSettings(namespaces=4)  # request lines spread over both workers
PARTITIONS = 4


def _two_releases(tag: str) -> tuple[str, str]:
    """A bad and a healthy release name on different partitions (so two agents share them)."""
    bad = f"registry.example/shop:7.3.0-{tag}"
    for i in range(100):
        healthy = f"registry.example/shop:7.2.{i}-{tag}"
        if partition_for_key(healthy.encode(), PARTITIONS) != partition_for_key(
            bad.encode(), PARTITIONS
        ):
            return bad, healthy
    raise AssertionError("no second partition")


@contextlib.asynccontextmanager
async def release_agent(settings: Settings) -> AsyncIterator[ReleaseAgent]:
    agent = ReleaseAgent(settings, ReleaseMetrics(CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def read_topic(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every record of `topic` up to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = range(settings.partitions)  # ensure_release_topics made them so
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes, bytes]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    out.append((record.key or b"", record.value or b""))
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def canary_status(e: ReleaseEnv) -> dict[str, Any]:
    return {
        "currentPodHash": e.canary_hash,
        "stableRS": e.stable_hash,
        "currentStepIndex": 0,
        "phase": "Paused",
        "observedGeneration": "1",
    }


async def test_a_bad_release_is_halted_in_every_quiet_environment_and_triaged(
    kafka_bootstrap: str, kube_api: LocalKubeAPI, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:6]
    settings = Settings(
        bootstrap=kafka_bootstrap,
        app_id=f"rel-e2e-{run_id}",
        topics=Topics(f"rel-e2e-{run_id}"),
        partitions=PARTITIONS,
        replication_factor=1,
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
        summary_every_s=0.5,
        release_evaluate_every_s=0.5,
    )
    bad_release, healthy_release = _two_releases(run_id)
    envs = plan_release_fleet(
        FLEET, (f"rb-{run_id}", bad_release), (f"rh-{run_id}", healthy_release), run_id
    )
    by_env = {e.env: e for e in envs}
    bad = [e for e in envs if e.scenario is ReleaseScenario.BAD_RELEASE]
    healthy = [e for e in envs if e.scenario is ReleaseScenario.HEALTHY]
    (customer,) = [e for e in envs if e.scenario is ReleaseScenario.BAD_CUSTOMER]
    assert len(bad) >= 200

    await ensure_release_topics(settings)
    workers = [
        WorkerProcess(
            settings.with_overrides(
                metrics_port=free_port() if i else settings.metrics_port,
                data_dir=tmp_path / f"worker-{i}",
            ),
            tmp_path / f"worker-{i}.log",
        )
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    registry = CollectorRegistry()
    producer = producer_for(kafka_bootstrap)
    with kube_api.client("admin") as admin, kube_api.client("actuator") as actuator_client:
        created = await asyncio.to_thread(_create_rollouts, kube_api, admin, envs)
        try:
            for worker in workers:
                await worker.wait_ready()

            def split() -> bool:  # both workers read request-log partitions
                owned = [
                    read_metric(w.settings.metrics_port, "canarywatch_ingest_partitions") or 0.0
                    for w in workers
                ]
                return all(n > 0 for n in owned) and sum(owned) == PARTITIONS

            await poll_until(split, 60, "two workers sharing the request-log partitions")
            await producer.start()
            now = time.time()
            for e in envs:
                await producer.send(
                    settings.topics.rollouts,
                    key=e.namespace.encode(),
                    value=encode_rollout_state(e.state(now)),
                )
            await producer.flush()
            await poll_until(
                lambda: all(
                    read_metric(w.settings.metrics_port, "canarywatch_canaries_in_progress")
                    == len(envs)
                    for w in workers
                ),
                60,
                "every worker's view of every canary",
            )
            actuator = Actuator(
                settings, KubeRolloutApi(actuator_client), ActuatorMetrics(registry)
            )
            notifier = TriageNotifier(
                settings, KubeRolloutApi(actuator_client), CollectorRegistry(), "test"
            )
            notifying = asyncio.create_task(notifier.run(notifier_stop := asyncio.Event()))
            async with (
                running(actuator),
                release_agent(settings) as first,
                release_agent(settings) as second,
            ):
                await _play(producer, settings, envs, time.time())

                def all_aborted() -> bool:
                    return all(
                        read_rollout(admin, e.namespace, e.rollout).get("status", {}).get("abort")
                        is True
                        for e in [*bad, customer]
                    )

                await poll_until(all_aborted, 120, "the bad release's and customer's aborts")

                def triaged() -> TriageRecord | None:
                    for agent in (first, second):
                        for record in agent.triaged:
                            if record.env == customer.env:
                                return record
                    return None

                record = await poll_until(triaged, 60, "the triage of the customer's abort")

                def triage_events() -> list[k8s.CoreV1Event]:
                    return [
                        event
                        for event in events_about(admin, customer.namespace, customer.rollout)
                        if event.reason == TRIAGE_EVENT_REASON
                    ]

                (triage_event,) = await poll_until(triage_events, 60, "the triage Event")
                assert "environment" in (triage_event.message or ""), triage_event.message
                notifier_stop.set()
                await asyncio.wait_for(notifying, 30)
                agents = (first, second)
                assert all(a.partitions for a in agents), "both agents own partitions"
            # A release agent started afresh (the same group, after the others left) restores
            # the latched halt from the releases topic and fans nothing out again.
            async with release_agent(settings) as again:

                def restored() -> bool:
                    parts = again.partitions.values()
                    return (
                        len(again.partitions) == settings.partitions
                        and all(p.restored for p in parts)
                        and again.passes >= 3 * settings.partitions
                    )

                await poll_until(restored, 60, "a restarted release agent's restore")
                assert any(bad_release in p.board.halted for p in again.partitions.values())
                # No second decision: nothing new is halted or counted. (A command may go again
                # to an environment the restored board cannot see was aborted, e.g. aborted by a
                # worker while no bridge reports status.abort; it carries the revision's own
                # decision id, so the actuator judges it stale: already aborted.)
                assert {v.decision_id for v in again.verdicts} <= {release_decision_id(bad_release)}
                assert (
                    count(
                        again.metrics.registry, "canarywatch_release_halts_total", signal="errors"
                    )
                    == 0
                )
                for c in again.commands:
                    assert c.decision_id == f"{c.namespace}/{c.rollout}@{c.pod_hash}"
                    assert read_rollout(admin, c.namespace, c.rollout)["status"]["abort"] is True
            counted = [
                read_metric(
                    w.settings.metrics_port, "canarywatch_request_lines_total", outcome="counted"
                )
                or 0.0
                for w in workers
            ]
            assert all(n > 0 for n in counted), counted  # both workers judged environments
        finally:
            await producer.stop()
            for worker in workers:
                worker.stop()

        assert record is not None and record.category is Triage.ENVIRONMENT, record
        # The verdicts topic: one halt, of the bad release, naming every bad environment.
        verdicts: list[ReleaseVerdict] = [
            decode_release_verdict(v)
            for _, v in await read_topic(settings, settings.topics.releases)
        ]
        assert {v.release for v in verdicts} == {bad_release}
        assert {v.decision_id for v in verdicts} == {release_decision_id(bad_release)}
        # Every abort on the commands topic: the worker's own (busy or unlucky environments)
        # and the release agents' fan-out, which covers every other environment of the release.
        sent = [
            decode_abort_command(v) for _, v in await read_topic(settings, settings.topics.commands)
        ]
        own = {c.env for c in sent if c.reason != "ReleaseRegression"}
        fanout = [c for c in sent if c.reason == "ReleaseRegression"]
        assert customer.env in own
        assert {c.env for c in sent} == {e.env for e in bad} | {customer.env}
        targets = {env for v in verdicts for env, _ in v.targets}
        assert targets | (own - {customer.env}) == {e.env for e in bad}
        assert sorted(c.env for c in fanout) == sorted(targets), "one command per target"
        assert len(fanout) >= len(bad) // 2, "most quiet environments are the release's to halt"
        mine = [c for a in agents for c in a.commands]
        assert sorted(fanout, key=lambda c: c.env) == sorted(mine, key=lambda c: c.env)
        assert all(c.extra["release_decision"] == release_decision_id(bad_release) for c in fanout)
        assert all(c.extra["triage"] == "release" for c in fanout)
        assert all(c.decision_id == f"{c.namespace}/{c.rollout}@{c.pod_hash}" for c in fanout)
        # The triage topic carries the customer's triage, keyed by its environment.
        triage = {
            k.decode(): decode_triage(v)
            for k, v in await read_topic(settings, settings.topics.triage)
        }
        assert triage[customer.env].category is Triage.ENVIRONMENT
        fanned = [e for e in bad if e.env in targets]
        for e in fanned[:5]:
            (event,) = [
                ev
                for ev in events_about(admin, e.namespace, e.rollout)
                if ev.reason == "CanarywatchAbort"
            ]
            assert f"release decision {release_decision_id(bad_release)}" in (event.message or "")
            assert "triage release" in (event.message or "")
        for e in healthy:  # the healthy release: untouched, to the byte
            assert read_rollout(admin, e.namespace, e.rollout) == created[e.env], e
            assert events_about(admin, e.namespace, e.rollout) == [], e
        assert by_env[customer.env].release == healthy_release
        applied = count(registry, "canarywatch_actuator_commands_total", outcome="applied")
        assert (
            applied == len(bad) + 1
        )  # one applied abort per Rollout  # one applied abort per Rollout
        assert count(registry, "canarywatch_actuator_commands_total", outcome="failed") == 0


ROUNDS = 20
ROUND_S = 0.75


async def _play(
    producer: AIOKafkaProducer, settings: Settings, envs: list[ReleaseEnv], start: float
) -> None:
    """Every environment's requests, timestamped over ROUNDS x ROUND_S seconds from `start`,
    each round published when its time comes (the per-environment test reads a burst as one
    slice, so a customer's broken canary needs its traffic spread in processing time too)."""
    lines = release_fleet_lines(
        envs, FLEET, np.random.default_rng(20261201), start, ROUNDS * ROUND_S
    )
    for k in range(ROUNDS):
        lo, hi = start + k * ROUND_S, start + (k + 1) * ROUND_S
        batch = [line for line in lines if lo <= line.ts < hi]
        for key, value in to_messages(batch, 50):
            await producer.send(settings.topics.requests, key=key, value=value)
        await producer.flush()
        # Pacing the playback in real time, as the simulator does; not a synchronisation.
        await asyncio.sleep(max(0.0, hi - time.time()))


def _create_rollouts(
    kube: LocalKubeAPI, admin: k8s.ApiClient, envs: list[ReleaseEnv]
) -> dict[str, dict[str, Any]]:
    created = {}
    for namespace in sorted({e.namespace for e in envs}):
        ensure_namespace(kube, namespace)
    for e in envs:
        created[e.env] = create_rollout(admin, e.namespace, e.rollout, canary_status(e))
    return created
