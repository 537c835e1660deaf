"""Decision latency: from the broker's append of the request line that tips a verdict to the
broker's append of the abort command, both as LogAppendTime, under steady background traffic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.kafka_admin import ensure_topics
from agents.processes import poll_until
from agents.settings import Topics
from streams.events import POD_HASH_LABEL, encode_rollout_state

if TYPE_CHECKING:
    from bench.throughput import Scale

TIPPING_BAD_LINES = 50  # bad canary lines in the one message that tips a trial's verdict


def trial_lines(env: int, canary_good: int, stable_good: int, canary_bad: int) -> bytes:
    now = time.time()
    out = []
    for pod_hash, count, status in (
        (f"c{env:07x}", canary_good, 200),
        (f"s{env:07x}", stable_good, 200),
        (f"c{env:07x}", canary_bad, 503),
    ):
        line = orjson.dumps(
            {
                "ts": now,
                "namespace": f"env-{env:06d}",
                "pod": f"web-{pod_hash}-0",
                POD_HASH_LABEL: pod_hash,
                "status": status,
                "duration_ms": 20.0,
            }
        )
        out.extend([line] * count)
    return b"\n".join(out)


async def decision_latency(
    bootstrap: str,
    work: Path,
    prefix: str,
    scale: Scale,
    lines_per_s: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    from bench.throughput import PARTITIONS, percentile, start_worker, sum_metric
    from bench.traffic import batch_by_key, fleet_states, produce, request_lines

    topics = Topics(prefix)
    append_time = {"message.timestamp.type": "LogAppendTime", "max.message.bytes": str(8 << 20)}
    await ensure_topics(
        bootstrap,
        {topics.requests: PARTITIONS, topics.rollouts: PARTITIONS, topics.commands: PARTITIONS},
        append_time,
    )
    now = time.time()
    states = fleet_states(0, scale.envs, now)
    canaries = [int(s.namespace[4:]) for s in states if s.canary_in_progress]
    trials = canaries[: scale.latency_trials]
    await produce(
        bootstrap,
        topics.rollouts,
        [(s.namespace.encode(), encode_rollout_state(s)) for s in states],
    )
    worker = start_worker(bootstrap, work, topics)
    port = worker.settings.metrics_port
    commands = AIOKafkaConsumer(
        topics.commands,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=2, max_request_size=8 << 20, max_batch_size=1 << 20
    )
    try:
        await worker.wait_ready(within_s=180)
        await poll_until(
            lambda: sum_metric([port], "canarywatch_canaries_in_progress") == len(canaries),
            180,
            "canaries loaded",
        )
        await commands.start()
        for tp in commands.assignment():
            await commands.position(tp)
        await producer.start()
        # Every trial starts healthy: 200 canary and 800 stable requests, no errors.
        warm = [(f"env-{e:06d}".encode(), trial_lines(e, 200, 800, 0)) for e in trials]
        await produce(bootstrap, topics.requests, warm)
        pool = batch_by_key(request_lines(rng, 100_000, scale.envs, now), 500)
        background = asyncio.create_task(pace(producer, topics.requests, pool, lines_per_s))
        tipped: dict[str, float] = {}
        try:
            for env in trials:
                meta = await producer.send_and_wait(
                    topics.requests,
                    key=f"env-{env:06d}".encode(),
                    value=trial_lines(env, 0, 4 * TIPPING_BAD_LINES, TIPPING_BAD_LINES),
                )
                tipped[f"env-{env:06d}/web"] = meta.timestamp
                await asyncio.sleep(0.2)  # trials spread over time, not a synchronisation
            decided = await collect_commands(commands, set(tipped), within_s=60)
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
    finally:
        await producer.stop()
        await commands.stop()
        worker.stop()
    delays = [decided[env] - tipped[env] for env in tipped if env in decided]
    missing = len(tipped) - len(delays)
    if missing:
        print(f"latency: {missing} of {len(tipped)} trials got no abort within 60 s")
    return percentile(delays, 50), percentile(delays, 99)


async def pace(
    producer: AIOKafkaProducer, topic: str, pool: list[tuple[bytes, bytes]], lines_per_s: float
) -> None:
    """Send the pool's NDJSON messages round and round at `lines_per_s`."""
    per_message = pool[0][1].count(b"\n") + 1
    messages_per_s = lines_per_s / per_message
    started = time.monotonic()
    sent = 0
    while True:
        due = int((time.monotonic() - started) * messages_per_s)
        while sent < due:
            key, value = pool[sent % len(pool)]
            await producer.send(topic, key=key, value=value)
            sent += 1
        await asyncio.sleep(0.01)


async def collect_commands(
    consumer: AIOKafkaConsumer, expected: set[str], within_s: float
) -> dict[str, float]:
    decided: dict[str, float] = {}
    deadline = time.monotonic() + within_s
    while not expected <= set(decided) and time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                env = orjson.loads(record.value or b"{}").get("namespace", "") + "/web"
                decided.setdefault(env, record.timestamp)
    return decided
