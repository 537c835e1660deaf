"""The actuator: abort commands from Kafka become `status.abort=true` on Argo Rollouts.

What a command does is the Rollout's policy (`streams.rollouts.Action`): `Settings.action_policy`
(abort, pause or dry-run), overridden by the Rollout's `canarywatch.io/policy` annotation as read
just before the patch. Pause merge-patches `{"spec":{"paused":true}}`; dry-run patches nothing and
records a Normal Event `CanarywatchDryRun`. An abort is applied as `kubectl argo rollouts abort`
applies it: a JSON merge patch `{"status":{"abort":true}}` on the Rollout's `status` subresource,
on the main resource only when the subresource answers 404 (controllers older than the
subresource). Before patching, the Rollout is read: a command whose canary is no longer the one in
progress (moved on, promoted, already aborted) is skipped (`streams.rollouts.judge_abort`), and so
is one about a canary that was aborted and retried since the decision (its Events,
`streams.rollouts.aborted_since`), or one older than `Settings.command_ttl_s`. While the controller
has not reconciled a spec change (`observedGeneration` behind `generation`) the actuator waits. The
patch carries the `metadata.resourceVersion` the judgement was made on, so it is refused (409) if
the Rollout changed in between; the actuator then reads and judges again. After the patch, a
Warning Event `CanarywatchAbort` on the Rollout carries the evidence, so `kubectl describe rollout`
says why.

Why aiokafka and not Faust here: the actuator needs commit-after-apply. Faust acknowledges
events and commits offsets on its own schedule; with aiokafka and `enable_auto_commit=False`, a
command's offset is committed only once its patch succeeded or it was judged moot (stale, not
found) or unusable (dead-lettered), and every command before it in its partition too. Commands
about different Rollouts are handled at once (`Settings.actuator_concurrency` per partition),
one Rollout's in order (agents/inflight.py); the consumer keeps polling meanwhile. A crash or
restart at any point re-delivers the commands not yet committed, and applying one again is
harmless: the second read sees `abort: true` and skips. 409, 429, 5xx and unreachable API
servers are retried with exponential backoff and jitter (Retry-After honoured); a command still
failing after `RetryPolicy.budget_s` is deferred (counted) and tried again, at most
`Settings.max_deferrals` times, then dead-lettered.

The Kubernetes calls sit behind `RolloutApi`; `KubeRolloutApi` is the real one (synchronous
kubernetes client, called on the actuator's own `actuator_concurrency` threads).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram

from agents.deadletter import DeadLetters, Headers, deadletter_counter
from agents.health import Heartbeat, Readiness, ReadyGauge, serve_health
from agents.inflight import InFlight
from agents.kafka_admin import ensure_topics
from agents.kubeclient import kube_api_client
from agents.rolloutapi import CONFLICT, KubeError, KubeRolloutApi, RolloutApi
from agents.settings import Settings
from agents.unreadable import counting, getmany_skipping, skipped_counter
from streams.actuation import (
    RetryPolicy,
    abort_event,
    triage_note,
)
from streams.events import AbortCommand, DecodeError, decode_abort_command
from streams.rollouts import (
    POLICY_ANNOTATION,
    AbortVerdict,
    Action,
    Rollout,
    aborted_since,
    canary_lags_revision,
    judge_abort,
    policy_of,
    resource_version,
    revision_of,
)

log = logging.getLogger("canarywatch.actuator")


class Outcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    EXPIRED = "expired"  # decided longer ago than Settings.command_ttl_s: never applied
    OTHER_CLUSTER = "other_cluster"  # names another cluster than Settings.cluster: not ours
    NOT_FOUND = "not_found"
    DRY_RUN = "dry_run"
    FAILED = "failed"  # a non-retryable answer (403, 422, ...): dead-lettered, committed
    DEFERRED = "deferred"  # retry budget spent: not committed, tried again
    # deferred more than Settings.max_deferrals times: dead-lettered with the API's last answer,
    # committed (alert CanarywatchActuatorGaveUp: a bad canary was not acted on)
    GAVE_UP = "gave_up"
    INVALID = "invalid"  # not a command: dead-lettered, committed


READ_AHEAD_PER_SLOT = 4  # commands read ahead of a partition: this many per slot at most
STOP_GRACE_S = 5.0  # on stop, the commands in flight get this long to finish (and commit)


# --- metrics ------------------------------------------------------------------------------


class ActuatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.skipped_records = skipped_counter(registry)
        self.commands = Counter(
            "canarywatch_actuator_commands",
            "Abort commands handled, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "canarywatch_actuator_retries",
            "API calls retried, by HTTP status (0: no answer).",
            ["status"],
            registry=registry,
        )
        self.events = Counter(
            "canarywatch_actuator_events",
            "Kubernetes Events on aborted Rollouts, by outcome (recorded, exists, failed).",
            ["outcome"],
            registry=registry,
        )
        self.decision_to_abort = Histogram(
            "canarywatch_actuator_decision_to_abort_seconds",
            "From the worker's decision to the applied patch.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=registry,
        )
        self.deadletters = deadletter_counter(registry)
        # At 0 from the start, so that increase() sees the first failure after a restart.
        for outcome in Outcome:
            self.commands.labels(outcome.value)
        for outcome_name in ("recorded", "exists", "failed"):
            self.events.labels(outcome_name)
        self.readiness = Readiness("actuator")
        self.ready = ReadyGauge(
            self.readiness,
            registry,
            "canarywatch_actuator_ready",
            "1 while the actuator is ready: it consumes commands (see /readyz).",
        )


# --- the actuator -----------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    outcome: Outcome
    detail: str = ""
    action: Action | None = None  # the Rollout's policy, once it was read


Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class Actuator:
    """Applies abort commands; `handle` needs no Kafka, `run` is the consumer loop."""

    def __init__(
        self,
        settings: Settings,
        api: RolloutApi,
        metrics: ActuatorMetrics,
        *,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self._on_skip = counting(metrics.skipped_records)
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rand = rand
        self.instance = instance or socket.gethostname()
        self.concurrency = max(1, settings.actuator_concurrency)
        # The API calls' threads: as many as commands may be in progress in a partition (the
        # default executor has min(32, CPUs + 4), shared with the rest of the process).
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="actuator")

    @property
    def group_id(self) -> str:
        """`<app_id>-actuator`, `-<cluster>` appended when the cluster is named: the actuators
        of two clusters reading one commands topic must not share its partitions (each would
        commit, as `other_cluster`, commands the other one never saw)."""
        cluster = self.settings.cluster
        return f"{self.settings.app_id}-actuator" + (f"-{cluster}" if cluster else "")

    async def handle(self, command: AbortCommand) -> Result:
        """Read, judge, patch, record: retried as a whole on retryable errors."""
        age = self._wall_clock() - command.decided_at
        refused: Result | None = None
        if command.cluster != self.settings.cluster:
            ours = self.settings.cluster or "(unnamed)"
            theirs = command.cluster or "(unnamed)"
            refused = Result(Outcome.OTHER_CLUSTER, f"for cluster {theirs}, this is {ours}")
        elif age > self.settings.command_ttl_s:
            refused = Result(
                Outcome.EXPIRED,
                f"decided {age:.0f}s ago, more than the TTL of {self.settings.command_ttl_s:g}s",
            )
        if refused is not None:
            self.metrics.commands.labels(refused.outcome.value).inc()
            self._log(command, refused)
            return refused
        started = self._clock()
        attempt = 0
        patch_sent = False
        while True:
            try:
                result = await self._attempt(command, patch_sent)
                break
            except _Unreconciled as wait:
                why, label, retry_after, retryable = wait.why, "unreconciled", None, True
            except _Conflict as conflict:  # 409: nothing was written; read and judge afresh
                why, label, retry_after, retryable = str(conflict.error), str(CONFLICT), None, True
            except _PatchSent as sent:
                patch_sent = True
                error = sent.error
                why, label, retry_after = str(error), str(error.status), error.retry_after
                retryable = self.policy.retryable(error.status)
            except KubeError as error:
                why, label, retry_after = str(error), str(error.status), error.retry_after
                retryable = self.policy.retryable(error.status)
            if not retryable:
                result = Result(Outcome.FAILED, why)
                break
            delay = self.policy.delay(attempt, retry_after, self._rand())
            if self._clock() + delay - started > self.policy.budget_s:
                result = Result(Outcome.DEFERRED, why)
                break
            self.metrics.retries.labels(label).inc()
            log.warning("%s: %s; retry %d in %.2fs", command.decision_id, why, attempt + 1, delay)
            await self._sleep(delay)
            attempt += 1
        self.metrics.commands.labels(result.outcome.value).inc()
        self._log(command, result)
        return result

    async def _attempt(self, command: AbortCommand, patch_sent: bool) -> Result:
        rollout = await self._call(self.api.get_rollout, command.namespace, command.rollout)
        # The policy of the Rollout as read now, the read the patch is conditional on.
        action, note = policy_of(rollout, self.settings.action_policy)
        if note:
            log.warning("%s/%s: %s", command.namespace, command.rollout, note)
        judgement = judge_abort(command.pod_hash, rollout, pause=action is Action.PAUSE)
        if judgement.verdict is AbortVerdict.NOT_FOUND:
            return Result(Outcome.NOT_FOUND, judgement.why)
        if judgement.verdict is AbortVerdict.UNRECONCILED:
            raise _Unreconciled(judgement.why)
        assert rollout is not None
        if judgement.verdict is AbortVerdict.STALE:
            if not (patch_sent and judgement.already_aborted):
                return Result(Outcome.STALE, judgement.why, action)
            # Our earlier patch went through but its answer was lost: finish the job.
        else:
            lag, retried = await self._lag_and_retry(command, rollout)
            if lag:
                raise _Unreconciled(lag)
            if retried:
                return Result(
                    Outcome.STALE, f"{retried}; the canary was retried or resumed since", action
                )
            if action is Action.DRY_RUN:
                await self._record_event(command, rollout, action)
                return Result(Outcome.DRY_RUN, judgement.why, action)
            patch = self.api.pause_rollout if action is Action.PAUSE else self.api.abort_rollout
            try:
                found = await self._call(
                    patch, command.namespace, command.rollout, resource_version(rollout)
                )
            except KubeError as exc:
                if exc.status == CONFLICT:
                    raise _Conflict(exc) from exc
                raise _PatchSent(exc) from exc
            if not found:
                return Result(Outcome.NOT_FOUND, "the Rollout disappeared before the patch")
        self.metrics.decision_to_abort.observe(max(0.0, self._wall_clock() - command.decided_at))
        await self._record_event(command, rollout, action)
        return Result(Outcome.APPLIED, judgement.why, action)

    async def _lag_and_retry(
        self, command: AbortCommand, rollout: Rollout
    ) -> tuple[str | None, str | None]:
        """`_canary_lags` and `_aborted_since_decision`, read at once: one API round trip
        before the patch instead of two (a lag is answered first: wait, then judge again)."""
        lag, retried = await asyncio.gather(
            self._canary_lags(command, rollout), self._aborted_since_decision(command, rollout)
        )
        return lag, retried

    async def _canary_lags(self, command: AbortCommand, rollout: Rollout) -> str | None:
        """Is `currentPodHash` behind the Rollout's revision? (Argo names a Rollout's
        ReplicaSets `<rollout>-<pod hash>`.)"""
        if not revision_of(rollout):
            return None
        canary = f"{command.rollout}-{command.pod_hash}"
        revision = await self._call(self.api.replica_set_revision, command.namespace, canary)
        return canary_lags_revision(rollout, revision)

    async def _aborted_since_decision(self, command: AbortCommand, rollout: Rollout) -> str | None:
        """An abort of this Rollout after the command was decided (then undone by `retry`)."""
        uid = rollout.get("metadata", {}).get("uid", "")
        events = await self._call(self.api.rollout_events, command.namespace, command.rollout, uid)
        return aborted_since(events, command.decided_at)

    async def _record_event(self, command: AbortCommand, rollout: Rollout, action: Action) -> None:
        """Best effort, retried a few times: the abort is done whatever happens here."""
        now = datetime.fromtimestamp(self._wall_clock(), UTC)
        event = abort_event(command, rollout, now, self.instance, action)
        for attempt in range(self.policy.event_attempts):
            try:
                created = await self._call(self.api.record_event, command.namespace, event)
            except KubeError as exc:
                last_try = attempt + 1 == self.policy.event_attempts
                if not self.policy.retryable(exc.status) or last_try:
                    self.metrics.events.labels("failed").inc()
                    log.error("%s: could not record the Event: %s", command.decision_id, exc)
                    return
                self.metrics.retries.labels(str(exc.status)).inc()
                await self._sleep(self.policy.delay(attempt, exc.retry_after, self._rand()))
                continue
            self.metrics.events.labels("recorded" if created else "exists").inc()
            return

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a blocking API call) on the actuator's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def _log(self, command: AbortCommand, result: Result) -> None:
        where = f"{command.env} canary {command.pod_hash} ({command.decision_id})"
        action = result.action or self.settings.action_policy
        verb = "paused" if action is Action.PAUSE else "aborted"
        if result.outcome is Outcome.APPLIED:
            log.warning(
                "%s %s: %s%s", verb, where, command.evidence.describe(), triage_note(command)
            )
        elif result.outcome is Outcome.DRY_RUN:
            log.warning("dry run: would abort %s: %s", where, command.evidence.describe())
        elif result.outcome in (Outcome.FAILED, Outcome.DEFERRED):
            log.error("%s %s: %s", result.outcome.value, where, result.detail)
        else:
            log.info("skipped %s: %s", where, result.detail)

    # -- Kafka -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume the commands topic until `stop` is set or the task is cancelled."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            **s.kafka.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.topic_max_message_bytes,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            acks="all",
            max_request_size=s.producer_max_request_size,
            **s.kafka.client_options(),
        )

        async def commit(tp: TopicPartition, offset: int) -> bool:
            try:
                await consumer.commit({tp: offset})
                return True
            except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
                # The partition went to another member, which re-reads the command: harmless.
                log.warning(
                    "commit %s@%d failed (%s); leaving it to the new owner", tp, offset, exc
                )
                return False

        read_ahead = READ_AHEAD_PER_SLOT * self.concurrency
        inflight = InFlight(commit, concurrency=self.concurrency, read_ahead=read_ahead)
        await producer.start()
        try:
            await consumer.start()
            consumer.subscribe([s.topics.commands], listener=_Revoked(inflight))
            try:
                self.metrics.ready.set(1)
                while stop is None or not stop.is_set():
                    inflight.check()
                    _pace(consumer, inflight)
                    batch = await getmany_skipping(
                        consumer, self._on_skip, timeout_ms=200, max_records=read_ahead
                    )
                    for tp, records in batch.items():
                        for record in records:
                            key, work = self._work(producer, record)
                            inflight.submit(tp, record.offset, key, work)
                await inflight.drain(STOP_GRACE_S)
            finally:
                self.metrics.ready.set(0)
                await inflight.cancel()
                await consumer.stop()
        finally:
            await producer.stop()

    def _work(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes]
    ) -> tuple[tuple[str, str, str] | None, Callable[[], Awaitable[None]]]:
        """The record's key for ordering (its Rollout) and what handling it takes."""
        try:
            command = decode_abort_command(record.value or b"")
        except DecodeError as error:
            return None, partial(self._refuse, producer, record, error)
        key = (command.cluster, command.namespace, command.rollout)
        return key, partial(self._apply, producer, record, command)

    async def _refuse(
        self,
        producer: AIOKafkaProducer,
        record: ConsumerRecord[bytes, bytes],
        error: DecodeError,
    ) -> None:
        self.metrics.commands.labels(Outcome.INVALID.value).inc()
        await self._deadletter(producer, record, error)

    async def _apply(
        self,
        producer: AIOKafkaProducer,
        record: ConsumerRecord[bytes, bytes],
        command: AbortCommand,
    ) -> None:
        """Handle the command until it is done: deferred, it is tried again, at most
        `max_deferrals` times; then, or when it failed, it is dead-lettered."""
        deferrals = 0
        while (result := await self.handle(command)).outcome is Outcome.DEFERRED:
            deferrals += 1
            if deferrals > self.settings.max_deferrals:
                self.metrics.commands.labels(Outcome.GAVE_UP.value).inc()
                why = f"deferred {deferrals} times; the last answer: {result.detail}"
                log.error("gave up on %s: %s", command.decision_id, why)
                await self._deadletter(producer, record, DecodeError("deferred", why))
                return
        if result.outcome is Outcome.FAILED:
            await self._deadletter(producer, record, DecodeError("apply_failed", result.detail))

    async def _deadletter(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes], error: DecodeError
    ) -> None:
        async def send(key: bytes, value: bytes, headers: Headers) -> object:
            return await producer.send_and_wait(
                self.settings.topics.deadletter, key=key, value=value, headers=headers
            )

        await DeadLetters(send, self.metrics.deadletters, sizes=self.settings.sizes).publish(
            record.topic, record.partition, [(record.offset, record.value or b"", error)]
        )


