"""The running side of `make bench-hostile`: two workers in one group on the real broker, the corpus
sent, aborts and dead letters read back, probes, `kill -9` and takeover, RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.processes import WorkerProcess, free_port, poll_until, scrape
from agents.settings import Settings, Topics
from bench.hostile_corpus import COUNTED, PARTITIONS, Input, lines, namespace
from bench.procstats import rss_bytes
from streams.events import RolloutState, encode_rollout_state


@dataclass(slots=True)
class Sent:
    item: Input
    topic: str
    partition: int
    offset: int


class Harness:
    def __init__(self, bootstrap: str, work: Path) -> None:
        run = uuid.uuid4().hex[:6]
        self.bootstrap = bootstrap
        self.work = work
        self.topics = Topics(f"hostile-{run}")
        self.base = Settings(
            replication_factor=1,
            bootstrap=bootstrap,
            app_id=f"hostile-{run}",
            topics=self.topics,
            partitions=PARTITIONS,
        )
        self.workers: list[WorkerProcess] = []
        self.stopped: set[int] = set()  # indexes of workers stopped on purpose
        self._producers: dict[str | None, AIOKafkaProducer] = {}

    def topic(self, kind: str) -> str:
        return {
            "requests": self.topics.requests,
            "rollouts": self.topics.rollouts,
            "commands": self.topics.commands,
        }[kind]

    async def producer(self, compression: str | None = None) -> AIOKafkaProducer:
        if compression not in self._producers:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                compression_type=compression,
                max_request_size=64 << 20,
                linger_ms=5,
                acks="all",
            )
            await producer.start()
            self._producers[compression] = producer
        return self._producers[compression]

    async def close(self) -> None:
        for producer in self._producers.values():
            await producer.stop()
        for worker in self.workers:
            worker.stop()

    def start_worker(self, index: int) -> WorkerProcess:
        settings = self.base.with_overrides(
            metrics_port=free_port(), data_dir=self.work / f"w{index}"
        )
        starts = sum(1 for _ in self.work.glob(f"worker-{index}*.log"))
        name = f"worker-{index}.log" if not starts else f"worker-{index}-restart{starts}.log"
        worker = WorkerProcess(settings, self.work / name)
        worker.start()
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        self.stopped.discard(index)
        return worker

    def crashed(self) -> list[int]:
        return [
            i
            for i, w in enumerate(self.workers)
            if i not in self.stopped and w.returncode() is not None
        ]

    def counted(self, index: int) -> float:
        """Request lines worker `index` read, whatever became of them (counted, unattributed
        after the hold, refused): it is reading its partitions."""
        port = self.workers[index].settings.metrics_port
        samples = scrape(port, (COUNTED,))
        return sum(v for (n, _), v in samples.items() if n == COUNTED)

    def tracked(self, index: int) -> float:
        """Of the guarded fleet's canaries, how many worker `index` attributes lines to."""
        port = self.workers[index].settings.metrics_port
        value = scrape(port, ("canarywatch_canaries_in_progress",))
        return sum(value.values())

    async def send(self, item: Input) -> Sent:
        producer = await self.producer(item.compression)
        meta = await producer.send_and_wait(
            self.topic(item.topic), value=item.value, key=item.key, partition=item.partition
        )
        return Sent(item, meta.topic, meta.partition, meta.offset)

    async def send_many(self, items: Sequence[Input]) -> list[Sent]:
        out = []
        for item in items:
            out.append(await self.send(item))
        return out

    async def settled(self) -> None:
        ports = [w.settings.metrics_port for w in self.workers]

        def split() -> bool:
            parts = [
                sum(v for (n, _), v in scrape(p, ("canarywatch_ingest_partitions",)).items())
                for p in ports
            ]
            return sum(parts) == PARTITIONS and min(parts) >= 1

        await poll_until(split, 120, "workers to split the request-log partitions")


async def watch_aborts(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, dict[str, float]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", enable_auto_commit=False
    )
    await consumer.start()
    for tp in consumer.assignment():
        await consumer.position(tp)
    return consumer, {}


async def read_aborts(consumer: AIOKafkaConsumer, seen: dict[str, float]) -> None:
    for records in (await consumer.getmany(timeout_ms=100)).values():
        for record in records:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                seen.setdefault(
                    orjson.loads(record.value or b"{}").get("namespace", ""),
                    record.timestamp / 1000.0,
                )


BAD_EVERY_S = 0.25  # a broken canary's traffic, as it arrives: a message every quarter second


async def time_to_abort(
    h: Harness,
    consumer: AIOKafkaConsumer,
    seen: dict[str, float],
    env: int,
    partition: int | None = None,
    within_s: float = 300.0,
) -> float:
    """Seconds from the append of a broken canary's first bad lines to the append of its abort.

    The canary fails half its requests from then on, as a real broken release would, spread
    over time (the test counts a burst arriving at once as one event: docs/decisions.md).
    """
    first: Sent | None = None
    deadline = time.monotonic() + within_s
    next_send = time.monotonic()
    while namespace(env) not in seen and time.monotonic() < deadline:
        if len(h.crashed()) == len(h.workers):
            break  # nobody left to decide
        if time.monotonic() >= next_send:
            sent = await h.send(
                Input(
                    f"bad canary {env}",
                    "requests",
                    lines(env, 2, 8, 2),
                    namespace(env).encode(),
                    partition=partition,
                    refused=False,
                )
            )
            first = first or sent
            next_send += BAD_EVERY_S
        await read_aborts(consumer, seen)
    if first is None or namespace(env) not in seen:
        return float("nan")
    return seen[namespace(env)] - await append_time(h, first)


