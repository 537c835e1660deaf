"""Durable evidence: every canary's test state checkpointed to Kafka with the offsets it covers.

Design (docs/operating.md, docs/performance.md): a compacted topic `<prefix>.evidence`, keyed by
app id and environment (`<app_id>/<namespace>/<rollout>`: apps that share a prefix share the
topic, never each other's evidence); a value is one environment's whole row state
(`Fleet.export_rows`: counts since the canary started, window buckets, open slice, change-point
sums, latches) with the canary
revision and epoch it belongs to and the request-log partition its lines come from. Every
checkpoint interval the request-log ingest writes the rows that changed, and commits the
request-log offsets those rows cover, in one Kafka transaction (aiokafka's transactional
producer, `send_offsets_to_transaction` to the group `<app_id>-requests`). Readers read
`read_committed`: a checkpoint is there with its offsets, or neither is. A worker that is
assigned a partition reads the evidence topic before it counts a line of it, imports the rows
of that partition whose canary revision and epoch are still in progress, and the consumer
starts at the committed offsets: every line is in the test exactly once, across restarts,
kill -9 and rebalances (a transaction a killed worker left open is aborted by the broker after
`transaction_timeout_ms`, or at once when the same worker starts again: the transactional id
is stable per worker identity).

Why not Faust tables: a table write goes to its changelog as a separate record; the request
log is read outside Faust (agents/ingest.py, for throughput), so its offsets are not in Faust's
exactly-once transaction; only a transaction of our own covers state and offsets together.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from numpy.typing import NDArray

from agents.kafka_admin import ensure_topics
from agents.settings import Settings
from streams.events import RolloutState
from streams.fleet import Fleet

log = logging.getLogger(__name__)

MAGIC = b"CWE1"
# Per request-log partition, the next offset the checkpoint covers, in the same transaction as
# the rows: a reader of a consistent prefix of transactions gets rows and offsets that agree,
# whether or not the group's (transactional) offset commit is visible yet.
OFFSET_KEY = b"\x00offset/"
RESTORE_SETTLE_S = 2.0  # at most this long waiting for the stable end to stop moving
SETTLE_POLL_S = 0.1
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    env: str
    canary: str
    stable: str
    epoch: str
    partition: int
    head: int
    values: NDArray[np.float64]

    def matches(self, state: RolloutState | None) -> bool:
        return (
            state is not None
            and state.current_pod_hash == self.canary
            and state.stable_hash == self.stable
            and state.epoch == self.epoch
        )


def encode_evidence(record: EvidenceRecord) -> bytes:
    header = orjson.dumps(
        {
            "env": record.env,
            "canary": record.canary,
            "stable": record.stable,
            "epoch": record.epoch,
            "partition": record.partition,
            "head": record.head,
            "width": int(record.values.size),
        }
    )
    return MAGIC + _LEN.pack(len(header)) + header + record.values.astype("<f8").tobytes()


def decode_evidence(raw: bytes) -> EvidenceRecord:
    """An evidence record, or ValueError."""
    if raw[:4] != MAGIC or len(raw) < 8:
        raise ValueError("not an evidence record")
    (n,) = _LEN.unpack(raw[4:8])
    header = orjson.loads(raw[8 : 8 + n])
    values = np.frombuffer(raw[8 + n :], dtype="<f8").astype(np.float64)
    if values.size != int(header["width"]):
        raise ValueError("truncated evidence record")
    return EvidenceRecord(
        env=str(header["env"]),
        canary=str(header["canary"]),
        stable=str(header["stable"]),
        epoch=str(header["epoch"]),
        partition=int(header["partition"]),
        head=int(header["head"]),
        values=values,
    )


def transactional_id(settings: Settings) -> str:
    """Stable for one worker identity (host and data directory): a restarted worker fences its
    predecessor's producer and aborts the transaction it left open."""
    where = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
    return f"{settings.app_id}-evidence-{hashlib.sha256(where.encode()).hexdigest()[:12]}"


