"""Skipping unreadable records with a real consumer: nothing else is lost, nothing loops."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import aiokafka.codec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.codecs import CODECS, disable_codecs
from agents.kafka_admin import ensure_topics
from agents.unreadable import getmany_skipping

pytestmark = pytest.mark.kafka


@pytest.fixture
def restore_codecs() -> Iterator[None]:
    saved = {name: getattr(aiokafka.codec, f"has_{name}") for name in CODECS}
    yield
    for name, check in saved.items():
        setattr(aiokafka.codec, f"has_{name}", check)


async def test_getmany_skipping_keeps_every_readable_record(
    kafka_bootstrap: str, restore_codecs: None
) -> None:
    topic = f"unreadable-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 2})
    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    snappy = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, compression_type="snappy", linger_ms=20
    )
    await plain.start()
    await snappy.start()
    expected: dict[int, list[bytes]] = {0: [], 1: []}
    bad: dict[int, list[int]] = {0: [], 1: []}
    try:
        for round_ in range(3):
            for partition in (0, 1):
                for i in range(4):
                    value = b"good-%d-%d-%d" % (round_, partition, i)
                    await plain.send_and_wait(topic, value, partition=partition)
                    expected[partition].append(value)
            # Partition 0 gets an unreadable batch of three records each round.
            sent = [await snappy.send(topic, b"bad", partition=0) for _ in range(3)]
            for delivery in sent:
                bad[0].append((await delivery).offset)
    finally:
        await plain.stop()
        await snappy.stop()

    disable_codecs(["snappy"])  # this consumer now cannot read the snappy batches
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    skipped: list[tuple[int, int, str]] = []
    got: dict[int, list[bytes]] = {0: [], 1: []}
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        for _ in range(200):
            batches = await getmany_skipping(
                consumer,
                lambda tp, offset, exc: skipped.append((tp.partition, offset, type(exc).__name__)),
                timeout_ms=100,
                max_records=1000,
            )
            for tp, records in batches.items():
                got[tp.partition].extend(r.value or b"" for r in records)
            if got == expected and len(skipped) == len(bad[0]):
                break
    finally:
        await consumer.stop()
    assert got == expected  # every readable record, once, in order
    assert skipped == [(0, offset, "UnsupportedCodecError") for offset in bad[0]]
