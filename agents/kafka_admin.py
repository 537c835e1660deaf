"""Kafka admin helpers: create canarywatch's topics idempotently and wait until they are usable."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2

from agents.kafka_auth import PLAINTEXT, KafkaAuth

if TYPE_CHECKING:
    from agents.settings import Settings

__all__ = ["ensure_topics"]

_NO_LEADER = -1


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    auth: KafkaAuth = PLAINTEXT,
) -> dict[str, int]:
    """Create the missing `topics` (name -> partitions, `replication_factor`, topic `config`)
    and return once metadata shows a leader for every partition of every named topic.

    Existing topics are left as they are (no partition or config change); a topic created
    concurrently by someone else ("already exists") is fine. Retriable broker errors are
    retried until `timeout_s` seconds have passed, then TimeoutError is raised.
    """
    for name, partitions in topics.items():
        if partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
    if not topics:
        return {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        **auth.client_options(),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        created = await _create_missing(
            admin, topics, dict(config or {}), deadline, replication_factor
        )
        return await _wait_for_leaders(admin, topics, created, deadline)
    finally:
        await admin.close()


async def _create_missing(
    admin: AIOKafkaAdminClient,
    topics: Mapping[str, int],
    config: dict[str, str],
    deadline: float,
    replication_factor: int = 1,
) -> set[str]:
    """Create what is missing; return the names this call created."""
    loop = asyncio.get_running_loop()
    created: set[str] = set()
    while True:
        existing = set(await admin.list_topics())
        missing = [name for name in topics if name not in existing and name not in created]
        if not missing:
            return created
        remaining_ms = max(1000, int((deadline - loop.time()) * 1000))
        response: Any = await admin.create_topics(
            [
                NewTopic(n, topics[n], replication_factor, topic_configs=dict(config))
                for n in missing
            ],
            timeout_ms=remaining_ms,
        )
        retry: list[str] = []
        for entry in response.topic_errors:
            name, code = str(entry[0]), int(entry[1])
            message = str(entry[2]) if len(entry) > 2 and entry[2] else ""
            if code == 0:
                created.add(name)
            elif code == TopicAlreadyExistsError.errno:
                continue
            else:
                error: type[KafkaError] = for_code(code)
                if not error.retriable:
                    raise error(f"creating topic {name!r}: {message or error.__name__}")
                retry.append(f"{name}: {error.__name__} {message}".strip())
        if not retry:
            return created
        if loop.time() >= deadline:
            raise TimeoutError(f"could not create topics: {'; '.join(retry)}")
        await asyncio.sleep(0.1)


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient,
    topics: Mapping[str, int],
    created: set[str],
    deadline: float,
) -> dict[str, int]:
    """Wait for a leader on every partition; returns each topic's partition count."""
    loop = asyncio.get_running_loop()
    while True:
        pending = []
        described: list[dict[str, Any]] = await admin.describe_topics(list(topics))
        by_name = {str(t["topic"]): t for t in described}
        for name, wanted in topics.items():
            info = by_name.get(name)
            if info is None or info["error_code"] != 0:
                pending.append(f"{name}: no metadata")
                continue
            parts = info["partitions"]
            if name in created and len(parts) != wanted:
                pending.append(f"{name}: {len(parts)}/{wanted} partitions")
            elif not parts or any(p["leader"] == _NO_LEADER or p["error_code"] for p in parts):
                pending.append(f"{name}: partitions without leader")
        if not pending:
            return {name: len(by_name[name]["partitions"]) for name in topics}
        if loop.time() >= deadline:
            raise TimeoutError(f"topics not ready: {'; '.join(pending)}")
        await asyncio.sleep(0.05)


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client) picks."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def ensure_verdict_topic(settings: Settings) -> None:
    """`<prefix>.verdicts`: compacted, the latest snapshot per env (agents/verdicts.py)."""
    await ensure_topics(
        settings.bootstrap,
        {settings.topics.verdicts: settings.partitions},
        # A segment rolls every minute, so the cleaner can compact all but the last minutes:
        # with the default (7 days, 1 GiB) nothing is compacted, and `status` (which reads it
        # all) would read every snapshot ever refreshed.
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "segment.ms": "60000"},
        replication_factor=settings.replication_factor,
        auth=settings.kafka,
    )
