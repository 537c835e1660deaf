"""The release agent (`canarywatch releases`): a Faust agent keyed by release over the cohorts'
evidence, its state in a table; release halts, fan-out aborts and triage out.

- agent `cohorts`: `<prefix>.summaries` (partitioned by release: `streams/releasefeed.py`) ->
  one `ReleaseBoard` per partition, and every record, validated, into the table
  `release-cohorts` (Faust app `<app_id>-releases`, compacted changelog of the same partition,
  replication factor `settings.replication_factor`). Members of the group split the partitions
  as workers do; each owns the releases of its partitions;
- the same table latches what was done: `halt|<release>` (the verdict as published),
  `sent|<env>|<pod>|<release>` (every fan-out or e-BH abort, written once Kafka acknowledged
  the command), `triage|<env>|<release>` (the triage as published). After a rebalance or a
  restart Faust restores the table from its changelog; the boards are rebuilt from it (states,
  then summaries, then halts and triage), so the new owner knows what the previous one knew
  and did: it decides nothing twice and sends nothing twice;
- timer every `release_evaluate_every_s` (never while rebalancing): each board is evaluated
  and what is decided but not yet done is done: with policy `abort` one abort command per
  environment of a halted release in progress (decision id `decision_id_for` with the canary's
  decision epoch, as the worker's own; `reason` ReleaseRegression, `extra` names the release
  decision and the triage `release`), then the `ReleaseVerdict` on `<prefix>.releases` (key:
  the release) once all its commands are acknowledged; policy `notify`: the verdict only. The
  triage of every aborted environment goes to `<prefix>.triage` (key: the environment), logged
  and counted. With `fleet_control = ebh`, the per-environment aborts e-BH selects.

A send that fails is retried by the next pass (nothing is marked done before its ack). The one
window left: a member killed between a command's ack and its table entry's ack; its successor
sends that command again, with the same decision id, which the actuator applies once.

Code: this module is the Faust app and `canarywatch releases`; the agent's logic is
`agents/releaseagent.py` (`ReleaseAgent`, `ReleaseMetrics`), its commands
`streams/releasecommands.py`, its core `streams/releaseboard.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import faust
import orjson
from prometheus_client import CollectorRegistry

from agents.health import Heartbeat, serve_health
from agents.kafka_admin import ensure_topics, ensure_verdict_topic
from agents.logfilter import quiet_kafka_clients
from agents.releaseagent import ReleaseAgent, ReleaseMetrics
from agents.settings import Settings
from streams.releasefeed import encode_feed_record
from streams.releaserecords import ReleaseVerdict

log = logging.getLogger("canarywatch.releases")

TABLE = "release-cohorts"


def verdict_json(verdict: ReleaseVerdict) -> str:
    return orjson.dumps(asdict(verdict)).decode()


async def ensure_release_topics(settings: Settings) -> None:
    # The verdicts topic also carries the releases' pooled passes (`release:<name>`).
    await ensure_verdict_topic(settings)
    await ensure_topics(
        settings.bootstrap,
        settings.topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes)},
        replication_factor=settings.replication_factor,
        auth=settings.kafka,
    )
    await ensure_topics(
        settings.bootstrap,
        settings.compacted_topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes), "cleanup.policy": "compact"},
        replication_factor=settings.replication_factor,
        auth=settings.kafka,
    )


@dataclass(frozen=True, slots=True)
class ReleaseApp:
    app: faust.App
    agent: ReleaseAgent
    metrics: ReleaseMetrics
    heartbeat: Heartbeat


def build_release_app(
    settings: Settings, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time
) -> ReleaseApp:
    """The Faust app `<app_id>-releases`: agent, table, timer (see the module docstring)."""
    s = settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    app_id = f"{s.app_id}-releases"
    app = faust.App(
        app_id,
        broker=f"kafka://{s.bootstrap}",
        broker_credentials=s.kafka.faust_credentials(),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(s.data_dir / app_id),
        web_enabled=False,
        # The table's changelog has as many partitions as the summaries topic (Faust checks).
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=s.producer_max_request_size,
        broker_session_timeout=s.broker_session_timeout_s,
        broker_heartbeat_interval=s.broker_heartbeat_interval_s,
    )
    metrics = ReleaseMetrics(registry)
    topics = {
        name: app.topic(name, key_type=bytes, value_type=bytes)
        for name in (
            s.topics.summaries,
            s.topics.commands,
            s.topics.releases,
            s.topics.triage,
            s.topics.verdicts,
        )
    }
    table = app.Table(
        TABLE,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs={"max.message.bytes": str(s.topic_max_message_bytes)},
    )

    async def send(topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        delivery = await asyncio.wait_for(
            topics[topic].send(key=key, value=value, partition=partition), s.send_timeout_s
        )
        await asyncio.wait_for(delivery, s.send_timeout_s)

    async def put(partition: int, key: bytes, value: bytes) -> None:
        # From the timer, outside stream iteration: the entry goes to its release's partition
        # of the changelog (the partition it is restored with), and into the local store.
        table.data[key] = value
        delivery = await asyncio.wait_for(
            table.changelog_topic.send(key=key, value=value, partition=partition),
            s.send_timeout_s,
        )
        await asyncio.wait_for(delivery, s.send_timeout_s)

    agent = ReleaseAgent(s, metrics, send, put, clock=clock)
    heartbeat = Heartbeat()
    app.task(heartbeat.run)

    @app.agent(topics[s.topics.summaries])
    async def cohorts(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            record = agent.apply(message.partition, message.offset, event.value or b"")
            if record is not None:  # into the table, on this event's (its release's) partition
                table[record.key] = encode_feed_record(record)

    @table.on_recover
    async def restored() -> None:
        owned = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == s.topics.summaries
        }
        agent.restore(owned, list(table.data.items()))

    @app.on_partitions_revoked.connect
    async def revoked(*args: object, **kwargs: object) -> None:
        agent.revoke()

    async def evaluate() -> None:
        if app.rebalancing:
            return
        await agent.evaluate()

    app.timer(s.release_evaluate_every_s)(evaluate)
    return ReleaseApp(app=app, agent=agent, metrics=metrics, heartbeat=heartbeat)


def run_releases(settings: Settings) -> int:
    """`canarywatch releases`: metrics on `settings.metrics_port`, until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(ensure_release_topics(settings))
    registry = CollectorRegistry()
    release_app = build_release_app(settings, registry)
    # /metrics, /healthz and /readyz on one port (deploy/ probes use the last two).
    serve_health(
        settings.metrics_port, registry, release_app.metrics.readiness, release_app.heartbeat
    )
    log.info(
        "release agent: group %s, topic %s, policy %s, fleet control %s",
        release_app.app.conf.id,
        settings.topics.summaries,
        settings.release_policy,
        settings.release.fleet_control.value,
    )
    quiet_kafka_clients()
    faust.Worker(release_app.app, loglevel="WARNING", quiet=True).execute_from_commandline()
    return 0
