"""The hot path's transport: request-log bytes from Kafka into the fleet's numpy counters.

A Faust service (started and stopped with the worker) that owns one aiokafka consumer for the
request-log topic. Faust's per-event stream machinery costs ~25-30 us a message; this path hands
whole fetched batches to `Fleet.count` instead.

Partitions: the consumer subscribes to the request-log topic in its own consumer group
`<app_id>-requests` (aiokafka group management, short session timeout), independent of Faust's
group: every worker holds the rollout state of every canary in progress (agents/view.py, and the
worker starts this service once that view is restored), so how the log shipper partitions does
not matter, and a worker killed with -9 loses its partitions to the others within seconds.
Offsets are committed only after the lines they cover were counted or dead-lettered: on a timer,
and before partitions are given up (the rebalance listener counts the fetch in flight, then
commits).

Nothing Kafka raises ends the service: a record batch the consumer cannot read (unknown codec,
bad CRC, a decompression error) is found, skipped, logged, counted in
`canarywatch_skipped_records_total` and committed past; other errors are retried with backoff,
logged once per episode.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from mode import Service

from agents.deadletter import DeadLetters, Flooded
from agents.episodes import Episodes
from agents.evidence import EvidenceStore
from agents.memtrim import HeapTrimmer
from agents.metrics import WorkerMetrics
from agents.settings import Settings
from agents.unreadable import SkipLog, read_alone, unreadable
from streams.events import DecodeError
from streams.fleet import Fleet
from streams.requestlog import Columns

log = logging.getLogger(__name__)

# Not ready when a request-log partition has had no fetch response for this long: the broker
# answers an idle fetch within fetch_max_wait_ms (0.5 s), a busy one within a second or two.
READY_FETCH_WITHIN_S = 5.0

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

BACKOFF_S = 0.1
BACKOFF_MAX_S = 5.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: RequestLogIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.ingest.give_up(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.ingest.took(set(assigned))


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
        self._next_offset: dict[TopicPartition, int] = {}  # to commit: after counted lines
        self._received: dict[TopicPartition, int] = {}  # after the last record fetched
        self._skipped: dict[TopicPartition, int] = {}  # after the last unreadable record
        self._fetched: list[Batches] = []  # fetched, not yet decoding
        self._consumer: AIOKafkaConsumer | None = None
        # One decode thread: batches stay in order and the process keeps one malloc arena more.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._trimmer = HeapTrimmer(time.monotonic)
        self._decoding: _Decoding | None = None
        # Held while a fetch is counted, so that a rebalance falls between two batches.
        self._batch_lock = asyncio.Lock()
        self._trouble: str | None = None  # the error of the current episode, logged once
        self._skip_log = SkipLog()
        # Durable evidence: checkpoints with the offsets they cover (agents/evidence.py).
        self.evidence = EvidenceStore(settings, fleet) if settings.checkpoint else None
        self._checkpoint_episode = Episodes("checkpoint", metrics)
        self._restore_episode = Episodes("restore", metrics)
        self._floor: dict[TopicPartition, int] = {}  # where counting resumed after a restore
        # The next offset each partition may contribute: a record below it was fetched
        # already (a refetch after a seek back), so it is never counted twice.
        self._expected: dict[TopicPartition, int] = {}
        self._restoring: set[TopicPartition] = set()  # their fetched records are dropped

    async def on_start(self) -> None:
        s = self.settings
        if self.evidence is not None:
            await self.evidence.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            **s.kafka.client_options(),
            group_id=f"{s.app_id}-requests",
            client_id=f"{s.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.fetch_partition_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
            session_timeout_ms=s.request_session_timeout_ms,
            heartbeat_interval_ms=s.request_heartbeat_interval_ms,
        )
        await self._consumer.start()
        self._consumer.subscribe([s.topics.requests], listener=_Rebalance(self))

    async def on_stop(self) -> None:
        if self._consumer is not None:
            async with self._batch_lock:
                await self._count_pending()
                await self._commit()
            await self.deadletters.flush(force=True)
            await self._consumer.stop()
        if self.evidence is not None:
            await self.evidence.stop()
        self._decoder.shutdown(wait=False)

    async def give_up(self, revoked: set[TopicPartition]) -> None:
        """Before partitions go: count what was fetched, commit it, forget those partitions.

        Counting the fetch in flight first matters: the next owner starts at the committed
        offsets, so a batch counted after that would be counted twice.
        """
        async with self._batch_lock:
            try:
                await self._count_pending()
                await self._commit()
            except Exception as exc:  # the next owner reads again from the last commit
                log.warning("ingest: counting before giving up %s failed: %s", sorted(revoked), exc)
            finally:
                for tp in revoked:
                    self._next_offset.pop(tp, None)
                    self._received.pop(tp, None)
                    self._expected.pop(tp, None)
                    self._floor.pop(tp, None)
                    self._skipped.pop(tp, None)
                self.assigned -= revoked
                self.fleet.assign_sources({tp.partition for tp in self.assigned}, self.clock())
                if self.evidence is not None:
                    # The next owner restores these canaries from the checkpoint just written
                    # (or an older one, with the offsets it covers): keeping them here would
                    # judge the same lines twice.
                    self.fleet.drop_sources({tp.partition for tp in revoked}, self.clock())
        self.metrics.ingest_partitions.set(len(self.assigned))
        if revoked:
            log.info("ingest gives up request-log partitions %s", sorted(revoked))

    async def took(self, assigned: set[TopicPartition]) -> None:
        """Partitions assigned: restore their canaries' evidence before counting a line."""
        new = assigned - self.assigned
        self.assigned = assigned
        # Event time: each assigned partition's watermark holds the slices (until it is idle).
        self.fleet.assign_sources({tp.partition for tp in assigned}, self.clock())
        self.metrics.ingest_partitions.set(len(assigned))
        log.info("ingest reads request-log partitions %s", sorted(tp.partition for tp in assigned))
        if self.evidence is None or not new:
            return
        backoff = BACKOFF_S
        while not self.should_stop:
            try:
                # Held while restoring: the fetcher may already return lines of the new
                # partitions, and they must be counted on top of the restored evidence.
                async with self._batch_lock:
                    self._restoring |= new
                    self._forget_fetched(new)
                    try:
                        restored, resume = await self.evidence.restore({tp.partition for tp in new})
                        consumer = self._consumer
                        assert consumer is not None
                        for tp in new & self.assigned:
                            # Resume exactly where the restored evidence ends (no checkpoint
                            # yet: the group's commit); records fetched before are dropped.
                            at = resume.get(tp.partition)
                            if at is None:
                                at = await consumer.committed(tp)
                            if at is None:
                                at = (await consumer.beginning_offsets([tp]))[tp]
                            consumer.seek(tp, at)
                            self._floor[tp] = at
                            self._expected[tp] = at
                            self._received.pop(tp, None)
                        self._forget_fetched(new)
                    finally:
                        self._restoring -= new
                self.metrics.evidence_rows.labels("restored").inc(restored)
                self._restore_episode.ok()
                return
            except Exception as exc:  # counting without the evidence would restart it at zero
                self._restore_episode.failed(exc, time.monotonic())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _forget_fetched(self, partitions: set[TopicPartition]) -> None:
        """Records of `partitions` fetched before their restore are not counted: the restore
        seeks to the offsets its evidence covers and they are read again from there."""
        for batches in self._fetched:
            for tp in partitions:
                batches.pop(tp, None)
        self._fetched = [b for b in self._fetched if b]
        if self._decoding is not None:
            self._decoding.dropped |= partitions

    def fetch_problem(self) -> str | None:
        """Readiness: why the broker is not answering this worker's fetches, or None.

        aiokafka stamps a partition on every fetch response, empty ones too; a broker that is
        down or unreachable stops the stamps. Read from the HTTP thread: it only reads.
        """
        consumer = self._consumer
        if consumer is None:
            return "not started"
        assigned = list(self.assigned)
        if not assigned:
            return "no request-log partitions assigned"
        now_ms = time.time() * 1000.0  # aiokafka's stamps are wall-clock milliseconds
        oldest = 0.0
        for tp in assigned:
            try:
                stamp = consumer.last_poll_timestamp(tp)
            except (AssertionError, KeyError):  # revoked in between
                continue
            oldest = max(oldest, now_ms - stamp if stamp else float("inf"))
        if oldest > READY_FETCH_WITHIN_S * 1000.0:
            if oldest == float("inf"):
                return "no fetch answered yet"
            return f"no fetch answered for {oldest / 1000.0:.0f} s"
        return None

    async def commit(self) -> None:
        async with self._batch_lock:
            await self._commit()

    async def _commit(self) -> None:
        """Commit what was counted: the next offset after each counted batch (with the
        evidence it covers, in one transaction, when checkpoints are on)."""
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {tp: o for tp, o in self._next_offset.items() if tp in self.assigned}
        if self.evidence is not None:
            try:
                written = await self.evidence.checkpoint(
                    offsets, {tp.partition for tp in self.assigned}
                )
            except Exception as exc:
                self._checkpoint_episode.failed(exc, time.monotonic())
                raise
            self._checkpoint_episode.ok()
            self.metrics.evidence_checkpoints.inc()
            self.metrics.evidence_rows.labels("written").inc(written)
        elif offsets:
            await consumer.commit(offsets)
        if not offsets:
            return
        for tp, offset in offsets.items():
            if self._next_offset.get(tp) == offset:
                del self._next_offset[tp]

    async def _wait_for_start_file(self) -> None:
        gate = self.settings.ingest_start_file
        if gate is None:
            return
        log.info("ingest holds until %s exists", gate)
        for _ in iter(lambda: gate.exists() or self.should_stop, True):
            await asyncio.sleep(0.05)  # a file has no event to wait on: poll it

    @Service.task
    async def _consume(self) -> None:
        await self._wait_for_start_file()
        backoff = BACKOFF_S
        last_commit = self.clock()
        while not self.should_stop:
            try:
                await self._step()
                now = self.clock()
                if now - last_commit >= self.settings.commit_every_s:
                    await self.commit()
                    await self.deadletters.flush()
                    last_commit = now
            except (asyncio.CancelledError, ConsumerStoppedError):
                raise
            except Exception as exc:
                if self.should_stop:
                    return
                what = f"{type(exc).__name__}: {exc}"
                if self._trouble is None:
                    log.warning("ingest: %s; retrying with backoff", what, exc_info=exc)
                    self.metrics.set_trouble("ingest", True)
                self._trouble = what
                self.metrics.ingest_errors.labels(type(exc).__name__).inc()
                self.metrics.kafka_errors.labels("ingest", type(exc).__name__).inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if self._trouble is not None:
                log.warning("ingest recovered from %s", self._trouble)
                self._trouble = None
                self.metrics.set_trouble("ingest", False)
            backoff = BACKOFF_S
            await asyncio.sleep(0)  # let the evaluation timer in between busy fetches

    async def _step(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        # While the last fetch is decoded in the thread, aiokafka unpacks the next one here:
        # take what is already fetched then, without waiting for more.
        wait_ms = 0 if self._decoding or self._fetched else 100
        try:
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=self.max_records)
        except Exception as exc:
            if not unreadable(exc):
                raise
            await self._isolate()
            async with self._batch_lock:
                # Count what was read around the unreadable records, then commit past them.
                await self._count_pending()
                for tp, offset in self._skipped.items():
                    self._next_offset[tp] = max(self._next_offset.get(tp, 0), offset)
                self._skipped.clear()
            return
        self._stash(batches)  # no await before: a revocation counts it
        async with self._batch_lock:
            await self._flush()
            pending = self._take_fetched()
            if pending:
                self._decoding = self._decode(pending)

    def _stash(self, batches: Batches) -> None:
        batches = self._new_records(batches)
        if batches:
            self._fetched.append(batches)
            for tp, records in batches.items():
                self._received[tp] = records[-1].offset + 1

    def _new_records(self, batches: Batches) -> Batches:
        """The fetched records not fetched before: after a restore, only those from the
        offset its evidence covers on (a fetch from elsewhere, before the seek took effect,
        is dropped: the consumer reads again from there); then never one twice."""
        fresh: Batches = {}
        for tp, records in batches.items():
            if tp in self._restoring:
                continue  # read again from the restored offsets
            expected = self._expected.get(tp)
            if expected is not None and records[0].offset < expected:
                records = [r for r in records if r.offset >= expected]
            if not records:
                continue
            floor = self._floor.get(tp)
            if floor is not None:
                if records[0].offset != floor:
                    continue  # fetched from another position than the restore resumed at
                del self._floor[tp]
            self._expected[tp] = records[-1].offset + 1
            fresh[tp] = records
        return fresh

    def _take_fetched(self) -> Batches:
        fetched, self._fetched = self._fetched, []
        if len(fetched) == 1:
            return fetched[0]
        merged: Batches = {}
        for batches in fetched:
            for tp, records in batches.items():
                merged.setdefault(tp, []).extend(records)
        return merged

    async def _isolate(self) -> None:
        """`getmany` failed on records it could not read: find them, partition by partition.

        The failed call may have taken good records of other partitions with it (their
        positions moved on): every partition goes back to after its last record received. Then
        each is read alone (agents/unreadable.py): a record in a batch that cannot be read is
        skipped, counted, logged and committed past.
        """
        consumer = self._consumer
        assert consumer is not None
        for tp in sorted(consumer.assignment()):
            back = self._received.get(tp)
            if back is None:
                committed = await consumer.committed(tp)
                back = (
                    committed
                    if committed is not None
                    else (await consumer.beginning_offsets([tp]))[tp]
                )
            consumer.seek(tp, back)
        for tp in sorted(consumer.assignment()):
            await self._read_alone(tp)

    async def _read_alone(self, tp: TopicPartition) -> None:
        consumer = self._consumer
        assert consumer is not None

        async def fetch(part: TopicPartition, n: int) -> Batches:
            got: Batches = await consumer.getmany(part, timeout_ms=200, max_records=n)
            return got

        for batches in await read_alone(consumer, tp, fetch, self._skip, limit=self.max_records):
            self._stash(batches)

    def _skip(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        self.metrics.skipped_records.labels(tp.topic, type(exc).__name__).inc()
        # Its lines are lost: commit past it (once what came before is counted).
        self._skipped[tp] = offset + 1
        self._received[tp] = offset + 1
        self._skip_log.skipped(tp, offset, exc)

    def _decode(self, batches: Batches) -> _Decoding:
        """Start decoding every partition's records of a fetch in one scan, in the thread.

        The scan releases the GIL, so it runs beside the event loop. Counting waits for the
        loop (`_flush`), where rollout states change the attribution.
        """
        parts = list(batches.items())
        # One scan per partition: each line's partition is where its canary's evidence is
        # checkpointed (agents/evidence.py).
        values = [[r.value or b"" for r in records] for _, records in parts]
        size = sum(len(v) for part in values for v in part)
        decode = self.fleet.decode

        def decode_parts() -> list[Columns]:
            return [decode(v) for v in values]

        loop = asyncio.get_running_loop()
        columns = loop.run_in_executor(self._decoder, decode_parts)
        return _Decoding(parts, self.clock(), columns, size)

    async def _count_pending(self) -> None:
        """Count the fetch being decoded and what was fetched after it (the lock is held)."""
        await self._flush()
        pending = self._take_fetched()
        if pending:
            self._decoding = self._decode(pending)
            await self._flush()

    def _current(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Are these fetched records to be counted? Not when their partition is no longer
        ours (the next owner reads them), nor when they were fetched from another position
        than the one a restore resumed at (dropped when fetched: `_new_records`)."""
        return tp in self.assigned

    async def _flush(self) -> None:
        """Count the fetch being decoded, dead-letter what it refused, then note its offsets."""
        decoding, self._decoding = self._decoding, None
        if decoding is None:
            return
        decoded = await decoding.columns
        kept = [
            (part, columns)
            for part, columns in zip(decoding.parts, decoded, strict=True)
            if self._current(*part) and part[0] not in decoding.dropped
        ]
        decoding.parts = [part for part, _ in kept]
        reports = [
            (part, self.fleet.count_columns(columns, decoding.fetched_at, part[0].partition))
            for part, columns in kept
        ]
        for part, report in reports:
            flooded = flooded_by_source([part], report.flooded)
            for tp, refused in by_source([part], report.invalid).items():
                await self.deadletters.publish(tp.topic, tp.partition, refused, flooded.pop(tp, []))
            for tp, messages in flooded.items():
                await self.deadletters.publish(tp.topic, tp.partition, [], messages)
            self.metrics.count_lines(report.counted, report.unattributed, report.refused)
        consumer = self._consumer
        assert consumer is not None
        for tp, records in decoding.parts:
            last = records[-1].offset
            self._next_offset[tp] = max(self._next_offset.get(tp, 0), last + 1)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - last - 1)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
        size = decoding.size
        del decoding, decoded, kept  # the columns, before the heap is trimmed of them
        if self._trimmer.due(size):
            # In the decode thread: after the next fetch's scan, never on the event loop.
            self._decoder.submit(self._trimmer.trim)


@dataclass(slots=True)
class _Decoding:
    """A fetch whose messages the decode thread is turning into columns."""

    parts: list[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]
    fetched_at: float
    columns: asyncio.Future[list[Columns]]  # one per part
    size: int  # bytes of the messages
    dropped: set[TopicPartition] = field(default_factory=set)  # restored meanwhile: not counted


Refused = tuple[int, bytes, DecodeError]  # (offset or index, the bytes, why)


def _locate(
    parts: Sequence[tuple[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]],
) -> Callable[[int], tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]:
    firsts = list(itertools.accumulate((len(records) for _, records in parts), initial=0))

    def locate(index: int) -> tuple[TopicPartition, ConsumerRecord[bytes, bytes]]:
        part = bisect.bisect_right(firsts, index) - 1
        tp, records = parts[part]
        return tp, records[index - firsts[part]]

    return locate


def by_source(
    parts: Sequence[tuple[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]],
    refused: Iterable[Refused],
) -> dict[TopicPartition, list[Refused]]:
    """Refused messages by partition, with their offsets.

    `refused` indexes the messages of all `parts` in order, as they were decoded together.
    """
    locate = _locate(parts)
    out: dict[TopicPartition, list[Refused]] = {}
    for index, raw, error in refused:
        tp, record = locate(index)
        out.setdefault(tp, []).append((record.offset, raw, error))
    return out


def flooded_by_source(
    parts: Sequence[tuple[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]],
    flooded: dict[int, dict[str, int]],
) -> dict[TopicPartition, list[Flooded]]:
    """Messages with too many bad lines by partition: (offset, the whole message, tallies)."""
    locate = _locate(parts)
    out: dict[TopicPartition, list[Flooded]] = {}
    for index in sorted(flooded):
        tp, record = locate(index)
        out.setdefault(tp, []).append((record.offset, record.value or b"", flooded[index]))
    return out
