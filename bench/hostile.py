"""`make bench-hostile`: a fixed hostile corpus against running workers on the real local broker.

Two workers in one group guard a small fleet. The corpus holds every kind of input that has
stopped a worker before (compressed batches, messages at and over the size limits, a gzip bomb,
rollout snapshots and commands with wrong types, a megabyte of `x\\n`, fuzzed bytes, lines placed
by a CRC32 partitioner, a flood of distinct snapshots). The run measures whether the workers
live through it, whether every refused input is kept in the dead-letter topic with a reason, how
much later a bad canary is aborted while the corpus is being read than on a quiet worker, how
much memory stays, and how fast a `kill -9`ed worker's partitions are counted again.

Nothing here is asserted; the last line is the summary:
`hostile: inputs=N crashes=C stuck_restarts=S deadlettered_ok=D abort_delay_ratio=R
rss_growth_mb=M takeover_s=T`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports
from agents.processes import WorkerProcess, free_port, poll_until, scrape
from agents.settings import Settings, Topics
from bench.throughput import rss_bytes
from streams.events import POD_HASH_LABEL, RolloutState, encode_rollout_state

PARTITIONS = 4
ENVS = 64  # the guarded fleet: env-000 ... env-063, each with a canary in progress
CODECS = ("gzip", "snappy", "lz4", "zstd")
FLOOD_SNAPSHOTS = 154_000
COUNTED = "canarywatch_request_lines_total"  # the sample name: a scrape filters by it


# --- the fleet and its traffic -----------------------------------------------------------------


def namespace(env: int) -> str:
    return f"env-{env:03d}"


def canary_state(env: int, now: float) -> RolloutState:
    return RolloutState(
        namespace=namespace(env),
        name="web",
        current_pod_hash=f"c{env:07x}",
        stable_hash=f"s{env:07x}",
        canary_weight=20,
        observed_at=now,
    )


def lines(env: int, canary_good: int, stable_good: int, canary_bad: int) -> bytes:
    """An NDJSON message of one environment's requests (now, both arms)."""
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
                "namespace": namespace(env),
                "pod": f"web-{pod_hash}-0",
                POD_HASH_LABEL: pod_hash,
                "status": status,
                "duration_ms": 20.0,
            }
        )
        out.extend([line] * count)
    return b"\n".join(out)


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's `consistent_random` for a non-empty key (Fluent Bit, Vector, kcat)."""
    return (zlib.crc32(key) & 0xFFFFFFFF) % partitions


# --- the corpus --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """One hostile message: where it goes, and whether the worker must refuse it."""

    label: str
    topic: str  # "requests" | "rollouts" | "commands"
    value: bytes | None
    key: bytes | None = b"k"
    compression: str | None = None
    partition: int | None = None
    refused: bool = True  # must end in the dead-letter topic (or be counted as skipped)


def bad_snapshots() -> list[tuple[str, bytes]]:
    """Rollout snapshots with wrong types, ranges or shapes."""
    good = orjson.loads(encode_rollout_state(canary_state(0, 1.7e9)))
    changes: list[tuple[str, object]] = [
        ("stable_hash", 5),
        ("stable_hash", ["s"]),
        ("current_pod_hash", {"a": 1}),
        ("namespace", ["s"]),
        ("namespace", "x" * 300),
        ("namespace", "Not_A_DNS_Label"),
        ("name", ""),
        ("name", 7),
        ("observed_at", "yesterday"),
        ("observed_at", 1e300),
        ("observed_at", -5),
        ("aborted", "false"),
        ("aborted", 1),
        ("canary_weight", 500),
        ("canary_weight", -1),
        ("canary_weight", "20"),
        ("canary_weight", True),
        ("step_index", "3"),
        ("step_index", -2),
        ("phase", 7),
        ("release", 123),
        ("release", "r" * 100_000),
        ("current_pod_hash", "h" * 5_000),
    ]
    out: list[tuple[str, bytes]] = []
    for name, value in changes:
        bad = dict(good, namespace=f"bad-{len(out)}")
        bad[name] = value
        out.append((f"snapshot {name}={str(value)[:20]}", orjson.dumps(bad)))
    for name in ("namespace", "name", "current_pod_hash"):
        missing = {k: v for k, v in good.items() if k != name}
        out.append((f"snapshot without {name}", orjson.dumps(missing)))
    return out


