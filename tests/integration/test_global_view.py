"""Two workers, request lines placed by a CRC32 partitioner: every bad canary aborted once.

Log shippers built on librdkafka place a keyed message with `consistent_random` (CRC32 of the
key, modulo the partitions) where the bridge's producer uses murmur2; the rollout state of an
environment and its request lines then land on different partition numbers. Every worker holds
every canary in progress (agents/view.py), so whichever worker reads the lines judges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path

import pytest

from agents.demo import CommandWatcher
from agents.kafka_admin import ensure_topics, partition_for_key
from agents.processes import WorkerProcess, free_port, poll_until, read_metric, scrape
from agents.settings import Settings, Topics
from agents.simulator import SimulationRun, producer_for
from streams.simulation import EnvPlan, Scenario, SimulationSettings, score

pytestmark = pytest.mark.kafka

PARTITIONS = 4
PLAY_S = 25.0
FLEET = SimulationSettings(environments=24, healthy=10, bad=PARTITIONS, platform=0)


def crc32_partition(key: bytes) -> int:
    """librdkafka's `consistent_random` for a non-empty key."""
    return zlib.crc32(key) % PARTITIONS


def namespace_on(partition: int, taken: set[str]) -> str:
    """A namespace CRC32 puts on `partition` and murmur2 (the bridge's) puts elsewhere."""
    for i in range(10_000):
        name = f"crc-{partition}-{i}"
        key = name.encode()
        if (
            name not in taken
            and crc32_partition(key) == partition
            and partition_for_key(key, PARTITIONS) != partition
        ):
            return name
    raise AssertionError("no such namespace")


def one_bad_canary_per_partition(plans: list[EnvPlan]) -> list[EnvPlan]:
    taken = {p.namespace for p in plans}
    bad = iter(range(PARTITIONS))
    out = []
    for plan in plans:
        if plan.scenario == Scenario.BAD:
            namespace = namespace_on(next(bad), taken)
            taken.add(namespace)
            plan = dataclasses.replace(plan, namespace=namespace)
        out.append(plan)
    return out


def env_series(port: int) -> set[str]:
    samples = scrape(port, ("canarywatch_env_verdict",))
    return {dict(labels)["env"] for (_, labels) in samples}


async def test_two_workers_crc32_partitioned_lines_each_bad_canary_aborted_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    base = Settings(
        replication_factor=1,
        bootstrap=kafka_bootstrap,
        app_id=f"global-{run_id}",
        topics=Topics(f"global-{run_id}"),
        partitions=PARTITIONS,
    )
    await ensure_topics(kafka_bootstrap, base.topic_partitions())
    settings = [
        base.with_overrides(metrics_port=free_port(), data_dir=tmp_path / f"worker-{i}")
        for i in range(2)
    ]
    workers = [WorkerProcess(s, tmp_path / f"worker-{i}.log") for i, s in enumerate(settings)]
    watcher = CommandWatcher(kafka_bootstrap, base.topics.commands)
    producer = producer_for(kafka_bootstrap)
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            worker.start()
            stack.callback(worker.stop)
        await asyncio.gather(*(worker.wait_ready() for worker in workers))
        # Both in the request-log group, two partitions each, before any line is played.
        await poll_until(
            lambda: all(
                read_metric(s.metrics_port, "canarywatch_ingest_partitions") == 2.0
                for s in settings
            ),
            60,
            "request-log partitions split between the workers",
        )
        await watcher.start()
        stack.push_async_callback(watcher.stop)
        await producer.start()
        stack.push_async_callback(producer.stop)

        start = time.time()
        run = SimulationRun(FLEET, seed=20261201, start=start, lines_per_message=10)
        run.plans = one_bad_canary_per_partition(run.plans)
        run.simulator.plans = run.plans
        bad = {p.env for p in run.plans if p.scenario == Scenario.BAD}
        assert {crc32_partition(env.split("/")[0].encode()) for env in bad} == set(
            range(PARTITIONS)
        )
        watching = asyncio.create_task(watcher.watch(lambda _, __: None))
        try:
            # Traffic flows for PLAY_S after the last fault starts: a canary whose lines stop
            # soon after its fault begins may never gather enough evidence.
            until = max(p.fault_start for p in run.plans if p.scenario == Scenario.BAD) + PLAY_S
            await run.play(producer, base.topics, until, request_partition=crc32_partition)
            # A loaded machine may still be judging the last lines when the play ends.
            await poll_until(
                lambda: bad <= {command.env for _, command in watcher.seen},
                30,
                "an abort for every bad canary",
            )
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        # Every worker knows every canary in progress ...
        in_progress = [
            read_metric(s.metrics_port, "canarywatch_canaries_in_progress") for s in settings
        ]
        # ... but exports series only for the environments whose lines it counted.
        series = [await asyncio.to_thread(env_series, s.metrics_port) for s in settings]

    assert in_progress[0] == in_progress[1] == float(FLEET.healthy + FLEET.bad)
    assert series[0] and series[1] and not series[0] & series[1]
    assert bad <= series[0] | series[1]

    per_env = Counter(command.env for _, command in watcher.seen)
    assert set(per_env) == bad, "only bad canaries are aborted"
    assert all(count == 1 for count in per_env.values()), per_env
    first_seen: dict[str, float] = {}
    for seen_at, command in watcher.seen:
        first_seen.setdefault(command.env, seen_at)
    card = score(run.plans, first_seen)
    assert card.summary() == f"true_aborts={PARTITIONS} missed=0 false_aborts=0"
    for outcome in card.outcomes:
        if outcome.scenario == Scenario.BAD:
            # Speed is the benches' claim (make bench-e2e); here: aborted while its lines flow.
            assert outcome.time_to_abort_s is not None and 0 < outcome.time_to_abort_s <= PLAY_S
