"""The hot path's transport: request-log bytes from Kafka into the fleet's numpy counters.

A Faust service (started and stopped with the worker) that owns one aiokafka consumer for the
request-log topic. Faust's per-event stream machinery costs ~25-30 us a message; this path hands
whole fetched batches to `Fleet.count` instead.

Partitions follow Faust's own rebalancing: the request-log topic is co-partitioned with the
rollout-state topic (same partition count, both keyed by namespace), and this consumer reads
exactly the request-log partitions whose rollout-state partitions Faust assigned to this worker,
once their table is recovered. So each worker counts the lines of the environments whose state
it holds. Offsets are committed (in the consumer group `<app_id>-requests`) only after the lines
they cover were counted or dead-lettered: on a timer and before partitions are given up.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from mode import Service

from agents.deadletter import DeadLetters
from agents.metrics import WorkerMetrics
from agents.settings import Settings
from streams.events import DecodeError
from streams.fleet import Fleet

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

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self.commit()
            await self._consumer.stop()
        self._decoder.shutdown(wait=False)

    async def follow(self, partitions: set[int]) -> None:
        """Read these request-log partitions from now on (commits what was counted first)."""
        consumer = self._consumer
        assert consumer is not None
        await self.commit()
        topic = self.settings.topics.requests
        self.assigned = {TopicPartition(topic, p) for p in partitions}
        consumer.assign(sorted(self.assigned))
        self.metrics.ingest_partitions.set(len(self.assigned))
        if self.assigned:
            self._has_partitions.set()
        else:
            self._has_partitions.clear()
        log.info("ingest follows request-log partitions %s", sorted(partitions))

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
            await self._has_partitions.wait()
            batches = await consumer.getmany(timeout_ms=100, max_records=self.max_records)
            now = self.clock()
            if batches:
                await self._count(batches, now)
            if now - last_commit >= self.settings.commit_every_s:
                await self.commit()
                last_commit = now
            await asyncio.sleep(0)  # let the evaluation timer in between busy fetches

    async def _count(self, batches: dict[TopicPartition, list[ConsumerRecord]], now: float) -> None:
        """Decode every partition's records in one scan, count them, then note their offsets."""
        parts = list(batches.items())
        values = [r.value or b"" for _, records in parts for r in records]
        # The scan releases the GIL: in a thread it overlaps aiokafka's fetching on the loop.
        # Counting stays on the loop, where rollout states change the attribution.
        columns = await asyncio.get_running_loop().run_in_executor(
            self._decoder, self.fleet.decode, values
        )
        report = self.fleet.count_columns(columns, now)
        if report.invalid:
            firsts = list(itertools.accumulate((len(records) for _, records in parts), initial=0))
            refused: dict[TopicPartition, list[tuple[int, bytes, DecodeError]]] = {}
            for index, raw, error in report.invalid:
                part = bisect.bisect_right(firsts, index) - 1
                tp, records = parts[part]
                offset = records[index - firsts[part]].offset
                refused.setdefault(tp, []).append((offset, raw, error))
            topic = self.settings.topics.requests
            for tp, items in refused.items():
                await self.deadletters.publish(topic, tp.partition, items)
        self.metrics.count_lines(report.counted, report.unattributed, len(report.invalid))
        for tp, records in parts:
            last = records[-1].offset
            self._next_offset[tp] = last + 1
            highwater = self._consumer.highwater(tp) if self._consumer else None
            if highwater is not None:
                lag = max(0, highwater - last - 1)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
