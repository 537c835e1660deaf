"""Record batches a consumer cannot read: find them, skip them, keep everything else.

aiokafka raises from `getmany` when a fetched batch cannot be decoded (a codec it lacks, a bad
CRC, a decompression error) and raises again on every retry: the consumer is stuck at that
offset, and a service that lets the error out stops reading. `read_alone` reads one partition in
chunks that shrink on failure down to one record; where a one-record read fails, the record is
in an unreadable batch: it is reported and skipped, and reading goes on after it (so a bad batch
of k records costs k fetches). Used by the request-log ingest (agents/ingest.py) and, through
`guard_faust_fetches`, by Faust's own consumer (rollout states, commands).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    ConsumerStoppedError,
    CorruptRecordException,
    KafkaError,
    UnsupportedCodecError,
)
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

Batches = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
Fetch = Callable[[TopicPartition, int], Awaitable[Batches]]  # (partition, max records)
OnSkip = Callable[[TopicPartition, int, BaseException], None]  # (partition, offset, why)

LOG_EVERY_S = 10.0


def unreadable(exc: BaseException) -> bool:
    """An error of the records themselves (skip them), not of the broker or the group."""
    if isinstance(exc, CorruptRecordException | UnsupportedCodecError):
        return True
    # Decompression and parsing fail with the codec's own errors (zlib.error, OSError from gzip,
    # cramjam's DecompressionError, struct.error, ...): anything that is not a KafkaError.
    return not isinstance(
        exc, KafkaError | asyncio.CancelledError | ConsumerStoppedError | AssertionError
    )


async def read_alone(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    fetch: Fetch,
    on_skip: OnSkip,
    *,
    limit: int,
) -> list[Batches]:
    """Read `tp` alone from its position, skipping unreadable records, until nothing more is
    fetched or `limit` records were read; returns what was read, in order."""
    read: list[Batches] = []
    chunk, taken = 1, 0
    while taken < limit:
        before = await consumer.position(tp)
        try:
            got = await fetch(tp, chunk)
        except Exception as exc:
            if not unreadable(exc):
                raise
            consumer.seek(tp, before)
            if chunk > 1:
                chunk = max(1, chunk // 4)
                continue
            on_skip(tp, before, exc)
            consumer.seek(tp, before + 1)
            continue
        if not got:
            break
        read.append(got)
        taken += sum(len(records) for records in got.values())
        chunk = min(limit, chunk * 4)
    return read


class SkipLog:
    """Logs skipped records with partition, offset and reason, one line per interval."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._at = float("-inf")
        self._unlogged = 0
        self._lock = threading.Lock()  # Faust's consumer runs in a thread of its own

    def skipped(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._unlogged += 1
            if now - self._at < self.every_s:
                return
            count, self._unlogged, self._at = self._unlogged, 0, now
        log.error(
            "skipped %d unreadable record(s), the last %s/%d@%d: %s: %s",
            count,
            tp.topic,
            tp.partition,
            offset,
            type(exc).__name__,
            exc,
        )


def guard_faust_fetches(on_skip: OnSkip, *, limit: int = 10_000) -> None:
    """Make Faust's aiokafka consumer skip unreadable records instead of crashing its Fetcher.

    Faust (0.15) reads through `AIOKafkaConsumerThread._fetch_records`; a record it cannot read
    raises there and stops the Fetcher service for good: no rollout state or command is read
    again. The wrapper notes the positions before each fetch; on an unreadable batch it puts the
    partitions back (the failed call may have taken good records with it) and reads them one by
    one with `read_alone`. Faust sees a gap in the offsets and commits past it.
    """
    from faust.transport.drivers import aiokafka as driver

    cls: Any = driver.AIOKafkaConsumerThread
    cls._canarywatch_on_skip = on_skip  # the last worker built in this process reports skips
    if getattr(cls, "_canarywatch_guarded", False):
        return
    original = cls._fetch_records

    async def _fetch_records(
        self: Any,
        consumer: AIOKafkaConsumer,
        active_partitions: set[TopicPartition],
        timeout: float | None = None,  # noqa: ASYNC109 (Faust's signature)
        max_records: int | None = None,
    ) -> Batches:
        positions = _positions(consumer, active_partitions)
        try:
            result: Batches = await original(
                self, consumer, active_partitions, timeout=timeout, max_records=max_records
            )
            return result
        except Exception as exc:
            if not unreadable(exc):
                raise
        targets = await _rewind(consumer, positions, active_partitions)
        fetcher = consumer._fetcher

        async def fetch(tp: TopicPartition, n: int) -> Batches:
            with fetcher._subscriptions.fetch_context():
                got: Batches = await fetcher.fetched_records({tp}, timeout=0.2, max_records=n)
                return got

        merged: Batches = {}
        for tp in targets:
            report = cls._canarywatch_on_skip
            for batches in await read_alone(consumer, tp, fetch, report, limit=limit):
                for part, records in batches.items():
                    merged.setdefault(part, []).extend(records)
        return merged

    cls._fetch_records = _fetch_records
    cls._canarywatch_guarded = True


async def _rewind(
    consumer: AIOKafkaConsumer,
    positions: dict[TopicPartition, int],
    partitions: set[TopicPartition] | None,
) -> list[TopicPartition]:
    """Put each partition back where it was before a failed fetch (the fetch may have taken
    good records with it); a partition assigned meanwhile goes back to its committed offset.
    Returns the partitions to read alone."""
    assigned = consumer.assignment()
    targets = sorted(tp for tp in assigned if not partitions or tp in partitions)
    for tp in targets:
        position = positions.get(tp)
        if position is None and consumer._group_id is not None:
            position = await consumer.committed(tp)
        if position is not None:
            consumer.seek(tp, position)
    return targets


def _positions(
    consumer: AIOKafkaConsumer, partitions: set[TopicPartition] | None
) -> dict[TopicPartition, int]:
    """Positions of the assigned partitions that have one, without waiting (aiokafka state)."""
    subscription = consumer._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return {}
    assignment = subscription.assignment
    out: dict[TopicPartition, int] = {}
    for tp in partitions or consumer.assignment():
        state = assignment.state_value(tp)
        if state is not None and state.has_valid_position:
            out[tp] = state.position
    return out


def skipped_counter(registry: CollectorRegistry) -> Counter:
    """`canarywatch_skipped_records_total{topic,reason}`, the same in every component."""
    return Counter(
        "canarywatch_skipped_records",
        "Records the consumer could not read (codec, CRC, decompression) and skipped, by "
        "topic and error.",
        ["topic", "reason"],
        registry=registry,
    )


def counting(counter: Counter, skip_log: SkipLog | None = None) -> OnSkip:
    """An `OnSkip` that counts in `counter` and logs (one line per interval)."""
    logger = skip_log or SkipLog()

    def on_skip(tp: TopicPartition, offset: int, exc: BaseException) -> None:
        counter.labels(tp.topic, type(exc).__name__).inc()
        logger.skipped(tp, offset, exc)

    return on_skip


async def getmany_skipping(
    consumer: AIOKafkaConsumer, on_skip: OnSkip, *, timeout_ms: int, max_records: int
) -> Batches:
    """`consumer.getmany` that skips unreadable records (for the actuator's and bridge's loops).

    Records a failed call took with it are read again: each partition goes back to where it
    was before the call, then is read alone.
    """
    for tp in consumer.assignment() - _positions(consumer, None).keys():
        await consumer.position(tp)  # waits for the offset reset, as getmany would
    positions = _positions(consumer, None)
    try:
        got: Batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return got
    except Exception as exc:
        if not unreadable(exc):
            raise
    targets = await _rewind(consumer, positions, None)

    async def fetch(tp: TopicPartition, n: int) -> Batches:
        part: Batches = await consumer.getmany(tp, timeout_ms=200, max_records=n)
        return part

    merged: Batches = {}
    for tp in targets:
        for batches in await read_alone(consumer, tp, fetch, on_skip, limit=max_records):
            for part, records in batches.items():
                merged.setdefault(part, []).extend(records)
    return merged
