"""The size policy on the real broker: what the topic accepts always fits the dead-letter topic."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.settings import Settings
from streams.sizes import record_bytes
from tests.integration.ingest_support import (
    counted,
    create_topics,
    line,
    metric,
    new_settings,
    producer,
    put_canary,
    read_deadletters,
    running,
    wait_metric,
)

pytestmark = pytest.mark.kafka

LIMIT = 65_536  # decode limit: the topics accept 512 KiB


async def topic_config(settings: Settings, topic: str, name: str) -> str | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == name:
                    return str(entry[1])
    return None


async def send_lines(settings: Settings, first: int, n: int) -> None:
    p = producer(settings)
    await p.start()
    try:
        for i in range(first, first + n):
            await p.send_and_wait(settings.topics.requests, key=b"shop", value=line(i))
    finally:
        await p.stop()


async def test_huge_messages_end_truncated_in_the_deadletter_topic_and_counting_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path, "sizes", max_message_bytes=LIMIT)
    await create_topics(settings)
    topic_limit = settings.topic_max_message_bytes
    # Just under what the topic accepts (one record alone in a batch), over the decode limit.
    near = b"n" * (topic_limit - record_bytes(b"shop", b"", []))
    # A small gzip message that inflates to 50 MB.
    bomb = b"b" * (50 << 20)
    port = settings.metrics_port
    async with running(settings, tmp_path / "worker.log") as worker:
        await put_canary(settings)
        await send_lines(settings, 0, 3)
        plain = producer(settings)
        # aiokafka checks the uncompressed size; the broker the compressed batch.
        zipped = producer(settings, compression_type="gzip", max_request_size=64 << 20)
        await plain.start()
        await zipped.start()
        try:
            await plain.send_and_wait(settings.topics.requests, key=b"shop", value=near)
            assert len(gzip.compress(bomb)) < LIMIT
            await zipped.send_and_wait(settings.topics.requests, key=b"shop", value=bomb)
        finally:
            await plain.stop()
            await zipped.stop()
        await send_lines(settings, 3, 3)
        await wait_metric(port, "canarywatch_request_lines_total", 6.0, outcome="counted")
        assert (
            metric(
                port,
                "canarywatch_deadletter_messages_total",
                topic=settings.topics.requests,
                reason="oversized",
            )
            == 2.0
        )
        pid = worker.pid
        # Faust's changelog topics take what the producer may write (a table value is a message).
        for table in ("rollout-state", "abort-decisions"):
            changelog = f"{settings.app_id}-{table}-changelog"
            got = await topic_config(settings, changelog, "max.message.bytes")
            assert got == str(topic_limit), (changelog, got)

    letters = await read_deadletters(settings, 2)
    assert len(letters) == 2
    for letter, original in zip(letters, (near, bomb), strict=True):
        headers = dict(letter.headers)
        assert headers["canarywatch.reason"] == b"oversized"
        assert headers["canarywatch.truncated"] == b"1"
        assert headers["canarywatch.original-size"] == str(len(original)).encode()
        assert headers["canarywatch.sha256"] == hashlib.sha256(original).hexdigest().encode()
        assert letter.value is not None and original.startswith(letter.value)
        assert record_bytes(letter.key or b"", letter.value, list(letter.headers)) <= topic_limit

    # A new worker in the group starts after the huge messages: no crash loop, counting goes on.
    async with running(settings, tmp_path / "worker2.log") as again:
        assert again.pid != pid
        await put_canary(settings)
        await send_lines(settings, 10, 4)
        await wait_metric(port, "canarywatch_request_lines_total", 4.0, outcome="counted")
        assert counted(port) == 4.0
        assert (
            metric(
                port,
                "canarywatch_deadletter_messages_total",
                topic=settings.topics.requests,
                reason="oversized",
            )
            == 0.0
        )