def bad_commands() -> list[tuple[str, bytes, bool]]:
    """Abort commands with wrong types or ranges (refused), and one with an unknown evidence
    key, which the documented rule ignores (a newer writer may add fields: docs/events.md)."""
    evidence = {
        "signal": "errors",
        "canary_requests": 100,
        "canary_bad": 9,
        "stable_requests": 400,
        "stable_bad": 0,
        "statistic": 6.0,
        "threshold": 5.3,
        "canary_share": 0.2,
        "since_canary_start_s": 30.0,
    }
    good = {
        "decision_id": "bad/web@c1",
        "namespace": "bad",
        "rollout": "web",
        "pod_hash": "c1",
        "decided_at": 1.7e9,
        "evidence": evidence,
    }
    changes: list[tuple[str, object]] = [
        ("evidence", None),
        ("evidence", {**evidence, "canary_bad": "nine"}),
        ("evidence", {**evidence, "canary_share": 1.5}),
        ("evidence", {**evidence, "statistic": "high"}),
        ("decided_at", "now"),
        ("pod_hash", 5),
        ("namespace", ""),
        ("rollout", ["web"]),
        ("extra", {"a": {"b": 1}}),
        ("reason", 9),
    ]
    out = []
    for name, value in changes:
        shown = value
        if isinstance(value, dict) and name == "evidence":  # the field that differs
            shown = {k: v for k, v in value.items() if evidence.get(k) != v}
        label = f"command {name}={str(shown)[:40]}"
        out.append((label, orjson.dumps({**good, name: value}), True))
    unknown = {**good, "evidence": {**evidence, "unknown": 1}}
    out.append(("command with an unknown evidence key", orjson.dumps(unknown), False))
    return out


def fuzzed(rng: np.random.Generator, count: int) -> list[bytes]:
    sizes = rng.integers(1, 2_000, count)
    return [rng.bytes(int(n)) for n in sizes]


def random_objects(rng: np.random.Generator, count: int) -> list[bytes]:
    """JSON objects of random keys and scalar values: valid JSON, never a valid event."""
    out = []
    for _ in range(count):
        n = int(rng.integers(0, 8))
        obj = {f"k{int(rng.integers(0, 99))}": float(rng.random()) for _ in range(n)}
        out.append(orjson.dumps(obj))
    return out


