"""End to end: simulator -> Kafka -> worker -> commands -> actuator -> Rollouts in the API server.

Each canary environment of the simulated fleet has a Rollout object (status as the Argo
controller would write it); the actuator runs with its least-privilege identity. A bad canary's
Rollout must read `status.abort=true` within 15 s of its fault starting (processing time: see the
worker's settings); healthy canaries and platform faults must not be touched at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics
from agents.kafka_admin import ensure_topics
from agents.processes import WorkerProcess, free_port, poll_until
from agents.rolloutapi import KubeRolloutApi
from agents.settings import Settings, Topics
from agents.simulator import SimulationRun, producer_for
from streams.eventtime import EventTimeSettings
from streams.simulation import EnvPlan, Scenario, SimulationSettings
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

ABORT_WITHIN_S = 15.0
PLAY_S = 25.0


def canary_status(plan: EnvPlan) -> dict[str, Any]:
    return {
        "currentPodHash": plan.canary_hash,
        "stableRS": plan.stable_hash,
        "currentStepIndex": 0,
        "phase": "Paused",
        "observedGeneration": "1",
    }


async def test_bad_canaries_are_aborted_in_the_api_server_within_15s(
    kafka_bootstrap: str, kube_api: LocalKubeAPI, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    # Processing time: this test measures the path from a decision to the API server, with the
    # 15 s bound it was written for. Event time adds up to ~2.5 s to each decision (lateness, a
    # slice, idle), and test_worker_e2e and test_demo_cli cover it. Here that delay made the
    # second bad canary miss the bound on a clean-clone run.
    settings = Settings(
        replication_factor=1,
        bootstrap=kafka_bootstrap,
        app_id=f"kube-e2e-{run_id}",
        topics=Topics(f"kube-e2e-{run_id}"),
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
        event_time=EventTimeSettings(enabled=False),
    )
    fleet = SimulationSettings(
        environments=10, healthy=5, bad=2, platform=1, rollout_name=f"web-{run_id}"
    )
    await ensure_topics(
        settings.bootstrap,
        settings.topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes)},
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    registry = CollectorRegistry()
    producer = producer_for(kafka_bootstrap)
    with kube_api.client("admin") as admin, kube_api.client("actuator") as actuator_client:
        try:
            await worker.wait_ready()
            await producer.start()
            run = SimulationRun(fleet, seed=20261126, start=time.time())
            plans = {p.env: p for p in run.plans}
            canaries = [p for p in run.plans if p.scenario != Scenario.STEADY]
            created = await asyncio.to_thread(_create_rollouts, kube_api, admin, canaries)
            bad = [p for p in canaries if p.scenario == Scenario.BAD]
            spared = [p for p in canaries if p.scenario != Scenario.BAD]
            assert len(bad) == 2 and len(spared) == 6

            actuator = Actuator(
                settings, KubeRolloutApi(actuator_client), ActuatorMetrics(registry)
            )
            async with running(actuator):
                # Traffic flows until the last bad canary's bound has passed: a play that
                # ended first (a fault starting 12.8 s in, 25 s of play) left it 12 s.
                until = max(time.time() + PLAY_S, abort_deadline(bad))
                playing = asyncio.create_task(run.play(producer, settings.topics, until))
                try:
                    aborted_at = await _watch_aborts(admin, bad, playing)
                    await playing
                finally:
                    playing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await playing
        finally:
            await producer.stop()
            worker.stop()

        delays = {env: seen - plans[env].fault_start for env, seen in aborted_at.items()}
        assert set(delays) == {p.env for p in bad}, f"{delays}; worker log:\n{worker.log_tail()}"
        assert all(0 < delay <= ABORT_WITHIN_S for delay in delays.values()), delays
        for plan in bad:
            (event,) = events_about(admin, plan.namespace, plan.rollout)
            assert event.reason == "CanarywatchAbort"
            assert plan.canary_hash in (event.message or "")
        for plan in spared:  # healthy canaries and platform faults: untouched, to the byte
            assert read_rollout(admin, plan.namespace, plan.rollout) == created[plan.env], plan
            assert events_about(admin, plan.namespace, plan.rollout) == [], plan
        assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 2
        assert count(registry, "canarywatch_actuator_commands_total", outcome="failed") == 0


def _create_rollouts(
    kube: LocalKubeAPI, admin: k8s.ApiClient, plans: list[EnvPlan]
) -> dict[str, dict[str, Any]]:
    created = {}
    for plan in plans:
        ensure_namespace(kube, plan.namespace)
        created[plan.env] = create_rollout(admin, plan.namespace, plan.rollout, canary_status(plan))
    return created


def abort_deadline(bad: list[EnvPlan]) -> float:
    """When the last bad canary must have been aborted (epoch seconds)."""
    assert all(math.isfinite(p.fault_start) for p in bad)
    return max(p.fault_start for p in bad) + ABORT_WITHIN_S + 1.0


async def _watch_aborts(
    admin: k8s.ApiClient, bad: list[EnvPlan], playing: asyncio.Task[None]
) -> dict[str, float]:
    """Poll the bad canaries' Rollouts; when each first reads `abort: true` (epoch seconds)."""
    deadline = abort_deadline(bad)
    seen: dict[str, float] = {}

    def all_aborted() -> bool:
        for plan in bad:
            if plan.env not in seen:
                obj = read_rollout(admin, plan.namespace, plan.rollout)
                if obj.get("status", {}).get("abort") is True:
                    seen[plan.env] = time.time()
        return len(seen) == len(bad) or playing.done()

    with contextlib.suppress(TimeoutError):
        await poll_until(all_aborted, max(0.0, deadline - time.time()), "the bad canaries' aborts")
    return seen
