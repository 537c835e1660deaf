"""Bad input on the real broker: refused messages reach the dead-letter topic, work goes on."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from agents.kafka_admin import ensure_topics
from agents.processes import WorkerProcess, free_port, poll_until, read_metric
from agents.settings import Settings, Topics
from streams.events import RequestLine, RolloutState, encode_request_line, encode_rollout_state

pytestmark = pytest.mark.kafka

LIMIT = 4096  # the worker's decode limit in this test; the topic itself accepts far more


def line(i: int, pod_hash: str) -> RequestLine:
    return RequestLine(
        ts=time.time(),
        namespace="shop",
        pod=f"web-{pod_hash}-0",
        pod_hash=pod_hash,
        status=200,
        duration_ms=12.0 + i,
    )


@pytest.fixture
async def worker(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Settings]:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        replication_factor=1,
        bootstrap=kafka_bootstrap,
        app_id=f"dlq-{run_id}",
        topics=Topics(f"dlq-{run_id}"),
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
        max_message_bytes=LIMIT,
    )
    await ensure_topics(
        kafka_bootstrap,
        settings.topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes)},
    )
    process = WorkerProcess(settings, tmp_path / "worker.log")
    process.start()
    try:
        await process.wait_ready()
        yield settings
    finally:
        process.stop()


async def wait_for_metric(
    port: int, name: str, value: float, within_s: float = 30.0, **labels: str
) -> float | None:
    """The metric once it reads `value`, or what it reads when `within_s` ran out."""
    with contextlib.suppress(TimeoutError):
        await poll_until(
            lambda: read_metric(port, name, **labels) == value, within_s, f"{name} == {value}"
        )
    return await asyncio.to_thread(read_metric, port, name, **labels)


async def test_bad_messages_go_to_deadletter_and_the_worker_keeps_counting(
    worker: Settings,
) -> None:
    topics = worker.topics
    producer = AIOKafkaProducer(
        bootstrap_servers=worker.bootstrap, max_request_size=worker.topic_max_message_bytes
    )
    await producer.start()
    try:
        state = RolloutState(
            namespace="shop",
            name="web",
            current_pod_hash="canary1",
            stable_hash="stable1",
            canary_weight=20,
        )
        await producer.send_and_wait(
            topics.rollouts, key=state.namespace.encode(), value=encode_rollout_state(state)
        )
        # The worker applies rollout states asynchronously: wait until the canary is known.
        assert (
            await wait_for_metric(worker.metrics_port, "canarywatch_canaries_in_progress", 1.0)
            == 1.0
        )
        not_json = b"GET /index.html 200"
        missing = orjson.dumps({"namespace": "shop", "status": 200})
        oversized = b"\n".join([encode_request_line(line(0, "canary1"))] * 60)
        assert len(oversized) > LIMIT
        mixed = b"\n".join(
            [
                encode_request_line(line(1, "stable1")),
                b"{broken",
                encode_request_line(line(2, "canary1")),
            ]
        )
        good_before = [encode_request_line(line(i, "stable1")) for i in range(5)]
        good_after = [encode_request_line(line(i, "canary1")) for i in range(5)]
        # Bad messages under other keys land on other partitions: each must be traced back to
        # its own partition and offset, though the worker decodes a fetch in one scan.
        sources: dict[bytes, str] = {}
        for key, value in [
            *((b"shop", v) for v in good_before),
            (b"edge-a", not_json),
            (b"edge-b", missing),
            (b"edge-c", oversized),
            (b"shop", mixed),
            *((b"shop", v) for v in good_after),
        ]:
            sent = await producer.send_and_wait(topics.requests, key=key, value=value)
            sources[value] = f"{topics.requests}/{sent.partition}@{sent.offset}"
    finally:
        await producer.stop()

    # 5 before + 2 good lines of the mixed batch + 5 after: all counted, nothing lost.
    assert (
        await wait_for_metric(
            worker.metrics_port, "canarywatch_request_lines_total", 12.0, outcome="counted"
        )
        == 12.0
    )

    consumer = AIOKafkaConsumer(
        topics.deadletter,
        bootstrap_servers=worker.bootstrap,
        auto_offset_reset="earliest",
        fetch_max_bytes=worker.topic_max_message_bytes,
        max_partition_fetch_bytes=worker.topic_max_message_bytes,
    )
    await consumer.start()
    received: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < 4 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received.extend(records)
    finally:
        await consumer.stop()

    by_reason = {dict(r.headers)["canarywatch.reason"].decode(): r for r in received}
    assert sorted(by_reason) == ["missing_field", "not_json", "oversized"]
    assert len(received) == 4  # not_json twice: the plain line and the broken NDJSON line
    assert by_reason["oversized"].value == oversized  # kept byte for byte
    assert by_reason["missing_field"].value == missing
    not_json_payloads = sorted(
        r.value for r in received if dict(r.headers)["canarywatch.reason"] == b"not_json"
    )
    assert not_json_payloads == sorted([not_json, b"{broken"])
    for r in received:
        source = dict(r.headers)["canarywatch.source"].decode()
        assert source == sources[mixed if r.value == b"{broken" else r.value]
    for reason, count in (("not_json", 2.0), ("missing_field", 1.0), ("oversized", 1.0)):
        assert (
            read_metric(
                worker.metrics_port,
                "canarywatch_deadletter_messages_total",
                topic=topics.requests,
                reason=reason,
            )
            == count
        )