def corpus(settings: Settings, rng: np.random.Generator) -> list[Input]:
    limit = settings.max_message_bytes
    topic_limit = settings.topic_max_message_bytes
    items: list[Input] = []
    for codec in CODECS:
        items.append(
            Input(
                f"{codec} batch", "requests", lines(1, 80, 320, 0), b"env-001", codec, refused=False
            )
        )
        items.append(Input(f"{codec} not-json", "requests", b"{not json" * 50, b"k", codec))
        items.append(
            Input(
                f"{codec} snapshot",
                "rollouts",
                encode_rollout_state(canary_state(2, time.time())),
                b"env-002",
                codec,
                refused=False,
            )
        )
    # Sizes: just over the decode limit; just under the topic's limit; a gzip/zstd bomb.
    items.append(Input("over the decode limit", "requests", b"x" * (limit + 1)))
    items.append(Input("just under the topic limit", "requests", b"y" * (topic_limit - 4096)))
    bomb = b'{"ts":1,' + b" " * (50 << 20) + b"}"
    items.append(Input("gzip bomb 50 MB", "requests", bomb, compression="gzip"))
    items.append(Input("zstd bomb 50 MB", "requests", bomb, compression="zstd"))
    items.append(Input("snapshot bomb 50 MB", "rollouts", bomb, compression="gzip"))
    # Amplification: a megabyte of tiny bad lines, and of lines with a missing field.
    items.append(Input("1 MB of x lines", "requests", b"x\n" * (limit // 2)))
    items.append(Input("1 MB of {} lines", "requests", b"{}\n" * (limit // 3)))
    for label, value in bad_snapshots():
        items.append(Input(label, "rollouts", value, label.encode()[:50]))
    for label, value, refused in bad_commands():
        items.append(Input(label, "commands", value, refused=refused))
    for topic in ("requests", "rollouts", "commands"):
        for i, value in enumerate(fuzzed(rng, 60)):
            items.append(Input(f"fuzz {topic} {i}", topic, value))
        for i, value in enumerate(random_objects(rng, 10)):
            items.append(Input(f"random object {topic} {i}", topic, value))
        items.append(Input(f"deep nesting {topic}", topic, b"[" * 100_000))
        items.append(Input(f"tombstone {topic}", topic, None, refused=topic != "rollouts"))
        items.append(Input(f"empty {topic}", topic, b""))
    # Keys and partitions a misconfigured shipper would use: huge, absent, CRC32-placed.
    items.append(
        Input("100 KB key", "requests", lines(3, 20, 80, 0), b"k" * 100_000, refused=False)
    )
    items.append(Input("no key", "requests", lines(4, 20, 80, 0), None, refused=False))
    for env in range(8, 16):
        key = namespace(env).encode()
        items.append(
            Input(
                f"crc32-placed lines env {env}",
                "requests",
                lines(env, 20, 80, 0),
                key,
                partition=crc32_partition(key, PARTITIONS),
                refused=False,
            )
        )
    return items


# --- running it --------------------------------------------------------------------------------


@dataclass(slots=True)
class Sent:
    item: Input
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Outcome:
    inputs: int = 0
    refused: int = 0
    found: int = 0
    crashes: int = 0
    stuck_restarts: int = 0
    quiet_abort_s: list[float] = field(default_factory=list)
    hostile_abort_s: float = float("nan")
    crc32_abort_s: float = float("nan")
    rss_growth_mb: float = 0.0
    takeover_s: float = float("nan")
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


async def run(bootstrap: str, work: Path, seed: int) -> Outcome:
    rng = np.random.default_rng(seed)
    h = Harness(bootstrap, work)
    out = Outcome()
    limit = h.base.topic_max_message_bytes
    topic_config = {"message.timestamp.type": "LogAppendTime", "max.message.bytes": str(limit)}
    await ensure_topics(bootstrap, h.base.topic_partitions(), topic_config)
    try:
        now = time.time()
        await h.send_many(
            [
                Input(
                    "state",
                    "rollouts",
                    encode_rollout_state(canary_state(e, now)),
                    namespace(e).encode(),
                    refused=False,
                )
                for e in range(ENVS)
            ]
        )
        for i in range(2):
            h.start_worker(i)
        for worker in h.workers:
            await worker.wait_ready(within_s=180)
        await h.settled()
        consumer, seen = await watch_aborts(bootstrap, h.topics.commands)
        # Warm-up: every canary healthy so far; then the quiet worker's time to abort.
        await h.send_many(
            [
                Input(
                    "warm", "requests", lines(e, 100, 400, 0), namespace(e).encode(), refused=False
                )
                for e in range(ENVS)
            ]
        )
        for env in (20, 21, 22):
            out.quiet_abort_s.append(await time_to_abort(h, consumer, seen, env))
        print(f"quiet worker: abort after {out.quiet_abort_s} s", flush=True)
        rss_before = worker_rss_mb(h)
        # The corpus, then a flood of snapshots, then a bad canary right behind them.
        items = corpus(h.base, rng)
        started = time.monotonic()
        sent = await h.send_many(items)
        await flood_snapshots(h, FLOOD_SNAPSHOTS)
        print(
            f"corpus: {len(items)} inputs and {FLOOD_SNAPSHOTS:,} snapshots sent in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        out.hostile_abort_s = await time_to_abort(h, consumer, seen, 30)
        crc_key = namespace(31).encode()
        out.crc32_abort_s = await time_to_abort(
            h, consumer, seen, 31, partition=crc32_partition(crc_key, PARTITIONS)
        )
        print(
            f"during the corpus: abort after {out.hostile_abort_s:.2f} s; "
            f"crc32-placed bad canary after {out.crc32_abort_s:.2f} s",
            flush=True,
        )
        out.inputs = len(items) + 1  # the flood counts as one input
        refused = [s for s in sent if s.item.refused]
        out.refused = len(refused)
        view = await read_deadletters(h, out.refused, within_s=120)
        lost = kept(refused, view)
        out.found = out.refused - len(lost)
        out.missing = [s.item.label for s in lost]
        skipped = sum(
            v
            for w in h.workers
            for (n, _), v in scrape(
                w.settings.metrics_port, ("canarywatch_skipped_records_total",)
            ).items()
        )
        out.found = min(out.refused, out.found + int(skipped))
        rss_after = worker_rss_mb(h)
        growth = [a - b for a, b in zip(rss_after, rss_before, strict=True)]
        out.rss_growth_mb = max(growth) if all(g == g for g in growth) else float("nan")
        out.crashes += len(h.crashed())
        # Restarts with every hostile input still in the topics: a clean stop, then kill -9.
        for index, how in ((0, signal.SIGTERM), (1, signal.SIGKILL)):
            h.stopped.add(index)
            if how == signal.SIGKILL:
                os.kill(h.workers[index].pid, signal.SIGKILL)
            h.workers[index].stop()
            h.start_worker(index)
            try:
                await h.workers[index].wait_ready(within_s=120)
                ok = await probe_counts(h, index)
            except (RuntimeError, TimeoutError) as error:
                out.notes.append(f"restart {index}: {str(error).splitlines()[0]}")
                ok = False
            out.stuck_restarts += not ok
        try:
            await h.settled()
        except TimeoutError as error:
            out.notes.append(f"after the restarts: {error}")
        out.notes.append(
            "after the restarts each worker attributes lines to "
            + ", ".join(f"{h.tracked(i):.0f}" for i in range(len(h.workers)))
            + f" canaries (cap {h.base.limits.max_canaries:,}; {ENVS} guarded + the flood)"
        )
        try:
            out.takeover_s = await takeover(h)
        except TimeoutError as error:
            out.notes.append(f"takeover not measured: {error}")
        out.crashes += len(h.crashed())
        await consumer.stop()
    finally:
        await h.close()
    return out


def print_report(out: Outcome) -> None:
    quiet = statistics.median(out.quiet_abort_s) if out.quiet_abort_s else float("nan")
    ratio = out.hostile_abort_s / quiet if quiet > 0 else float("nan")
    share = out.found / out.refused if out.refused else float("nan")
    rows: Iterable[tuple[str, str, str]] = (
        ("inputs in the corpus (flood = 1)", f"{out.inputs}", ">= 200"),
        ("worker exits", f"{out.crashes}", "0"),
        ("restarts that die again or count nothing", f"{out.stuck_restarts}", "0"),
        ("refused inputs kept with a reason", f"{out.found}/{out.refused} = {share:.3f}", "1"),
        ("abort on a quiet worker (median of 3)", f"{quiet:.2f} s", ""),
        ("abort right behind the corpus", f"{out.hostile_abort_s:.2f} s (x{ratio:.2f})", "<= x3"),
        ("bad canary placed by CRC32", f"{out.crc32_abort_s:.2f} s", "aborted"),
        ("RSS growth, worst worker", f"{out.rss_growth_mb:.0f} MB", "<= 200"),
        ("kill -9 to the survivor counting", f"{out.takeover_s:.1f} s", "<= 10"),
    )
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"  {name:<{width}}  {value:<24} {goal}")
    for label in out.missing[:20]:
        print(f"  not in the dead-letter topic: {label}")
    for note in out.notes:
        print(f"  {note}")
    print(
        f"hostile: inputs={out.inputs} crashes={out.crashes} stuck_restarts={out.stuck_restarts} "
        f"deadlettered_ok={share:.3f} abort_delay_ratio={ratio:.2f} "
        f"rss_growth_mb={out.rss_growth_mb:.0f} takeover_s={out.takeover_s:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", help="an already running broker (default: start one)")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--logs", type=Path, help="copy the workers' logs here at the end")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canarywatch-hostile-") as tmp:
        work = Path(tmp)
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            port, controller = free_ports(2)
            broker = LocalKafka(work / "kafka", port, controller)
            broker.start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            out = asyncio.run(run(bootstrap, work, args.seed))
        finally:
            if broker is not None:
                broker.stop()
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in work.glob("worker-*.log"):
                    shutil.copy(log, args.logs / log.name)
    print_report(out)


if __name__ == "__main__":
    main()
