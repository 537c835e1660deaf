"""The Faust worker: rollout states into a table, request logs into counters, verdicts out.

- agent `track_rollouts`: rollout-state topic -> validated -> table `rollout-state` (only
  canaries in progress; bad snapshots are dead-lettered, never stored);
- service `RolloutView`: the table's changelog, every partition -> the fleet's attribution, so
  every worker knows every canary in progress (agents/view.py); ready once it is restored;
- service `RequestLogIngest`: request-log topic (its own consumer group, any partitioner) ->
  the fleet's numpy counters (agents/ingest.py), started once the view is restored;
- timer `evaluate` (agents/passes.py, from the view's restore on): every `evaluate_every_s`, one
  vectorised pass; abort commands go out once the view has read every decision sent;
- agent `remember_decisions`: commands topic -> table `abort-decisions`, whose changelog the
  view reads, so that no worker, restarted or not, aborts the same rollout revision twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import faust
from faust.types import EventT, StreamT
from prometheus_client import CollectorRegistry

from agents.deadletter import DeadLetterLimits, DeadLetters, Headers
from agents.episodes import Episodes
from agents.health import Heartbeat, serve_health
from agents.ingest import RequestLogIngest
from agents.kafka_admin import ensure_topics, ensure_verdict_topic
from agents.logfilter import quiet_kafka_clients
from agents.metrics import FleetCollector, WorkerMetrics, metrics_app
from agents.passes import EvaluationTimer
from agents.releases import ensure_release_topics
from agents.settings import Settings
from agents.summaries import SummaryPublisher
from agents.unreadable import counting, guard_faust_fetches
from agents.verdicts import VerdictPublisher
from agents.view import RolloutView
from streams.events import (
    DecodeError,
    RolloutState,
    decode_abort_command,
    decode_rollout_state,
    encode_abort_command,
    encode_rollout_state,
    epoch_of,
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
    heartbeat: Heartbeat
    collector: FleetCollector | None = None


def build_worker(
    settings: Settings, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time
) -> Worker:
    s = settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.app_id,
        broker=f"kafka://{s.bootstrap}",
        broker_credentials=s.kafka.faust_credentials(),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(s.data_dir / s.app_id),
        web_enabled=False,
        topic_partitions=s.partitions,
        # Every topic Faust creates (its changelogs included) is replicated this many times.
        topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest",
        # Dead letters and changelog writes fit their topics (streams/sizes.py).
        producer_max_request_size=s.producer_max_request_size,
        broker_commit_every=100,
        # A worker killed with -9 gives its partitions up after this (docs/operating.md).
        broker_session_timeout=s.broker_session_timeout_s,
        broker_heartbeat_interval=s.broker_heartbeat_interval_s,
        # No standby copies: every worker already holds every canary in progress (agents/view.py),
        # and a standby copy of the other workers' rollout-state partitions doubled that memory
        # under a flood of snapshots (docs/performance.md). A takeover recovers the partitions
        # from their compacted changelog instead.
        table_standby_replicas=0,
    )
    fleet = Fleet(
        s.decisions,
        s.window,
        max_message_bytes=s.max_message_bytes,
        max_bad_lines=s.deadletter_lines_per_message,
        limits=s.limits,
        promotion=s.promotion,
        event_time=s.event_time,
    )
    metrics = WorkerMetrics(registry)
    collector = FleetCollector(lambda: fleet, s.max_env_series)  # text: metrics_app
    registry.register(collector)
    # A record Faust's consumer cannot read is skipped, not the end of its Fetcher.
    guard_faust_fetches(counting(metrics.skipped_records))

    rollouts_topic = app.topic(s.topics.rollouts, key_type=bytes, value_type=bytes)
    commands_topic = app.topic(s.topics.commands, key_type=bytes, value_type=bytes)
    deadletter_topic = app.topic(s.topics.deadletter, key_type=bytes, value_type=bytes)
    verdicts_topic = app.topic(s.topics.verdicts, key_type=bytes, value_type=bytes)
    changelog_config = {"max.message.bytes": str(s.topic_max_message_bytes)}
    rollout_table = app.Table(
        "rollout-state", key_type=bytes, value_type=bytes, extra_topic_configs=changelog_config
    )
    decision_table = app.Table(
        "abort-decisions", key_type=bytes, value_type=bytes, extra_topic_configs=changelog_config
    )

    async def send_deadletter(key: bytes, value: bytes, headers: Headers) -> object:
        # Queued in the producer; DeadLetters awaits the deliveries of a batch together.
        return await deadletter_topic.send(key=key, value=value, headers=headers)

    deadletters = DeadLetters(
        send_deadletter,
        metrics.deadletters,
        suppressed=metrics.deadletters_suppressed,
        sizes=s.sizes,
        limits=DeadLetterLimits(
            s.deadletter_rate_per_s, s.deadletter_burst, s.deadletter_summary_every_s
        ),
    )
    summaries = SummaryPublisher(s, fleet, app)  # release-level analysis (agents/summaries.py)
    ingest = RequestLogIngest(s, fleet, deadletters, metrics, clock=clock, loop=app.loop)
    metrics.readiness.probe("fetch", ingest.fetch_problem)
    heartbeat = Heartbeat()
    app.task(heartbeat.run)  # /healthz: the event loop still turns

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
                await refuse(event, error)  # never stored: the view never sees it
                continue
            # The table keeps only canaries in progress, re-encoded from the validated state:
            # its compacted changelog is the view every worker reads (agents/view.py).
            key = state.env.encode()
            previous = rollout_table.get(key)
            if state.canary_in_progress:  # with its epoch: the release agent's ids carry it
                state = with_epoch(state, previous)
            await summaries.forward_state(
                decode_rollout_state(previous) if previous else None, state
            )
            if state.canary_in_progress:
                rollout_table[key] = encode_rollout_state(state)
            else:
                rollout_table.pop(key, None)  # a tombstone on the changelog

    # Set once the view has read every decision id of the `abort-decisions` changelog: until
    # then an abort reached is held (every pass returns it again), as it may have been sent
    # before the restart, by this worker or another.
    decisions_known = asyncio.Event()

    async def view_restored() -> None:
        decisions_known.set()
        await app.add_runtime_dependency(ingest)  # stops with the app
        await app.add_runtime_dependency(evaluation)  # not a Faust timer (agents/passes.py)
        metrics.set_ready()

    view = RolloutView(
        s,
        fleet,
        metrics,
        rollout_table.changelog_topic.get_topic_name(),
        on_restored=view_restored,
        decisions_topic=decision_table.changelog_topic.get_topic_name(),
        clock=clock,
        loop=app.loop,
    )

    # Started with the app, not as an app task: Faust starts its tasks only once its own
    # tables are recovered, and a restarting worker would load the view, join the request-log
    # group and restore its evidence only after that. Loading meanwhile is safe: no abort goes
    # out before the view has read every decision (`evaluate`; docs/performance.md, resume).
    app.add_dependency(view)

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

    sends = Episodes("commands", metrics)

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
        released = fleet.release_held(now)  # lines whose hold ran out are counted unattributed
        metrics.count_lines(released.counted, released.unattributed, 0)
        # A decision is made once Kafka acknowledged its command: until then every pass
        # returns it again, so a send that failed is retried; the worker keeps running.
        _, commands = fleet.evaluate(now, await_delivery=True)
        metrics.evaluation.observe(time.perf_counter() - started)
        publish_verdicts(now)  # the gate's pass/abort/inconclusive (agents/verdicts.py)
        if commands and not decisions_known.is_set():
            return  # the view has not read every decision yet: held, the next pass retries
        if commands and not sends.due(time.monotonic()):
            return  # backing off after a failed send
        for command in commands:
            if not summaries.own_abort(command):
                fleet.delivered(command)  # the release agent decides it (FLEET_CONTROL=ebh)
                continue
            try:
                delivery = await asyncio.wait_for(
                    commands_topic.send(
                        key=command.namespace.encode(), value=encode_abort_command(command)
                    ),
                    s.send_timeout_s,
                )
                await asyncio.wait_for(delivery, s.send_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                sends.failed(exc, time.monotonic())
                return
            sends.ok()
            fleet.delivered(command)
            metrics.aborts.labels(command.evidence.signal).inc()
            log.warning(
                "abort %s (release %s): %s",
                command.decision_id,
                command.release or "?",
                command.evidence.describe(),
            )

    evaluation = EvaluationTimer(evaluate, s.evaluate_every_s)  # started with ingestion

    async def publish_summaries() -> None:
        await summaries.publish(clock())

    app.timer(s.summary_every_s)(publish_summaries)
    return Worker(app=app, fleet=fleet, metrics=metrics, heartbeat=heartbeat, collector=collector)


def with_epoch(state: RolloutState, stored: bytes | None) -> RolloutState:
    """The snapshot with its decision epoch: the stored canary's, when the same revision is
    still in progress in the table; a new one (`epoch_of`) when the canary starts (again: a
    retry after an abort removed it from the table)."""
    if stored is not None:
        try:
            old = decode_rollout_state(stored)
        except DecodeError:
            old = None
        if (
            old is not None
            and old.epoch
            and old.current_pod_hash == state.current_pod_hash
            and old.stable_hash == state.stable_hash
        ):
            return replace(state, epoch=old.epoch)
    return replace(state, epoch=epoch_of(state))


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM: metrics on `settings.metrics_port`, Faust worker in front."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # canarywatch's own topics; Faust declares its changelog topics itself.
    asyncio.run(
        ensure_topics(
            settings.bootstrap,
            settings.topic_partitions(),
            {"max.message.bytes": str(settings.topic_max_message_bytes)},
            replication_factor=settings.replication_factor,
            auth=settings.kafka,
        )
    )
    asyncio.run(ensure_verdict_topic(settings))
    asyncio.run(ensure_release_topics(settings))
    registry = CollectorRegistry()
    worker = build_worker(settings, registry)
    # /metrics, /healthz and /readyz on one port (deploy/ probes use the last two); the
    # per-canary series rendered as text from the arrays (metrics_app).
    serve_health(
        settings.metrics_port,
        registry,
        worker.metrics.readiness,
        worker.heartbeat,
        metrics=metrics_app(registry, worker.collector),
    )
    quiet_kafka_clients()
    tune_gc()
    runner = faust.Worker(worker.app, loglevel="WARNING", quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG to turn on every record: each
    # debug call of aiokafka and of Faust's table recovery then builds a LogRecord (6 % of a
    # restarting worker's samples in py-spy, docs/performance.md). No spinner, no DEBUG.
    runner.spinner = None
    runner.execute_from_commandline()


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
