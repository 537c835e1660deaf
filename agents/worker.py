"""The Faust worker: rollout states into a table, request logs into counters, verdicts out.

- agent `track_rollouts`: rollout-state topic -> table `rollout-state` and the fleet's attribution;
- service `RequestLogIngest`: request-log topic -> the fleet's numpy counters (agents/ingest.py);
- timer `evaluate`: every `evaluate_every_s`, one vectorised pass; abort commands go out;
- agent `remember_decisions`: commands topic -> table `abort-decisions`, so that a restarted
  worker does not abort the same rollout revision twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT, StreamT
from mode.types.signals import BaseSignalT
from prometheus_client import CollectorRegistry

from agents.deadletter import DeadLetters, Headers
from agents.ingest import RequestLogIngest
from agents.kafka_admin import ensure_topics, partition_for_key
from agents.metrics import FleetCollector, WorkerMetrics, serve_metrics
from agents.settings import Settings, Topics
from agents.verdicts import VerdictPublisher
from streams.events import (
    DecodeError,
    decode_abort_command,
    decode_rollout_state,
    encode_abort_command,
)
from streams.fleet import Fleet

log = logging.getLogger("canarywatch.worker")

# Tracked objects allocated before a young collection: well above one fetch (50,000 records).
YOUNG_GENERATION = 200_000


@dataclass(frozen=True, slots=True)
class Worker:
    app: faust.App
    fleet: Fleet
    metrics: WorkerMetrics
    collector: FleetCollector | None = None


def build_worker(
    settings: Settings, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time
) -> Worker:
    s = settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.app_id,
        broker=f"kafka://{s.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(s.data_dir / s.app_id),
        web_enabled=False,
        topic_partitions=s.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=s.topic_max_message_bytes,
        broker_commit_every=100,
    )
    fleet = Fleet(
        s.decisions, s.window, max_message_bytes=s.max_message_bytes, promotion=s.promotion
    )
    metrics = WorkerMetrics(registry)
    collector = FleetCollector(lambda: fleet, text=True)  # per-env series: serve_metrics
    registry.register(collector)

    rollouts_topic = app.topic(s.topics.rollouts, key_type=bytes, value_type=bytes)
    commands_topic = app.topic(s.topics.commands, key_type=bytes, value_type=bytes)
    deadletter_topic = app.topic(s.topics.deadletter, key_type=bytes, value_type=bytes)
    verdicts_topic = app.topic(s.topics.verdicts, key_type=bytes, value_type=bytes)
    rollout_table = app.Table("rollout-state", key_type=bytes, value_type=bytes)
    decision_table = app.Table("abort-decisions", key_type=bytes, value_type=bytes)

    async def send_deadletter(key: bytes, value: bytes, headers: Headers) -> object:
        delivery = await deadletter_topic.send(key=key, value=value, headers=headers)
        return await delivery

    deadletters = DeadLetters(send_deadletter, metrics.deadletters)
    ingest = RequestLogIngest(s, fleet, deadletters, metrics, clock=clock, loop=app.loop)

    async def refuse(event: EventT[bytes], error: DecodeError) -> None:
        message = event.message
        await deadletters.publish(
            message.topic, message.partition, [(message.offset, event.value or b"", error)]
        )

    @app.agent(rollouts_topic)
    async def track_rollouts(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                state = decode_rollout_state(event.value or b"")
            except DecodeError as error:
                await refuse(event, error)
                continue
            # The table keeps only canaries in progress: all that attribution needs after a
            # restart or rebalance, so memory follows the canaries, not the fleet.
            if state.canary_in_progress:
                rollout_table[state.env.encode()] = event.value
            else:
                rollout_table.pop(state.env.encode(), None)
            fleet.apply_rollout(state, clock())
            metrics.rollout_states.inc()

    ingest_started = asyncio.Event()

    @rollout_table.on_recover
    async def follow_assignment() -> None:
        # After each rebalance: keep the environments of our rollout-state partitions (the
        # table may still hold keys written before a revocation), drop the others, then read
        # the request-log partitions that go with them.
        now = clock()
        partitions = {
            tp.partition for tp in app.consumer.assignment() if tp.topic == s.topics.rollouts
        }
        count = app.consumer.topic_partitions(s.topics.rollouts) or s.partitions
        states = [
            state
            for state in map(decode_rollout_state, rollout_table.values())
            if partition_for_key(state.namespace.encode(), count) in partitions
        ]
        fleet.retain({state.env for state in states})
        for state in states:
            fleet.apply_rollout(state, now)
        if not ingest_started.is_set():
            await app.add_runtime_dependency(ingest)  # stops with the app
            ingest_started.set()
        await ingest.follow(partitions)
        metrics.ready.set(1)

    async def pause_ingest(
        sender: object, /, *args: object, signal: BaseSignalT[Any], **kwargs: object
    ) -> None:
        if ingest_started.is_set():
            await ingest.follow(set())

    app.on_partitions_revoked.connect(pause_ingest)

    @app.agent(commands_topic)
    async def remember_decisions(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                command = decode_abort_command(event.value or b"")
            except DecodeError as error:
                await refuse(event, error)
                continue
            decision_table[command.decision_id.encode()] = b"%f" % command.decided_at
            fleet.decided.add(command.decision_id)

    @decision_table.on_recover
    async def restore_decisions() -> None:
        fleet.decided.update(key.decode() for key in decision_table)

    async def send_verdict(key: bytes, value: bytes) -> object:
        return await verdicts_topic.send(key=key, value=value)  # not awaited: next pass retries

    verdicts = VerdictPublisher(send_verdict, refresh_s=s.verdict_refresh_s)
    publishing: list[asyncio.Task[int]] = []

    def publish_verdicts(now: float) -> None:
        # Off the evaluation path: the abort must never wait for the verdict topic.
        if publishing and not publishing[0].done():
            return
        if publishing and not publishing[0].cancelled() and publishing[0].exception():
            log.warning("verdict snapshots: %s", publishing[0].exception())
        publishing[:] = [asyncio.ensure_future(verdicts.tick(fleet, now))]

    async def evaluate() -> None:
        started = time.perf_counter()
        now = clock()
        _, commands = fleet.evaluate(now)
        metrics.evaluation.observe(time.perf_counter() - started)
        publish_verdicts(now)  # the gate's pass/abort/inconclusive (agents/verdicts.py)
        for command in commands:
            delivery = await commands_topic.send(
                key=command.namespace.encode(), value=encode_abort_command(command)
            )
            await delivery
            metrics.aborts.labels(command.evidence.signal).inc()
            log.warning(
                "abort %s (release %s): %s",
                command.decision_id,
                command.release or "?",
                command.evidence.describe(),
            )

    app.timer(s.evaluate_every_s)(evaluate)
    return Worker(app=app, fleet=fleet, metrics=metrics, collector=collector)


async def ensure_verdict_topic(settings: Settings) -> None:
    """`<prefix>.verdicts`: compacted, the latest snapshot per env (agents/verdicts.py)."""
    await ensure_topics(
        settings.bootstrap,
        {settings.topics.verdicts: settings.partitions},
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    )


def check_copartitioned(topics: Topics, partitions: Mapping[str, int]) -> None:
    """Each worker reads the request-log partitions matching its rollout-state partitions."""
    requests, rollouts = partitions[topics.requests], partitions[topics.rollouts]
    if requests != rollouts:
        raise SystemExit(
            f"canarywatch: {topics.requests} has {requests} partitions and {topics.rollouts} "
            f"{rollouts}; they must match (both keyed by namespace), see docs/events.md"
        )


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM: metrics on `settings.metrics_port`, Faust worker in front."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # canarywatch's own topics; Faust declares its changelog topics itself.
    partitions = asyncio.run(
        ensure_topics(
            settings.bootstrap,
            settings.topic_partitions(),
            {"max.message.bytes": str(settings.topic_max_message_bytes)},
        )
    )
    check_copartitioned(settings.topics, partitions)
    asyncio.run(ensure_verdict_topic(settings))
    registry = CollectorRegistry()
    worker = build_worker(settings, registry)
    serve_metrics(settings.metrics_port, registry, worker.collector)
    tune_gc()
    faust.Worker(worker.app, loglevel="WARNING", quiet=True).execute_from_commandline()


def tune_gc() -> None:
    """Let aiokafka's per-message record objects die young.

    A fetch of one-line messages makes tens of thousands of record objects that live until their
    batch is counted. With Python's default thresholds (700 allocations) they are promoted in bulk
    and set off full collections over the whole worker heap: 28 % of the event loop's time in a
    py-spy profile of a worker draining one-line messages. A young generation larger than a
    fetched batch collects them as garbage instead; what was loaded at start-up is frozen out of
    the collections.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, 20, 20)
