"""The benches' traffic: a fleet's rollout states, request lines for it, batched by key as a
log shipper batches them, produced to the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from streams.events import (
    POD_HASH_LABEL,
    RolloutState,
)

CANARY_SHARE = 0.05  # environments with a canary in progress


def fleet_states(first: int, count: int, now: float) -> list[RolloutState]:
    """Environments env-<i>; every 1/CANARY_SHARE-th has a canary in progress."""
    step = round(1 / CANARY_SHARE)
    return [
        RolloutState(
            namespace=f"env-{i:06d}",
            name="web",
            current_pod_hash=f"c{i:07x}" if i % step == 0 else f"s{i:07x}",
            stable_hash=f"s{i:07x}",
            canary_weight=20 if i % step == 0 else None,
            observed_at=now,
        )
        for i in range(first, first + count)
    ]


def request_lines(rng: np.random.Generator, n: int, envs: int, now: float) -> list[bytes]:
    """n encoded request lines spread uniformly over the environments."""
    env = rng.integers(0, envs, n)
    to_canary = (env % round(1 / CANARY_SHARE) == 0) & (rng.random(n) < 0.2)
    status = np.where(rng.random(n) < 0.001, 503, 200)
    duration = np.round(rng.lognormal(3.5, 0.6, n), 2)
    out = []
    for e, c, s, d in zip(
        env.tolist(), to_canary.tolist(), status.tolist(), duration.tolist(), strict=True
    ):
        pod_hash = f"c{e:07x}" if c else f"s{e:07x}"
        out.append(
            orjson.dumps(
                {
                    "ts": now,
                    "namespace": f"env-{e:06d}",
                    "pod": f"web-{pod_hash}-0",
                    POD_HASH_LABEL: pod_hash,
                    "status": s,
                    "duration_ms": d,
                }
            )
        )
    return out


def key_of(line: bytes) -> bytes:
    return line.split(b'"namespace":"', 1)[1].split(b'"', 1)[0]


def batch_by_key(lines: Sequence[bytes], per_message: int) -> list[tuple[bytes, bytes]]:
    by_key: dict[bytes, list[bytes]] = {}
    for line in lines:
        by_key.setdefault(key_of(line), []).append(line)
    # Keyed NDJSON per namespace would give tiny messages at 20k environments; shippers batch
    # per node instead, so batches mix namespaces: key them by their first line's namespace.
    flat = [line for group in by_key.values() for line in group]
    return [
        (key_of(flat[i]), b"\n".join(flat[i : i + per_message]))
        for i in range(0, len(flat), per_message)
    ]


async def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        acks=1,
    )
    await producer.start()
    try:
        for i in range(0, len(messages), 20_000):
            futures = [
                await producer.send(topic, key=k, value=v) for k, v in messages[i : i + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
