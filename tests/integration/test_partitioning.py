"""The worker's idea of which partition a namespace lands on is the producer's."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from agents.kafka_admin import ensure_topics, partition_for_key

pytestmark = pytest.mark.kafka


async def test_partition_for_key_matches_the_default_partitioner(kafka_bootstrap: str) -> None:
    topic = f"partitioning-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 4})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        keys = [f"env-{i:05d}".encode() for i in range(40)]
        placed = [(await producer.send_and_wait(topic, key=k, value=b"x")).partition for k in keys]
    finally:
        await producer.stop()
    assert placed == [partition_for_key(k, 4) for k in keys]
    assert len(set(placed)) == 4
