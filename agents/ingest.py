"""The hot path's transport: request-log bytes from Kafka into the fleet's numpy counters.

A Faust service (started and stopped with the worker) that owns one aiokafka consumer for the
request-log topic. Faust's per-event stream machinery costs ~25-30 us a message; this path hands
whole fetched batches to `Fleet.count` instead.

The consumer subscribes to the request-log topic in its own consumer group (`<app_id>-requests`):
request-log partitions are not tied to rollout-state partitions (log shippers may use any
partitioner), because every worker holds the rollout state of every canary in progress
(agents/view.py). The worker starts this service once that view is restored. Offsets are
committed only after the lines they cover were counted or dead-lettered: on a timer and before
partitions are given up.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from mode import Service

from agents.deadletter import DeadLetters
from agents.metrics import WorkerMetrics
from agents.settings import Settings
from streams.events import DecodeError
from streams.fleet import Fleet
from streams.requestlog import Columns

log = logging.getLogger(__name__)


class RequestLogIngest(Service):
    def __init__(
        self,
        settings: Settings,
        fleet: Fleet,
        deadletters: DeadLetters,
        metrics: WorkerMetrics,
        *,
        clock: Callable[[], float] = time.time,
        max_records: int = 50_000,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(loop=loop)
        self.settings = settings
        self.fleet = fleet
        self.deadletters = deadletters
        self.metrics = metrics
        self.clock = clock
        self.max_records = max_records
        self.assigned: set[TopicPartition] = set()
        self._has_partitions = asyncio.Event()
        self._next_offset: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        # One decode thread: batches stay in order and the process keeps one malloc arena more.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._decoding: _Decoding | None = None
        # Held from a fetch to its counting, so that a rebalance falls between two batches.
        self._batch_lock = asyncio.Lock()

    async def on_start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=f"{s.app_id}-requests",
            client_id=f"{s.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.fetch_partition_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
        )
        await self._consumer.start()
        self._consumer.subscribe([s.topics.requests], listener=_Rebalance(self))

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self.commit()
            await self._consumer.stop()
        self._decoder.shutdown(wait=False)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Count the fetch in flight and commit before partitions are given up: a batch counted
        after that would be counted again by the partitions' next owner."""
        async with self._batch_lock:
            await self._flush()
            await self.commit()
            self.assigned -= revoked
        self._assignment_changed()

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned |= assigned
        self._assignment_changed()
        log.info("ingest reads request-log partitions %s", sorted(tp.partition for tp in assigned))

    def _assignment_changed(self) -> None:
        self.metrics.ingest_partitions.set(len(self.assigned))
        if self.assigned:
            self._has_partitions.set()
        else:
            self._has_partitions.clear()

    async def commit(self) -> None:
        """Commit what was counted: the next offset after each counted batch."""
        if self._consumer is None or not self._next_offset:
            return
        offsets = {tp: o for tp, o in self._next_offset.items() if tp in self.assigned}
        self._next_offset.clear()
        if offsets:
            await self._consumer.commit(offsets)

    async def _wait_for_start_file(self) -> None:
        gate = self.settings.ingest_start_file
        if gate is None:
            return
        log.info("ingest holds until %s exists", gate)
        for _ in iter(lambda: gate.exists() or self.should_stop, True):
            await asyncio.sleep(0.05)  # a file has no event to wait on: poll it

    @Service.task
    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        await self._wait_for_start_file()
        last_commit = self.clock()
        while not self.should_stop:
            if self._decoding is None:
                await self._has_partitions.wait()
            async with self._batch_lock:
                # While the last fetch is decoded in the thread, aiokafka unpacks the next one
                # here: take what is already fetched then, without waiting for more.
                wait_ms = 0 if self._decoding else 100
                batches = await consumer.getmany(timeout_ms=wait_ms, max_records=self.max_records)
                await self._flush()
                if batches:
                    self._decoding = self._decode(batches)
            now = self.clock()
            if now - last_commit >= self.settings.commit_every_s:
                await self.commit()
                last_commit = now
            await asyncio.sleep(0)  # let the evaluation timer in between busy fetches

    def _decode(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> _Decoding:
        """Start decoding every partition's records of a fetch in one scan, in the thread.

        The scan releases the GIL, so it runs beside the event loop. Counting waits for the
        loop (`_flush`), where rollout states change the attribution.
        """
        parts = list(batches.items())
        values = [r.value or b"" for _, records in parts for r in records]
        loop = asyncio.get_running_loop()
        columns = loop.run_in_executor(self._decoder, self.fleet.decode, values)
        return _Decoding(parts, self.clock(), columns)

    async def _flush(self) -> None:
        """Count the fetch being decoded, dead-letter what it refused, then note its offsets."""
        decoding, self._decoding = self._decoding, None
        if decoding is None:
            return
        report = self.fleet.count_columns(await decoding.columns, decoding.fetched_at)
        for tp, refused in by_source(decoding.parts, report.invalid).items():
            await self.deadletters.publish(tp.topic, tp.partition, refused)
        self.metrics.count_lines(report.counted, report.unattributed, len(report.invalid))
        consumer = self._consumer
        assert consumer is not None
        for tp, records in decoding.parts:
            last = records[-1].offset
            self._next_offset[tp] = last + 1
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - last - 1)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: RequestLogIngest) -> None:
        self._ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._ingest.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._ingest.on_assigned(set(assigned))


@dataclass(slots=True)
class _Decoding:
    """A fetch whose messages the decode thread is turning into columns."""

    parts: list[tuple[TopicPartition, list[ConsumerRecord]]]
    fetched_at: float
    columns: asyncio.Future[Columns]


Refused = tuple[int, bytes, DecodeError]  # (offset or index, the bytes, why)


def by_source(
    parts: Sequence[tuple[TopicPartition, Sequence[ConsumerRecord]]], refused: Iterable[Refused]
) -> dict[TopicPartition, list[Refused]]:
    """Refused messages by partition, with their offsets.

    `refused` indexes the messages of all `parts` in order, as they were decoded together.
    """
    firsts = list(itertools.accumulate((len(records) for _, records in parts), initial=0))
    out: dict[TopicPartition, list[Refused]] = {}
    for index, raw, error in refused:
        part = bisect.bisect_right(firsts, index) - 1
        tp, records = parts[part]
        out.setdefault(tp, []).append((records[index - firsts[part]].offset, raw, error))
    return out
