"""The request-log consumer commits to its group only what it counted (durable evidence off:
the consumer's own commits), and a worker that starts after it counts none of it again."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest

from agents.processes import free_port, poll_until
from tests.integration.ingest_support import (
    counted,
    create_topics,
    line,
    metric,
    new_settings,
    producer,
    put_canary,
    running,
    wait_metric,
)
from tests.integration.test_ingest_codecs import committed_offsets

pytestmark = pytest.mark.kafka


async def test_offsets_are_committed_after_counting_and_not_counted_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path, "commits", partitions=2, checkpoint=False)
    await create_topics(settings)
    topic, port = settings.topics.requests, settings.metrics_port
    p = producer(settings)
    await p.start()
    try:
        ends: dict[int, int] = {}

        async def send(first: int, n: int) -> None:
            for i in range(first, first + n):
                sent = await p.send_and_wait(topic, value=line(i), partition=i % 2)
                ends[sent.partition] = sent.offset + 1

        async with running(settings, tmp_path / "w1.log"):
            await put_canary(settings)
            await send(0, 10)
            await wait_metric(port, "canarywatch_request_lines_total", 10.0, outcome="counted")
            await poll_until(
                lambda: asyncio.run(committed_offsets(settings)) == ends, 30, "the commit"
            )
        await send(10, 5)  # while no worker runs
        async with running(settings, tmp_path / "w2.log"):
            await put_canary(settings)
            await wait_metric(port, "canarywatch_request_lines_total", 5.0, outcome="counted")
            await poll_until(
                lambda: asyncio.run(committed_offsets(settings)) == ends, 30, "the commit"
            )
            assert counted(port) == 5.0  # the first worker's lines are not read again
    finally:
        await p.stop()


def rows_checkpointed(port: int) -> float:
    return metric(port, "canarywatch_evidence_rows_total", direction="written")


async def test_apps_sharing_a_topic_prefix_do_not_share_evidence(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Durable evidence on: the offsets a checkpoint covers are in `<prefix>.evidence`, which
    # both apps use. The second must count every line itself, not resume at the first's offsets.
    first = new_settings(kafka_bootstrap, tmp_path, "share", partitions=2, checkpoint=True)
    second = first.with_overrides(app_id=first.app_id + "-b", metrics_port=free_port())
    await create_topics(first)
    p = producer(first)
    await p.start()
    try:
        for i in range(10):
            await p.send_and_wait(first.topics.requests, value=line(i), partition=i % 2)
        for settings, log in ((first, "a.log"), (second, "b.log")):
            port = settings.metrics_port
            async with running(settings, tmp_path / log):
                await put_canary(settings)
                await wait_metric(port, "canarywatch_request_lines_total", 10.0, outcome="counted")
                await poll_until(
                    partial(rows_checkpointed, port),
                    30,
                    "a checkpoint with its offsets",
                )
    finally:
        await p.stop()