class EvidenceStore:
    """Checkpoints and restores the fleet's evidence rows (see the module docstring)."""

    def __init__(self, settings: Settings, fleet: Fleet) -> None:
        self.settings = settings
        self.fleet = fleet
        self.topic = settings.topics.evidence
        self.group_id = f"{settings.app_id}-requests"
        # Every key names the app: two apps sharing a topic prefix (and so this topic) must
        # neither restore each other's rows nor resume at each other's offsets.
        self._key_prefix = settings.app_id.encode() + b"/"
        self._producer: AIOKafkaProducer | None = None
        self.checkpoints = 0
        self.rows_written = 0
        self.rows_restored = 0
        self.last_restore_s = 0.0
        self._partitions = settings.partitions
        self._reader: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        s = self.settings
        counts = await ensure_topics(
            s.bootstrap,
            {self.topic: s.partitions},
            {"cleanup.policy": "compact", "max.message.bytes": str(s.topic_max_message_bytes)},
            replication_factor=s.replication_factor,
            auth=s.kafka,
        )
        self._partitions = counts[self.topic]
        # One reader for every restore: starting a consumer costs ~0.5 s of a takeover.
        self._reader = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            **s.kafka.client_options(),
            group_id=None,
            client_id=f"{s.app_id}-evidence-restore",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=s.fetch_partition_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
        )
        await self._reader.start()
        await self._new_producer()

    async def _new_producer(self) -> None:
        if self._producer is not None:
            try:
                await self._producer.stop()
            except Exception as exc:  # a broken producer is replaced whatever it says
                log.debug("evidence producer stop: %s", exc)
        s = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            **s.kafka.client_options(),
            client_id=f"{s.app_id}-evidence",
            transactional_id=transactional_id(s),
            enable_idempotence=True,
            transaction_timeout_ms=s.transaction_timeout_ms,
            max_request_size=s.producer_max_request_size,
            linger_ms=5,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def checkpoint(self, offsets: dict[TopicPartition, int], sources: set[int]) -> int:
        """Write the changed rows of `sources` and commit `offsets` in one transaction.

        Call with counting held (the ingest's batch lock): the rows and the offsets must
        describe the same lines. Returns the rows written. Raises on failure: nothing of the
        transaction is visible, and the rows stay marked changed for the next attempt; a
        failing producer is replaced.
        """
        fleet = self.fleet
        rows = fleet.checkpoint_rows(sources) if sources else np.zeros(0, dtype=np.intp)
        if not offsets and rows.size == 0:
            return 0
        head, data = fleet.export_rows(rows)
        records = []
        for i, row in enumerate(rows.tolist()):
            state = fleet.attribution.states[row]
            assert state is not None
            record = EvidenceRecord(
                state.env,
                state.current_pod_hash,
                state.stable_hash,
                state.epoch,
                int(fleet.row_source[row]),
                head,
                data[i],
            )
            records.append((self._key_prefix + state.env.encode(), encode_evidence(record)))
        for tp, offset in offsets.items():
            key = self._key_prefix + OFFSET_KEY + str(tp.partition).encode()
            records.append((key, str(offset).encode()))
        producer = self._producer
        if producer is None:
            await self._new_producer()
            producer = self._producer
            assert producer is not None
        try:
            async with producer.transaction():
                sent = [
                    await producer.send(self.topic, key=key, value=value) for key, value in records
                ]
                await asyncio.gather(*sent)
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self.group_id)
        except Exception:
            await self._new_producer()
            raise
        # Only what did not change meanwhile is clean (counting is held; passes may run).
        fleet.dirty[rows] = False
        self.checkpoints += 1
        self.rows_written += len(records)
        return len(records)

    async def restore(self, partitions: Iterable[int]) -> tuple[int, dict[int, int]]:
        """Import the evidence of the canaries whose lines come from `partitions`; returns the
        rows restored and, per partition, the offset that evidence covers (where to resume).
        Reads the whole (compacted) evidence topic, read_committed."""
        wanted = set(partitions)
        if not wanted:
            return 0, {}
        started = time.perf_counter()
        prefix = self._key_prefix
        latest = {
            key[len(prefix) :]: value
            for key, value in (await self._read_all()).items()
            if key.startswith(prefix)  # this app's: another app's rows and offsets are not
        }
        resume: dict[int, int] = {}
        for key, value in list(latest.items()):
            if key.startswith(OFFSET_KEY):
                del latest[key]
                partition = int(key[len(OFFSET_KEY) :])
                if value is not None and partition in wanted:
                    resume[partition] = int(value)
        fleet = self.fleet
        groups: dict[tuple[int, int], list[tuple[int, NDArray[np.float64]]]] = {}
        width = fleet.row_width  # a sum over the arrays' shapes: once, not per record
        for raw in latest.values():
            if raw is None:
                continue
            try:
                record = decode_evidence(raw)
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                log.warning("evidence: skipped a record: %s", exc)
                continue
            if record.partition not in wanted:
                continue
            row = fleet.attribution.row_of_env.get(record.env)
            if row is None or not record.matches(fleet.attribution.states[row]):
                continue  # that canary revision is over
            if record.values.size != width:
                log.warning("evidence: %s has another layout (settings changed)", record.env)
                continue
            groups.setdefault((record.head, record.partition), []).append((row, record.values))
        restored = 0
        for (head, partition), items in groups.items():
            index = np.asarray([r for r, _ in items], dtype=np.intp)
            fleet.import_rows(index, head, np.stack([v for _, v in items]), partition)
            restored += index.size
        self.rows_restored += restored
        self.last_restore_s = time.perf_counter() - started
        log.warning(
            "evidence: restored %d canaries of partitions %s in %.2fs",
            restored,
            sorted(wanted),
            self.last_restore_s,
        )
        return restored, resume

    async def _read_all(self) -> dict[bytes, bytes | None]:
        consumer = self._reader
        assert consumer is not None, "start() first"
        tps = [TopicPartition(self.topic, p) for p in range(self._partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        latest: dict[bytes, bytes | None] = {}
        # read_committed end offsets are the last stable offsets; a transaction that just
        # committed (the previous owner's last checkpoint) becomes readable when its markers
        # are written, a moment later: read until the stable end stops moving.
        deadline = time.monotonic() + RESTORE_SETTLE_S
        end = await consumer.end_offsets(tps)
        while True:
            pending = {tp for tp in tps if await consumer.position(tp) < end[tp]}
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
                for records in batches.values():
                    for r in records:
                        latest[r.key or b""] = r.value
                pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
            if time.monotonic() >= deadline:
                return latest
            await asyncio.sleep(SETTLE_POLL_S)
            again = await consumer.end_offsets(tps)
            if again == end:
                return latest
            end = again
