"""Two release agents (processes, one consumer group) on the real broker; one is killed with -9.

The survivor takes over the killed one's releases from the table's changelog: it halts nothing
again, sends no command twice, and fans out to an environment that joins a halted release
under the same decision.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from agents.processes import (
    WorkerProcess,
    free_port,
    poll_until,
    poll_until_async,
    read_metric,
    release_agent_process,
)
from agents.releaseagent import release_partition
from agents.releases import ensure_release_topics
from agents.settings import Settings, Topics
from agents.simulator import producer_for
from streams.events import decision_id_for, decode_abort_command
from streams.release import ReleaseSettings
from streams.releasefeed import encode_feed_record, state_record, summary_record
from streams.releaserecords import decode_release_verdict, release_decision_id
from tests.test_release import state, summary

pytestmark = pytest.mark.kafka

PARTITIONS = 4
ENVS = 12  # per release: enough to halt a bad one (tests/test_release.py)
EPOCH = "41"


async def read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every value of `topic` up to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[bytes] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    out.append(record.value or b"")
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def metric(agent: WorkerProcess, name: str, **labels: str) -> float:
    return read_metric(agent.settings.metrics_port, name, **labels) or 0.0


def releases_on_every_partition(tag: str) -> list[str]:
    found: dict[int, str] = {}
    for i in range(200):
        found.setdefault(release_partition(f"shop:9.{i}-{tag}", PARTITIONS), f"shop:9.{i}-{tag}")
    assert len(found) == PARTITIONS
    return [found[p] for p in range(PARTITIONS)]


async def test_a_killed_release_agents_releases_are_taken_over_from_the_table(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:6]
    settings = Settings(
        bootstrap=kafka_bootstrap,
        app_id=f"rel-ag-{run_id}",
        topics=Topics(f"rel-ag-{run_id}"),
        partitions=PARTITIONS,
        replication_factor=1,
        data_dir=tmp_path,
        release_evaluate_every_s=0.3,
    )
    await ensure_release_topics(settings)
    bad = releases_on_every_partition(run_id)  # both agents own some of them
    healthy = f"shop:8.0-{run_id}"
    agents = [
        release_agent_process(
            settings.with_overrides(metrics_port=free_port()), tmp_path / f"agent-{i}.log"
        )
        for i in range(2)
    ]
    producer = producer_for(kafka_bootstrap)
    await producer.start()

    async def publish(release: str, envs: list[str], gain: float) -> None:
        rs = ReleaseSettings()
        for env in envs:
            st = dataclasses.replace(state(env, release), epoch=EPOCH)
            for record in (state_record(st), summary_record(summary(env, release, rs, gain))):
                await producer.send(
                    settings.topics.summaries,
                    key=record.key,
                    value=encode_feed_record(record),
                    partition=release_partition(release, PARTITIONS),
                )
        await producer.flush()

    def envs_of(i: int) -> list[str]:
        return [f"b{i}-{k}-{run_id}/web" for k in range(ENVS)]

    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            await agent.wait_ready()

        def split() -> bool:
            owned = [metric(a, "canarywatch_release_partitions") for a in agents]
            return all(n > 0 for n in owned) and sum(owned) == PARTITIONS

        await poll_until(split, 60, "two release agents sharing the summaries partitions")
        for i, release in enumerate(bad):
            await publish(release, envs_of(i), gain=1.0)
        await publish(healthy, [f"h-{k}-{run_id}/web" for k in range(ENVS)], gain=-1.0)

        async def verdicts() -> list[str]:
            return [
                decode_release_verdict(v).release
                for v in await read_topic(settings, settings.topics.releases)
            ]

        async def all_halted() -> bool:
            return sorted(set(await verdicts())) == sorted(bad)

        await poll_until_async(all_halted, 60, "every bad release halted")
        victim, survivor = agents
        halts = [metric(a, "canarywatch_release_halts_total", signal="errors") for a in agents]
        assert all(n > 0 for n in halts), halts  # both decided some
        assert sum(halts) == len(bad), "one decision per release"
        # The pass that published the last verdict latched it in the table before it ended.
        done = metric(victim, "canarywatch_release_passes_total")
        await poll_until(
            lambda: metric(victim, "canarywatch_release_passes_total") >= done + 1,
            30,
            "the victim's next pass",
        )
        victim.kill()
        await poll_until(
            lambda: (
                metric(survivor, "canarywatch_release_partitions") == PARTITIONS
                and metric(survivor, "canarywatch_release_agent_ready") == 1
            ),
            60,
            "the survivor owning every partition, restored",
        )
        # An environment joins each halted release: one command each, under the same decision.
        joiners = [f"j{i}-{run_id}/web" for i in range(len(bad))]
        for i, release in enumerate(bad):
            await publish(release, [joiners[i]], gain=1.0)

        async def joined() -> bool:
            values = await read_topic(settings, settings.topics.commands)
            return {decode_abort_command(v).env for v in values} >= set(joiners)

        await poll_until_async(joined, 60, "the joiners' fan-out")
        passes = metric(survivor, "canarywatch_release_passes_total")
        await poll_until(
            lambda: metric(survivor, "canarywatch_release_passes_total") >= passes + 5,
            30,
            "five more passes of the survivor",
        )
        again = metric(survivor, "canarywatch_release_halts_total", signal="errors")
        assert again == halts[1], "the survivor decided no release again"
    finally:
        await producer.stop()
        for agent in agents:
            agent.stop()

    commands = [
        decode_abort_command(v) for v in await read_topic(settings, settings.topics.commands)
    ]
    expected = {e for i in range(len(bad)) for e in envs_of(i)} | set(joiners)
    envs = [c.env for c in commands]
    assert sorted(envs) == sorted(expected), "each environment of a bad release aborted once"
    for c in commands:
        assert c.decision_id == decision_id_for(c.namespace, c.rollout, "c1", "", EPOCH)
        assert c.extra["release_decision"] == release_decision_id(c.release)
    released = [
        decode_release_verdict(v) for v in await read_topic(settings, settings.topics.releases)
    ]
    for release in bad:
        mine = [v for v in released if v.release == release]
        # The halt (its targets growing while the cohort's states arrived), then one update
        # naming the joiner (by the survivor for the victim's releases): never a second halt,
        # which would publish the same targets again.
        sizes = [len(v.targets) for v in mine]
        assert sizes == sorted(set(sizes)) and sizes[-1] == ENVS + 1, (release, sizes)
        assert {v.decision_id for v in mine} == {release_decision_id(release)}
