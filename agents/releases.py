"""The release agent (`canarywatch releases`): cohorts' evidence in, release halts and triage out.

Reads `<prefix>.summaries` (partitioned by release; `streams/releasefeed.py`) in the consumer
group `<app_id>-releases`: every member owns the releases of its partitions and keeps one
`ReleaseBoard` per partition. It never commits: on every assignment it re-reads its partitions
of `<prefix>.releases` (compacted: the latched halts) and of `<prefix>.summaries` (compacted:
the latest state and summary of every environment) from the beginning, so a restarted or new
member restores exactly what the previous owner knew. Every `release_evaluate_every_s` it
evaluates each board:

- a new halt (or a halted release whose cohort gained environments): with policy `abort` one
  abort command per environment in progress on `<prefix>.commands` (the per-revision decision
  id of `streams.events.decision_id_for`, so the actuator and the worker's dedup treat it like
  any other abort; `reason` ReleaseRegression, `extra` names the release decision and the
  triage `release`), sent before the verdict; then the `ReleaseVerdict` on `<prefix>.releases`
  (key: the release). Policy `notify`: the verdict only;
- the triage of every aborted environment of its cohorts, by whoever aborted it, on
  `<prefix>.triage` (key: the environment), logged and counted: the worker's own abort is never
  delayed by it;
- with `fleet_control = ebh`, the per-environment aborts e-BH selects (the worker sends none
  for canaries with a release then).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import asdict

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from agents.health import Heartbeat, Readiness, ReadyGauge, serve_health
from agents.kafka_admin import ensure_topics, partition_for_key
from agents.settings import Settings
from streams.events import (
    AbortCommand,
    DecodeError,
    Evidence,
    RolloutState,
    decision_id_for,
    encode_abort_command,
)
from streams.pooledpass import KEY_PREFIX, PooledPassSettings
from streams.release import (
    ReleaseBoard,
    ReleaseVerdict,
    TriageRecord,
    decode_release_verdict,
    encode_release_verdict,
    encode_triage,
)
from streams.releasefeed import FeedRecord, decode_feed_record

log = logging.getLogger("canarywatch.releases")

RELEASE_REASON = "ReleaseRegression"


def release_partition(release: str, partitions: int) -> int:
    """Where everything about a release goes: murmur2 of the release, as for a release key."""
    return partition_for_key(release.encode(), partitions)


class ReleaseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.halts = Counter(
            "canarywatch_release_halts",
            "Releases judged bad (one decision each), by the signal that decided.",
            ["signal"],
            registry=registry,
        )
        self.fanout = Counter(
            "canarywatch_release_abort_commands",
            "Abort commands sent by the release agent, by why (release halt, e-BH).",
            ["why"],
            registry=registry,
        )
        self.triage = Counter(
            "canarywatch_triage",
            "Triage of aborted canaries (latest category per abort), by category.",
            ["category"],
            registry=registry,
        )
        self.records = Counter(
            "canarywatch_release_feed_records",
            "Summaries-topic records read, by outcome (applied, refused).",
            ["outcome"],
            registry=registry,
        )
        self.cohort = Gauge(
            "canarywatch_release_environments",
            "Environments the boards of this member know.",
            registry=registry,
        )
        self.readiness = Readiness("release agent")
        self.ready = ReadyGauge(
            self.readiness,
            registry,
            "canarywatch_release_agent_ready",
            "1 while the release agent is ready: it has restored its partitions (see /readyz).",
        )
        for category in ("release", "environment", "platform", "undetermined"):
            self.triage.labels(category)


class _Partition:
    """One summaries partition: its board, the latest state per environment, summaries that
    came before their state, the end offset to reach before evaluating."""

    def __init__(self, agent: ReleaseAgent) -> None:
        self.board = ReleaseBoard(
            agent.settings.release,
            pass_settings=PooledPassSettings.from_promotion(agent.settings.promotion),
        )
        self.states: dict[str, RolloutState] = {}
        self.pending: dict[str, FeedRecord] = {}
        self.restored = False
        self.catch_up = 0
        self.sent: set[tuple[str, str]] = set()  # (env, pod hash) fanned out (or restored)
        self.announced: set[str] = set()  # releases whose halt was logged and counted

    def apply(self, record: FeedRecord) -> None:
        if record.kind == "state":
            assert record.state is not None
            state = record.state
            self.states[state.env] = state
            self.board.apply_state(state)
            waiting = self.pending.pop(state.env, None)
            if waiting is not None:
                self.apply(waiting)
        else:
            assert record.summary is not None
            if not self.board.apply_summary(record.summary):
                self.pending[record.summary.env] = record  # its state has not come yet


class ReleaseAgent:
    def __init__(
        self,
        settings: Settings,
        metrics: ReleaseMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self.partitions: dict[int, _Partition] = {}
        self.verdicts: list[ReleaseVerdict] = []  # published by this member (tests, demo)
        self.triaged: list[TriageRecord] = []
        self.commands: list[AbortCommand] = []
        self.passes = 0  # evaluations of restored partitions

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-releases"

    # -- restore -------------------------------------------------------------------------------

    async def _restore_halts(self, partitions: list[int]) -> None:
        """The latched halts of these partitions, from the compacted releases topic."""
        s = self.settings
        reader = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=s.topic_max_message_bytes,
        )
        await reader.start()
        try:
            tps = [TopicPartition(s.topics.releases, p) for p in partitions]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await reader.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        self._restore_halt(tp.partition, record)
                        if record.offset + 1 >= ends[tp]:
                            remaining.discard(tp)
        finally:
            await reader.stop()

    def _restore_halt(self, partition: int, record: ConsumerRecord[bytes, bytes]) -> None:
        if not record.value:
            return
        try:
            verdict = decode_release_verdict(record.value)
        except DecodeError as error:
            log.warning("releases topic %d@%d refused: %s", partition, record.offset, error)
            return
        part = self.partitions[partition]
        part.board._code(verdict.release)
        part.board.halted[verdict.release] = verdict
        part.sent.update(verdict.targets)
        part.announced.add(verdict.release)

    async def _on_assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        new = sorted(tp.partition for tp in assigned if tp.partition not in self.partitions)
        for p in new:
            self.partitions[p] = _Partition(self)
        if new:
            await self._restore_halts(new)
            tps = [TopicPartition(self.settings.topics.summaries, p) for p in new]
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                part = self.partitions[tp.partition]
                part.catch_up = ends[tp]
                part.restored = ends[tp] == 0
            await consumer.seek_to_beginning(*tps)
        log.info("release agent: partitions %s (new %s)", sorted(self.partitions), new)

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self.partitions.pop(tp.partition, None)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.topic_max_message_bytes,
            session_timeout_ms=s.request_session_timeout_ms,
            heartbeat_interval_ms=s.request_heartbeat_interval_ms,
        )
        agent = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                agent._on_revoked(revoked)

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                await agent._on_assigned(consumer, assigned)

        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap, acks="all", max_request_size=s.producer_max_request_size
        )
        await producer.start()
        try:
            consumer.subscribe([s.topics.summaries], listener=Listener())
            await consumer.start()
            try:
                next_pass = time.monotonic()
                while stop is None or not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                    for tp, records in batch.items():
                        self._apply(tp.partition, records)
                    self.metrics.ready.set(
                        int(bool(self.partitions))
                        * int(all(p.restored for p in self.partitions.values()))
                    )
                    if time.monotonic() >= next_pass:
                        next_pass = time.monotonic() + s.release_evaluate_every_s
                        await self.evaluate(producer)
            finally:
                self.metrics.ready.set(0)
                await consumer.stop()
        finally:
            await producer.stop()

    def _apply(self, partition: int, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        part = self.partitions.get(partition)
        if part is None:
            return
        for record in records:
            if record.offset + 1 >= part.catch_up:
                part.restored = True
            if not record.value:
                continue
            try:
                feed = decode_feed_record(record.value)
            except DecodeError as error:
                self.metrics.records.labels("refused").inc()
                log.warning("summaries %d@%d refused: %s", partition, record.offset, error)
                continue
            try:
                part.apply(feed)
            except ValueError as error:
                self.metrics.records.labels("refused").inc()
                log.warning("summaries %d@%d refused: %s", partition, record.offset, error)
                continue
            self.metrics.records.labels("applied").inc()

    async def evaluate(self, producer: AIOKafkaProducer) -> None:
        now = self._clock()
        self.metrics.cohort.set(sum(len(p.board.envs) for p in self.partitions.values()))
        for partition, part in list(self.partitions.items()):
            if not part.restored:
                continue  # never judge (or fan out) from half of what the previous owner knew
            result = part.board.evaluate(now)
            self.passes += 1
            for verdict in result.verdicts:
                await self._halt(producer, partition, part, verdict)
            for env, pod in result.ebh_aborts:
                state = part.states.get(env)
                if state is not None and state.current_pod_hash == pod:
                    await self._send_command(producer, self._ebh_command(part, state, now), "ebh")
            for record in result.triage:
                await producer.send_and_wait(
                    self.settings.topics.triage,
                    key=record.env.encode(),
                    value=encode_triage(record),
                )
                self.triaged.append(record)
                self.metrics.triage.labels(record.category.value).inc()
                log.warning("triage %s", record.describe())
            for release_pass in result.passes:
                # Beside the environments' snapshots: the gate lends it to quiet ones. A
                # record that does not go out is republished at the next refresh.
                try:
                    await producer.send_and_wait(
                        self.settings.topics.verdicts,
                        key=(KEY_PREFIX + release_pass.release).encode(),
                        value=release_pass.encode(),
                    )
                except Exception as exc:  # broker away: the halt path must keep running
                    log.warning("release pass %s not sent: %s", release_pass.release, exc)
                    part.board.pass_sent.pop(release_pass.release, None)

    async def _halt(
        self, producer: AIOKafkaProducer, partition: int, part: _Partition, verdict: ReleaseVerdict
    ) -> None:
        s = self.settings
        if verdict.release not in part.announced:
            part.announced.add(verdict.release)
            self.metrics.halts.labels(verdict.evidence.signal).inc()
            log.warning(
                "release halt %s (policy %s, %d environments): %s",
                verdict.decision_id,
                s.release_policy,
                len(verdict.targets),
                verdict.evidence.describe(),
            )
        if s.release_policy == "abort":
            for env, pod in verdict.targets:
                state = part.states.get(env)
                if (env, pod) in part.sent or state is None or state.current_pod_hash != pod:
                    continue
                await self._send_command(producer, fanout_command(verdict, state), "release")
                part.sent.add((env, pod))
        await producer.send_and_wait(
            s.topics.releases,
            key=verdict.release.encode(),
            value=encode_release_verdict(verdict),
            partition=partition,
        )
        self.verdicts.append(verdict)

    def _ebh_command(self, part: _Partition, state: RolloutState, now: float) -> AbortCommand:
        row = part.board.row_of[state.env]
        b = part.board
        return AbortCommand(
            decision_id=decision_id_for(
                state.namespace, state.name, state.current_pod_hash, state.cluster
            ),
            namespace=state.namespace,
            rollout=state.name,
            pod_hash=state.current_pod_hash,
            decided_at=now,
            evidence=Evidence(
                signal="errors" if b.log_e[0, row] >= b.log_e[1, row] else "latency",
                canary_requests=int(b.counts[0, row]),
                canary_bad=int(b.bad[0, :, row].max()),
                stable_requests=int(b.counts[1, row]),
                stable_bad=int(b.bad[1, :, row].max()),
                statistic=float(b.log_e[:, row].max()),
                threshold=float(b.settings.env_threshold),
                canary_share=_share(int(b.counts[0, row]), int(b.counts[1, row])),
                since_canary_start_s=0.0,
            ),
            release=state.release,
            reason="CanaryEbhSelected",
            extra={"fleet_control": "ebh", "fdr": f"{b.settings.fdr:g}"},
            cluster=state.cluster,
        )

    async def _send_command(
        self, producer: AIOKafkaProducer, command: AbortCommand, why: str
    ) -> None:
        await producer.send_and_wait(
            self.settings.topics.commands,
            key=command.namespace.encode(),
            value=encode_abort_command(command),
        )
        self.commands.append(command)
        self.metrics.fanout.labels(why).inc()
        log.warning(
            "abort %s (release %s, triage %s): %s",
            command.decision_id,
            command.release,
            command.extra.get("triage", "pending"),
            command.extra.get("release_evidence") or command.evidence.describe(),
        )


def _share(canary: int, stable: int) -> float:
    return canary / max(1, canary + stable)


def fanout_command(verdict: ReleaseVerdict, state: RolloutState) -> AbortCommand:
    """The abort of one environment of a halted release: its own revision's decision id (the
    actuator and the worker's dedup accept it; applying it twice is harmless), the release
    decision and the triage in `extra`."""
    ev = verdict.evidence
    return AbortCommand(
        decision_id=decision_id_for(
            state.namespace, state.name, state.current_pod_hash, state.cluster
        ),
        namespace=state.namespace,
        rollout=state.name,
        pod_hash=state.current_pod_hash,
        decided_at=verdict.decided_at,
        evidence=Evidence(
            signal=ev.signal,
            canary_requests=ev.canary_requests,
            canary_bad=ev.canary_bad,
            stable_requests=ev.stable_requests,
            stable_bad=ev.stable_bad,
            statistic=ev.statistic,
            threshold=ev.threshold,
            canary_share=_share(ev.canary_requests, ev.stable_requests),
            since_canary_start_s=0.0,
        ),
        release=verdict.release,
        reason=RELEASE_REASON,
        extra={
            "release_decision": verdict.decision_id,
            "triage": "release",
            "release_evidence": ev.describe()[:1000],
        },
        cluster=state.cluster,
    )


def verdict_json(verdict: ReleaseVerdict) -> str:
    return orjson.dumps(asdict(verdict)).decode()


async def ensure_release_topics(settings: Settings) -> None:
    # The verdicts topic also carries the releases' pooled passes (`release:<name>`).
    await ensure_topics(
        settings.bootstrap,
        {settings.topics.verdicts: settings.partitions},
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        replication_factor=settings.replication_factor,
    )
    await ensure_topics(
        settings.bootstrap,
        settings.topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes)},
        replication_factor=settings.replication_factor,
    )
    await ensure_topics(
        settings.bootstrap,
        settings.compacted_topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes), "cleanup.policy": "compact"},
        replication_factor=settings.replication_factor,
    )


def run_releases(settings: Settings) -> int:
    """`canarywatch releases`: metrics on `settings.metrics_port`, until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = CollectorRegistry()
    metrics = ReleaseMetrics(registry)
    heartbeat = Heartbeat()
    # /metrics, /healthz and /readyz on one port (deploy/ probes use the last two).
    serve_health(settings.metrics_port, registry, metrics.readiness, heartbeat)
    agent = ReleaseAgent(settings, metrics)
    log.info(
        "release agent: group %s, topic %s, policy %s, fleet control %s",
        agent.group_id,
        settings.topics.summaries,
        settings.release_policy,
        settings.release.fleet_control.value,
    )

    async def main() -> None:
        await ensure_release_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        pulse = loop.create_task(heartbeat.run())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await agent.run(stop)
        pulse.cancel()

    asyncio.run(main())
    return 0
