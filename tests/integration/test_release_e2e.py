"""Release-level analysis end to end: two worker processes -> summaries -> two release agents ->
fan-out aborts -> actuator -> Rollouts in the real API server; triage on its topic. A release
agent started afresh after them restores their table and sends nothing again.

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

from agents.actuator import Actuator, ActuatorMetrics
from agents.kafka_admin import partition_for_key
from agents.processes import (
    WorkerProcess,
    free_port,
    poll_until,
    poll_until_async,
    read_metric,
    release_agent_process,
)
from agents.releases import ensure_release_topics
from agents.rolloutapi import KubeRolloutApi
from agents.settings import Settings, Topics
from agents.simulator import producer_for
from agents.triagenotify import TRIAGE_EVENT_REASON, TriageNotifier
from streams.events import decision_id_for, decode_abort_command, encode_rollout_state, epoch_of
from streams.release import Triage
from streams.releaserecords import (
    ReleaseVerdict,
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
async def release_agent(settings: Settings, log_path: Path) -> AsyncIterator[WorkerProcess]:
    """`canarywatch releases` in a child process (its own metrics port), until the block ends."""
    agent = release_agent_process(settings.with_overrides(metrics_port=free_port()), log_path)
    agent.start()
    try:
        await agent.wait_ready()
        yield agent
    finally:
        agent.stop()


def agent_metric(agent: WorkerProcess, name: str, **labels: str) -> float:
    return read_metric(agent.settings.metrics_port, name, **labels) or 0.0


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
                release_agent(settings, tmp_path / "agent-1.log") as first,
                release_agent(settings, tmp_path / "agent-2.log") as second,
            ):
                await _play(producer, settings, envs, time.time())

                def all_aborted() -> bool:
                    return all(
                        read_rollout(admin, e.namespace, e.rollout).get("status", {}).get("abort")
                        is True
                        for e in [*bad, customer]
                    )

                await poll_until(all_aborted, 120, "the bad release's and customer's aborts")

                async def triaged() -> bool:
                    values = await read_topic(settings, settings.topics.triage)
                    return any(k.decode() == customer.env for k, _ in values)

                await poll_until_async(triaged, 60, "the triage of the customer's abort")

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
                owned = [agent_metric(a, "canarywatch_release_partitions") for a in (first, second)]
                assert all(owned), f"both agents own partitions: {owned}"
                # Every pass that sent something has latched it in the table before it ended.
                passes = [
                    agent_metric(a, "canarywatch_release_passes_total") for a in (first, second)
                ]
                await poll_until(
                    lambda: all(
                        agent_metric(a, "canarywatch_release_passes_total") > n
                        for a, n in zip((first, second), passes, strict=True)
                    ),
                    30,
                    "one more pass of each release agent",
                )
            # A release agent started afresh (the same group, after the others left) restores
            # their table from its changelog: the latched halt, the fan-out, the triage. It
            # decides nothing again and sends nothing again.
            before = {
                topic: len(await read_topic(settings, topic))
                for topic in (
                    settings.topics.commands,
                    settings.topics.releases,
                    settings.topics.triage,
                )
            }
            async with release_agent(settings, tmp_path / "agent-3.log") as again:

                def restored() -> bool:
                    return (
                        agent_metric(again, "canarywatch_release_partitions") == settings.partitions
                        and agent_metric(again, "canarywatch_release_passes_total") >= 5
                    )

                await poll_until(restored, 60, "a restarted release agent's passes")
                assert agent_metric(again, "canarywatch_release_halts_total", signal="errors") == 0
                assert (
                    agent_metric(again, "canarywatch_release_abort_commands_total", why="release")
                    == 0
                )
                after = {topic: len(await read_topic(settings, topic)) for topic in before}
                assert after == before, "nothing sent again after the restart"
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
        assert all(c.extra["release_decision"] == release_decision_id(bad_release) for c in fanout)
        assert all(c.extra["triage"] == "release" for c in fanout)
        for c in fanout:  # the revision's id with the canary's decision epoch, as the worker's
            epoch = epoch_of(by_env[c.env].state(now))
            assert c.decision_id == decision_id_for(c.namespace, c.rollout, c.pod_hash, "", epoch)
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
