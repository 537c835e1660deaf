"""Two workers in one request-log group: kill -9 one, the other reads its partitions soon."""

from __future__ import annotations

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
