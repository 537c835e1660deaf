"""The rollout-state view: every worker knows every canary in progress.

Log shippers key request lines by namespace, but their partitioner is theirs (librdkafka's
CRC32 `consistent_random`, FNV, ...), not the bridge's murmur2: the partition an environment's
lines land on says nothing about where its rollout state lands. So no worker may assume it holds
only "its" environments. Each worker holds all of them, and judges those whose lines it reads.

How: the partitioned Faust agent (`track_rollouts` in agents/worker.py) validates every snapshot
from the rollouts topic and writes only canaries in progress into the Faust table
`rollout-state`, deleting the key (a tombstone on the changelog) when the canary is no longer in
progress. The table's changelog topic is compacted, so it holds one record per canary in
progress (plus a tail not yet compacted), not the history of the fleet. This service is a plain
aiokafka reader, outside any consumer group, of every partition of that changelog, from the
beginning: it applies each record to the worker's `Fleet` (tombstones: forget the environment),
including what other workers write, for as long as the worker runs.

Why not a Faust GlobalTable: its changelog is read by Faust's recovery machinery as standby
partitions; applying changes to the Fleet means overriding `apply_changelog_batch` and relying on
Faust's internals for when a global table counts as recovered and whether it keeps reading
after recovery. A reader of our own is a few dozen lines, validates every record itself, knows
exactly when it has caught up (the end offsets taken at start), and yields to the event loop
between batches, so a burst of snapshots never starves the request-log path or the evaluation
timer.

Every record is validated as on the wire (`decode_rollout_state`, and its key must be its
`namespace/name`): a record validation refuses (written by an older version, or by anything
else) is skipped and counted (`canarywatch_restore_refused_total{table="rollout-state"}`), and
the environment is forgotten: restoring never restores what validation would refuse.

The same reader follows the changelog of the `abort-decisions` table (`decisions_topic`): every
decision id any worker sent goes into `Fleet.decided`, so a restarted worker never aborts a
revision again that another worker's partition recorded. Faust's own recovery of that table
restores only the partitions a worker is assigned (tables keep no standby copies here,
agents/worker.py).

The view is restored once the reader reached, on every partition of both, the end offset it
saw at start; `on_restored` runs then (the worker starts request-log ingestion, lets aborts go
out, and reports ready).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from mode import Service

from agents.kafka_admin import ensure_topics
from agents.metrics import WorkerMetrics
from agents.settings import Settings
from streams.events import DecodeError, check_decision_id, decode_rollout_state
from streams.fleet import Fleet

log = logging.getLogger(__name__)


class RateLimitedLog:
    """Say something at most once per `every_s`, with how often it happened meanwhile."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self.every_s:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more like it since the last)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.warning(message + suffix, *args)


class RolloutView(Service):
    def __init__(
        self,
        settings: Settings,
        fleet: Fleet,
        metrics: WorkerMetrics,
        topic: str,
        *,
        on_restored: Callable[[], Awaitable[None]],
        decisions_topic: str | None = None,
        clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(loop=loop)
        self.settings = settings
        self.fleet = fleet
        self.metrics = metrics
        self.topic = topic
        self.decisions_topic = decisions_topic
        self.clock = clock
        self._on_restored = on_restored
        self.restored = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._refused_seen = 0
        self._evicted_seen = 0
        self._evict_log = RateLimitedLog(30.0)
        self._cap_log = RateLimitedLog(30.0)
        self._refused_log = RateLimitedLog(30.0)

    async def on_start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            **s.kafka.client_options(),
            group_id=None,  # no group: every worker reads every partition
            client_id=f"{s.app_id}-view",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _partitions(self) -> list[TopicPartition]:
        """The changelogs' partitions; the topics are created (compacted, as Faust would
        create them) if Faust has not yet."""
        topics = [self.topic] + ([self.decisions_topic] if self.decisions_topic else [])
        counts = await ensure_topics(
            self.settings.bootstrap,
            {topic: self.settings.partitions for topic in topics},
            # As Faust creates it (the worker's changelog config): the view may be first.
            {"cleanup.policy": "compact", **self.settings.topic_config()},
            replication_factor=self.settings.replication_factor,
            auth=self.settings.kafka,
        )
        return [TopicPartition(t, p) for t in topics for p in range(counts[t])]

    @Service.task
    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        tps = await self._partitions()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        log.info("rollout view: restoring %d records from %s", sum(end.values()), tps)
        if not pending:
            await self._restore_done()
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.view_batch)
            if batches:
                self.apply([r for records in batches.values() for r in records], self.clock())
            if pending:
                pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
                if not pending:
                    await self._restore_done()
            self.report_evictions()  # ingest admits by traffic between two batches
            await asyncio.sleep(0)  # a burst of snapshots yields to the request-log path

    async def _restore_done(self) -> None:
        log.info(
            "rollout view restored: %d canaries in progress",
            len(self.fleet.attribution.row_of_env),
        )
        self.restored.set()
        await self._on_restored()

    def apply(self, records: Sequence[ConsumerRecord[bytes, bytes]], now: float) -> None:
        """Apply changelog records to the fleet, validating each one."""
        fleet = self.fleet
        for record in records:
            key = record.key or b""
            if record.topic == self.decisions_topic:
                self._apply_decision(record)
                continue
            if record.value is None:
                fleet.forget(key.decode(errors="replace"))
                continue
            try:
                state = decode_rollout_state(record.value)
                if key != state.env.encode():
                    raise DecodeError("bad_key", f"key {key[:300]!r} is not {state.env}")
            except DecodeError as error:
                self.metrics.restore_refused.labels("rollout-state", error.reason).inc()
                self._refused_log.warning(
                    "rollout view: skipped %s/%d@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    error,
                )
                fleet.forget(key.decode(errors="replace"))
                continue
            fleet.apply_rollout(state, now)
            self.metrics.rollout_states.inc()
        refused = fleet.refused_canaries - self._refused_seen
        if refused:
            self._refused_seen = fleet.refused_canaries
            self.metrics.canaries_refused.inc(refused)
            self._cap_log.warning(
                "max_canaries=%d reached: %d new canaries not tracked",
                fleet.limits.max_canaries,
                refused,
            )
        self.report_evictions()
        released = fleet.release_held(now)
        self.metrics.count_lines(released.counted, released.unattributed, 0)

    def _apply_decision(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None:
            return  # a decision, once sent, stays decided
        try:
            self.fleet.decided.add(check_decision_id(record.key or b""))
        except DecodeError as error:  # not a decision id a worker wrote: skip and count
            self.metrics.restore_refused.labels("abort-decisions", error.reason).inc()

    def report_evictions(self) -> None:
        """Count and log idle canaries the fleet evicted (at the cap) since the last call."""
        fleet = self.fleet
        evicted = fleet.evicted_canaries - self._evicted_seen
        if evicted:
            self._evicted_seen = fleet.evicted_canaries
            self.metrics.canaries_evicted.inc(evicted)
            self._evict_log.warning(
                "max_canaries=%d reached: %d idle canaries evicted for canaries with traffic",
                fleet.limits.max_canaries,
                evicted,
            )