async def append_time(h: Harness, sent: Sent) -> float:
    """The broker's LogAppendTime of a sent record."""
    consumer = AIOKafkaConsumer(bootstrap_servers=h.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(sent.topic, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        while True:
            for records in (await consumer.getmany(tp, timeout_ms=500, max_records=1)).values():
                return float(records[0].timestamp) / 1000.0
    finally:
        await consumer.stop()


@dataclass(slots=True)
class DeadLetterView:
    """What the dead-letter topic holds: exact sources, and per source topic the number of
    records that the rate limit summarised instead of keeping one by one."""

    sources: set[str] = field(default_factory=set)
    suppressed: dict[str, int] = field(default_factory=dict)


async def read_deadletters(h: Harness, expected: int, within_s: float) -> DeadLetterView:
    consumer = AIOKafkaConsumer(
        h.topics.deadletter,
        bootstrap_servers=h.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=64 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    view = DeadLetterView()
    quiet_since = time.monotonic()
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            kept = len(view.sources) + sum(view.suppressed.values())
            if not batches and kept >= expected and time.monotonic() - quiet_since > 3:
                break
            for records in batches.values():
                quiet_since = time.monotonic()
                for record in records:
                    headers = {k: v.decode(errors="replace") for k, v in record.headers}
                    if "canarywatch.reason" not in headers:
                        continue
                    if "canarywatch.source" in headers:
                        view.sources.add(headers["canarywatch.source"])
                    if "canarywatch.suppressed" in headers:
                        topic = headers.get("canarywatch.source-topic", "")
                        count = int(headers["canarywatch.suppressed"])
                        view.suppressed[topic] = view.suppressed.get(topic, 0) + count
    finally:
        await consumer.stop()
    return view


def kept(refused: Sequence[Sent], view: DeadLetterView) -> list[Sent]:
    """The refused inputs not found: neither by their own source nor in a summary's count."""
    missing = [s for s in refused if f"{s.topic}/{s.partition}@{s.offset}" not in view.sources]
    budget = dict(view.suppressed)
    out = []
    for s in missing:
        if budget.get(s.topic, 0) > 0:
            budget[s.topic] -= 1
        else:
            out.append(s)
    return out


async def flood_snapshots(h: Harness, count: int) -> None:
    producer = await h.producer("lz4")
    now = time.time()
    for first in range(0, count, 20_000):
        futures = []
        for i in range(first, min(count, first + 20_000)):
            state = RolloutState(
                namespace=f"flood-{i:06d}",
                name="web",
                current_pod_hash=f"f{i:07x}",
                stable_hash=f"g{i:07x}",
                canary_weight=10,
                observed_at=now,
            )
            futures.append(
                await producer.send(
                    h.topics.rollouts,
                    key=state.namespace.encode(),
                    value=encode_rollout_state(state),
                )
            )
        await asyncio.gather(*futures)


async def probe(h: Harness, env: int, partition: int) -> None:
    """One healthy line of guarded environment `env`, placed on `partition`."""
    await h.send(
        Input(
            "probe",
            "requests",
            lines(env, 1, 4, 0),
            namespace(env).encode(),
            partition=partition,
            refused=False,
        )
    )


async def probe_counts(h: Harness, index: int, within_s: float = 60.0) -> bool:
    """Does worker `index` count a fresh line on some partition within `within_s`?"""
    before = h.counted(index)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for partition in range(PARTITIONS):
            await probe(h, 5, partition)
        with contextlib.suppress(TimeoutError):
            await poll_until(lambda: h.counted(index) > before, 2.0, "a probe counted")
            return True
    return False


async def partitions_of(h: Harness, index: int) -> list[int]:
    """Request-log partitions worker `index` counts, found by sending a line to each."""
    owned = []
    for partition in range(PARTITIONS):
        before = [h.counted(i) for i in range(len(h.workers))]
        await probe(h, 6, partition)

        def moved(before: list[float] = before) -> list[int]:
            return [i for i in range(len(h.workers)) if h.counted(i) > before[i]]

        try:
            counters = await poll_until(moved, 30, f"a worker to count partition {partition}")
        except TimeoutError:
            continue  # nobody reads it yet (a restarted worker still catching up): not probed
        if index in counters:
            owned.append(partition)
    return owned


async def takeover(h: Harness) -> float:
    """Seconds from `kill -9` of worker 1 to worker 0 counting worker 1's partitions."""
    dead: list[int] = []
    for _ in range(3):  # a group still settling after the restarts: look again
        with contextlib.suppress(TimeoutError):
            await h.settled()
        dead = await partitions_of(h, 1)
        if dead:
            break
    if not dead:
        return float("nan")
    before = h.counted(0)
    os.kill(h.workers[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    h.stopped.add(1)
    while time.monotonic() - killed < 120:
        for partition in dead:
            await probe(h, 7, partition)
        if h.counted(0) > before:
            return time.monotonic() - killed
        await asyncio.sleep(0.1)  # the probe's own pace, not a synchronisation
    return float("nan")


def worker_rss_mb(h: Harness) -> list[float]:
    """Each worker's resident MB; NaN for one that is gone."""
    out = []
    for worker in h.workers:
        try:
            out.append(rss_bytes(worker.pid) / 2**20)
        except FileNotFoundError:
            out.append(float("nan"))
    return out
