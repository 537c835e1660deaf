"""Every Kafka codec is read by the worker and Faust's consumer; unreadable batches are skipped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from agents.codecs import CODECS
from agents.processes import poll_until
from agents.settings import Settings
from streams.events import RolloutState, encode_rollout_state
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

pytestmark = pytest.mark.kafka


async def test_lines_in_every_codec_are_counted(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path, "codecs")
    await create_topics(settings)
    async with running(settings, tmp_path / "worker.log"):
        await put_canary(settings)
        total = 0
        for codec in CODECS:
            p = producer(settings, compression_type=codec, linger_ms=20)
            await p.start()
            try:
                # Several lines per batch and NDJSON messages: the batch itself is compressed.
                sent = [
                    p.send(settings.topics.requests, key=b"shop", value=line(i)) for i in range(20)
                ]
                ndjson = b"\n".join(line(i) for i in range(30))
                sent.append(p.send(settings.topics.requests, key=b"shop", value=ndjson))
                # Faust's consumer reads the same codec: a rollout state for another canary.
                state = RolloutState(
                    namespace=f"ns-{codec}", name="web", current_pod_hash="c", stable_hash="s"
                )
                sent.append(
                    p.send(
                        settings.topics.rollouts,
                        key=state.namespace.encode(),
                        value=encode_rollout_state(state),
                    )
                )
                await asyncio.gather(*[await s for s in sent])
            finally:
                await p.stop()
            total += 50
            await wait_metric(
                settings.metrics_port,
                "canarywatch_request_lines_total",
                float(total),
                within_s=30,
                outcome="counted",
            )
            await wait_metric(
                settings.metrics_port,
                "canarywatch_canaries_in_progress",
                1.0 + CODECS.index(codec) + 1,
                within_s=30,
            )
        assert metric(settings.metrics_port, "canarywatch_skipped_records_total") == 0.0


async def committed_offsets(settings: Settings) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.app_id}-requests")
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topics.requests
    }


async def test_unreadable_batches_are_skipped_counted_and_committed_past(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The worker acts as if snappy's library were missing: snappy batches are unreadable to it.
    settings = new_settings(
        kafka_bootstrap, tmp_path, "skip", partitions=1, disabled_codecs=("snappy",)
    )
    await create_topics(settings)
    topic = settings.topics.requests
    plain, snappy = producer(settings), producer(settings, compression_type="snappy", linger_ms=50)
    await plain.start()
    await snappy.start()
    port = settings.metrics_port
    try:
        async with running(settings, tmp_path / "worker.log") as worker:
            # Faust's consumer meets an unreadable rollout state first: it must read on.
            state = RolloutState(
                namespace="lost", name="web", current_pod_hash="c", stable_hash="s"
            )
            await snappy.send_and_wait(
                settings.topics.rollouts, key=b"lost", value=encode_rollout_state(state)
            )
            await put_canary(settings)
            await wait_metric(
                port,
                "canarywatch_skipped_records_total",
                1.0,
                topic=settings.topics.rollouts,
                reason="UnsupportedCodecError",
            )
            for i in range(5):
                await plain.send_and_wait(topic, key=b"shop", value=line(i))
            # One batch of one record, then one batch of several records, all in snappy.
            await snappy.send_and_wait(topic, key=b"shop", value=line(100))
            many = [await snappy.send(topic, key=b"shop", value=line(200 + i)) for i in range(6)]
            await asyncio.gather(*many)
            for i in range(5):
                last = await plain.send_and_wait(topic, key=b"shop", value=line(300 + i))
            await wait_metric(port, "canarywatch_request_lines_total", 10.0, outcome="counted")
            await wait_metric(
                port,
                "canarywatch_skipped_records_total",
                7.0,
                topic=topic,
                reason="UnsupportedCodecError",
            )
            assert worker.log_tail(400).count("skipped") >= 1
            # Committed past everything, the unreadable records included.
            end = last.offset + 1
            await poll_until(
                lambda: asyncio.run(committed_offsets(settings)) == {0: end}, 30, "commit"
            )
        # A new worker in the same group starts after them: nothing is skipped or counted again.
        async with running(settings, tmp_path / "worker2.log"):
            await put_canary(settings)
            await plain.send_and_wait(topic, key=b"shop", value=line(400))
            await wait_metric(port, "canarywatch_request_lines_total", 1.0, outcome="counted")
            assert counted(port) == 1.0
            assert (
                metric(
                    port,
                    "canarywatch_skipped_records_total",
                    topic=topic,
                    reason="UnsupportedCodecError",
                )
                == 0.0
            )
    finally:
        await plain.stop()
        await snappy.stop()
