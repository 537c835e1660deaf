"""Bad rollout snapshots on the real broker: dead-lettered, never stored, no stuck restart."""

from __future__ import annotations

import time
import uuid
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

GOOD = RolloutState("shop", "web", "canary1", "stable1", canary_weight=20)
# Each of these crashed the worker (or left it not ready after a restart) before validation.
BAD_SNAPSHOTS: list[dict[str, object]] = [
    {"stable_hash": 5},
    {"current_pod_hash": ["s"]},
    {"observed_at": "yesterday"},
    {"aborted": "false"},
]


def request(pod_hash: str, namespace: str = "shop") -> bytes:
    return encode_request_line(
        RequestLine(time.time(), namespace, f"web-{pod_hash}-0", pod_hash, 200, 12.0)
    )


async def counted(port: int, value: float, within_s: float = 30.0) -> None:
    def lines() -> float | None:
        return read_metric(port, "canarywatch_request_lines_total", outcome="counted")

    try:
        await poll_until(lambda: lines() == value, within_s, f"{value:g} lines counted")
    except TimeoutError:
        other = read_metric(port, "canarywatch_request_lines_total", outcome="unattributed")
        raise AssertionError(f"counted {lines()}, not {value:g}; unattributed {other}") from None


async def deadletters(settings: Settings, n: int) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        settings.topics.deadletter,
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received.extend(records)
    finally:
        await consumer.stop()
    return received


async def test_bad_snapshots_are_dead_lettered_and_a_restart_is_not_stuck(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        replication_factor=1,
        bootstrap=kafka_bootstrap,
        app_id=f"val-{run_id}",
        topics=Topics(f"val-{run_id}"),
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
    )
    topics = settings.topics
    await ensure_topics(kafka_bootstrap, settings.topic_partitions())
    port = settings.metrics_port
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await worker.wait_ready()
        good = orjson.loads(encode_rollout_state(GOOD))
        await producer.send_and_wait(topics.rollouts, key=b"shop", value=encode_rollout_state(GOOD))
        bad_values = [orjson.dumps({**good, **change}) for change in BAD_SNAPSHOTS]
        for value in bad_values:
            await producer.send_and_wait(topics.rollouts, key=b"shop", value=value)
        # A later snapshot is still applied: the agent did not die on the bad ones.
        other = RolloutState("shop2", "web", "canary2", "stable2")
        await producer.send_and_wait(
            topics.rollouts, key=b"shop2", value=encode_rollout_state(other)
        )
        await poll_until(
            lambda: read_metric(port, "canarywatch_canaries_in_progress") == 2.0,
            30,
            "both good canaries tracked",
        )
        for pod_hash in ["canary1", "stable1"] * 3:
            await producer.send_and_wait(topics.requests, key=b"shop", value=request(pod_hash))
        await counted(port, 6.0)

        received = await deadletters(settings, len(bad_values))
        assert sorted(r.value for r in received) == sorted(bad_values)
        assert {dict(r.headers)["canarywatch.reason"] for r in received} == {b"wrong_type"}
        assert (
            read_metric(
                port,
                "canarywatch_deadletter_messages_total",
                topic=topics.rollouts,
                reason="wrong_type",
            )
            == 4.0
        )

        # A record that validation refuses in the view's changelog itself (as an older version
        # wrote them): the restarted worker skips and counts it, and is ready and counting.
        changelog = f"{settings.app_id}-rollout-state-changelog"
        await producer.send_and_wait(
            changelog, key=b"bad/web", value=orjson.dumps({**good, "stable_hash": 5}), partition=0
        )
        assert worker.stop() is not None
        restarted = WorkerProcess(settings, tmp_path / "worker-2.log")
        restarted.start()
        try:
            await restarted.wait_ready()
            assert read_metric(port, "canarywatch_canaries_in_progress") == 2.0
            assert (
                read_metric(
                    port,
                    "canarywatch_restore_refused_total",
                    table="rollout-state",
                    reason="wrong_type",
                )
                == 1.0
            )
            for namespace, pod_hash in [
                ("shop", "canary1"),
                ("shop", "stable1"),
                ("shop2", "canary2"),
            ]:
                await producer.send_and_wait(
                    topics.requests, key=namespace.encode(), value=request(pod_hash, namespace)
                )
            await counted(port, 3.0)  # only the new lines: the offsets were committed
        finally:
            restarted.stop()
    finally:
        await producer.stop()
        worker.stop()
