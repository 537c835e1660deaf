"""Helpers for the request-log ingest tests on the real broker: workers, lines, metrics."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from agents.kafka_admin import ensure_topics
from agents.processes import WorkerProcess, free_port, poll_until, read_metric, scrape
from agents.settings import Settings, Topics
from streams.events import RequestLine, RolloutState, encode_request_line, encode_rollout_state

CANARY, STABLE = "canary1", "stable1"


def new_settings(bootstrap: str, tmp_path: Path, prefix: str, **changes: object) -> Settings:
    run_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return Settings(
        replication_factor=1,
        bootstrap=bootstrap,
        app_id=run_id,
        topics=Topics(run_id),
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
    ).with_overrides(**changes)


async def create_topics(settings: Settings) -> None:
    await ensure_topics(
        settings.bootstrap,
        settings.topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes)},
    )


@contextlib.asynccontextmanager
async def running(settings: Settings, log: Path) -> AsyncIterator[WorkerProcess]:
    process = WorkerProcess(settings, log)
    process.start()
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


def line(i: int, pod_hash: str = STABLE, namespace: str = "shop") -> bytes:
    return encode_request_line(
        RequestLine(
            ts=time.time(),
            namespace=namespace,
            pod=f"web-{pod_hash}-0",
            pod_hash=pod_hash,
            status=200,
            duration_ms=10.0 + i,
        )
    )


def producer(settings: Settings, **options: object) -> AIOKafkaProducer:
    options = {"max_request_size": settings.producer_max_request_size, **options}
    return AIOKafkaProducer(bootstrap_servers=settings.bootstrap, **options)


async def put_canary(settings: Settings, port: int | None = None) -> None:
    """A canary in progress for namespace `shop`, known to the worker on `port`."""
    state = RolloutState(
        namespace="shop", name="web", current_pod_hash=CANARY, stable_hash=STABLE, canary_weight=20
    )
    p = producer(settings)
    await p.start()
    try:
        await p.send_and_wait(
            settings.topics.rollouts, key=b"shop", value=encode_rollout_state(state)
        )
    finally:
        await p.stop()
    await wait_metric(port or settings.metrics_port, "canarywatch_canaries_in_progress", 1.0)


def metric(port: int, name: str, **labels: str) -> float:
    return read_metric(port, name, **labels) or 0.0


def counted(port: int) -> float:
    return metric(port, "canarywatch_request_lines_total", outcome="counted")


def consumed(port: int) -> float:
    """Lines read, whatever became of them."""
    samples = scrape(port, ("canarywatch_request_lines_total",))
    return sum(v for (name, _), v in samples.items() if name == "canarywatch_request_lines_total")


async def wait_metric(
    port: int, name: str, value: float, within_s: float = 60.0, **labels: str
) -> None:
    await poll_until(
        lambda: metric(port, name, **labels) == value, within_s, f"{name}{labels} == {value}"
    )


async def wait_for(check: Callable[[], bool], within_s: float, what: str) -> None:
    await poll_until(check, within_s, what)


async def read_deadletters(
    settings: Settings, count: int, within_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        settings.topics.deadletter,
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        fetch_max_bytes=settings.topic_max_message_bytes * 2,
        max_partition_fetch_bytes=settings.topic_max_message_bytes * 2,
    )
    await consumer.start()
    received: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + within_s
        while len(received) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received.extend(records)
        # Nothing more than expected arrives shortly after.
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            received.extend(records)
    finally:
        await consumer.stop()
    return received


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), in bytes."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
