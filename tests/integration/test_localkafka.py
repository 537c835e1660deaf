"""Integration tests against a real local Apache Kafka broker (agents.localkafka)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


async def _partitions(bootstrap: str, topic: str) -> list[dict[str, int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (info,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert info["error_code"] == 0, info
    return list(info["partitions"])


async def _cluster_id(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return str((await admin.describe_cluster())["cluster_id"])
    finally:
        await admin.close()


async def test_ensure_topics_then_produce_and_consume_100(kafka_bootstrap: str) -> None:
    topic = f"lk-roundtrip-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 3})
    await ensure_topics(kafka_bootstrap, {topic: 3})  # idempotent: "already exists" is fine

    parts = await _partitions(kafka_bootstrap, topic)
    assert sorted(p["partition"] for p in parts) == [0, 1, 2]
    assert all(p["leader"] >= 0 for p in parts)

    sent = {f"msg-{i:03d}".encode() for i in range(100)}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(sorted(sent)):
            await producer.send(topic, value, partition=i % 3)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    received: list[bytes] = []
    seen_partitions: set[int] = set()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(received) < len(sent) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                seen_partitions.add(tp.partition)
                received.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()

    assert len(received) == 100
    assert set(received) == sent
    assert seen_partitions == {0, 1, 2}


async def test_ensure_topics_rejects_bad_partition_count(kafka_bootstrap: str) -> None:
    with pytest.raises(ValueError):
        await ensure_topics(kafka_bootstrap, {"lk-bad": 0})


async def test_two_brokers_side_by_side(kafka_bootstrap: str, tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    second = LocalKafka(tmp_path / "second", port, controller_port)
    assert second.bootstrap == f"127.0.0.1:{port}"
    assert second.bootstrap != kafka_bootstrap
    await asyncio.to_thread(second.start)
    try:
        assert second.is_running()
        assert (tmp_path / "second" / "kafka.pid").is_file()
        first_id, second_id = await asyncio.gather(
            _cluster_id(kafka_bootstrap), _cluster_id(second.bootstrap)
        )
        assert first_id and second_id and first_id != second_id

        topic = f"lk-only-second-{uuid.uuid4().hex[:8]}"
        await ensure_topics(second.bootstrap, {topic: 2})
        assert len(await _partitions(second.bootstrap, topic)) == 2
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            assert topic not in await admin.list_topics()
        finally:
            await admin.close()

        # a second object on the same dir sees it running (pid file); starting it again adopts it
        same = LocalKafka(tmp_path / "second", port, controller_port)
        assert same.is_running()
        await asyncio.to_thread(same.start, 10)
    finally:
        # stop from another process, as `make broker-stop` does
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agents.localkafka", "stop", "--dir", str(tmp_path / "second")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert not second.is_running()
    assert not (tmp_path / "second" / "kafka.pid").exists()
    # the first broker is unaffected
    assert await _cluster_id(kafka_bootstrap) == first_id


def test_start_fails_loudly_on_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        (controller_port,) = free_ports(1)
        kafka = LocalKafka(tmp_path / "busy", busy, controller_port)
        with pytest.raises(RuntimeError, match="in use"):
            kafka.start(timeout=30)
        assert not kafka.is_running()