class _Unreconciled(Exception):
    """The controller has not reconciled the Rollout's spec yet: judge again later."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Conflict(Exception):
    """The abort patch was refused (409): the Rollout changed since it was judged."""

    def __init__(self, error: KubeError) -> None:
        super().__init__(str(error))
        self.error = error


class _PatchSent(Exception):
    """The abort patch failed after it was sent: it may have been applied."""

    def __init__(self, error: KubeError) -> None:
        super().__init__(str(error))
        self.error = error


class _Revoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions taken away in a rebalance commit nothing more here."""

    def __init__(self, inflight: InFlight) -> None:
        self.inflight = inflight

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.inflight.revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


def _pace(consumer: AIOKafkaConsumer, inflight: InFlight) -> None:
    """Pause reading a partition while `read_ahead` of its commands are in flight."""
    paused = consumer.paused()
    for tp in consumer.assignment():
        full = inflight.full(tp)
        if full and tp not in paused:
            consumer.pause(tp)
        elif not full and tp in paused:
            consumer.resume(tp)


def run_actuator(
    settings: Settings,
    *,
    kubeconfig: str | None = None,
) -> int:
    """`canarywatch actuator`: metrics on `settings.metrics_port`, until SIGINT/SIGTERM."""
    # One connection per thread of the actuator, a few for the triage notifier. First: a
    # kubeconfig that cannot be loaded ends the command before it serves anything.
    api_client = kube_api_client(kubeconfig, connections=settings.actuator_concurrency + 4)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = CollectorRegistry()
    metrics = ActuatorMetrics(registry)
    heartbeat = Heartbeat()
    # /metrics, /healthz and /readyz on one port (deploy/ probes use the last two).
    serve_health(settings.metrics_port, registry, metrics.readiness, heartbeat)
    actuator = Actuator(settings, KubeRolloutApi(api_client), metrics)
    log.info(
        "actuator: group %s, topic %s, policy %s (a Rollout's %s annotation overrides it)",
        actuator.group_id,
        settings.topics.commands,
        settings.action_policy.value,
        POLICY_ANNOTATION,
    )

    async def main() -> None:
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
            {
                "max.message.bytes": str(settings.topic_max_message_bytes),
                "cleanup.policy": "compact",
            },
            replication_factor=settings.replication_factor,
            auth=settings.kafka,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        pulse = loop.create_task(heartbeat.run())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        from agents.triagenotify import TriageNotifier  # imports this module

        notifier = TriageNotifier(settings, actuator.api, registry, actuator.instance)
        await asyncio.gather(actuator.run(stop), notifier.run(stop))
        pulse.cancel()

    try:
        asyncio.run(main())
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    return 0
