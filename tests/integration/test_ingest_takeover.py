"""Two workers in one request-log group: kill -9 one, the other reads its partitions soon."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from agents.processes import WorkerProcess, free_port, poll_until
from tests.integration.ingest_support import (
    consumed,
    create_topics,
    line,
    metric,
    new_settings,
    producer,
    put_canary,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 4
TAKEOVER_GOAL_S = 10.0


async def test_a_survivor_takes_over_the_partitions_of_a_killed_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path, "takeover", partitions=PARTITIONS)
    await create_topics(settings)
    survivor = WorkerProcess(settings, tmp_path / "a.log")
    victim = WorkerProcess(
        settings.with_overrides(metrics_port=free_port(), data_dir=tmp_path / "b"),
        tmp_path / "b.log",
    )
    a, b = survivor.settings.metrics_port, victim.settings.metrics_port
    survivor.start()
    try:
        await survivor.wait_ready()
        victim.start()
        try:
            await victim.wait_ready()
            await poll_until(
                lambda: (
                    metric(a, "canarywatch_ingest_partitions") == 2
                    and metric(b, "canarywatch_ingest_partitions") == 2
                ),
                60,
                "the partitions split between the two workers",
            )
            # Lines of a known canary are counted at once; others would wait out the hold for
            # a snapshot (HOLD_S) before they count as unattributed.
            await put_canary(settings, a)
            os.killpg(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            p = producer(settings)
            await p.start()
            try:
                for partition in range(PARTITIONS):
                    await p.send_and_wait(
                        settings.topics.requests, value=line(partition), partition=partition
                    )
            finally:
                await p.stop()
            await poll_until(
                lambda: consumed(a) == PARTITIONS,
                60,
                "the survivor reads every partition",
                every_s=0.05,
            )
            takeover = time.monotonic() - killed
        finally:
            victim.stop()
        print(
            f"takeover: the survivor read the killed worker's partitions {takeover:.1f}s "
            "after kill -9"
        )
        assert metric(a, "canarywatch_ingest_partitions") == PARTITIONS
        assert takeover <= TAKEOVER_GOAL_S
    finally:
        survivor.stop()


async def test_a_worker_joining_mid_stream_neither_loses_nor_recounts_lines(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path, "join", partitions=PARTITIONS)
    await create_topics(settings)
    first = WorkerProcess(settings, tmp_path / "a.log")
    second = WorkerProcess(
        settings.with_overrides(metrics_port=free_port(), data_dir=tmp_path / "b"),
        tmp_path / "b.log",
    )
    ports = (first.settings.metrics_port, second.settings.metrics_port)
    message = b"\n".join(line(i) for i in range(200))
    sent = 0
    p = producer(settings, linger_ms=5)
    first.start()
    await p.start()
    try:
        await first.wait_ready()

        async def send(messages: int) -> None:
            nonlocal sent
            deliveries = [
                await p.send(settings.topics.requests, value=message, partition=i % PARTITIONS)
                for i in range(messages)
            ]
            for delivery in deliveries:
                await delivery
            sent += messages * 200

        await send(500)
        second.start()
        # Lines keep coming while the second worker joins and the partitions move.
        while await asyncio.to_thread(metric, ports[1], "canarywatch_ingest_partitions") < 1:
            await send(50)
        await send(500)
        await poll_until(
            lambda: sum(consumed(port) for port in ports) >= sent, 60, "every line read"
        )
        await poll_until(
            lambda: all(
                metric(port, "canarywatch_ingest_partitions") == PARTITIONS / 2 for port in ports
            ),
            30,
            "the partitions split",
        )
        assert sum(consumed(port) for port in ports) == sent  # none counted twice
        assert all(consumed(port) > 0 for port in ports)
    finally:
        await p.stop()
        second.stop()
        first.stop()
