"""The release agent's logic (agents/releases.py runs it in a Faust app): one `ReleaseBoard` per
summaries partition it owns, rebuilt from the table after a rebalance; each pass decides, then
sends what is decided and not yet done, and latches it in the table. Sends, table writes and
the clock are passed in; `ReleaseMetrics` counts what it does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from agents.health import Readiness, ReadyGauge
from agents.kafka_admin import partition_for_key
from agents.settings import Settings
from streams.events import (
    AbortCommand,
    DecodeError,
    RolloutState,
    decode_abort_command,
    encode_abort_command,
)
from streams.pooledpass import KEY_PREFIX, PooledPassSettings
from streams.releaseboard import ReleaseBoard
from streams.releasecommands import ebh_command, fanout_command
from streams.releasefeed import FeedRecord, decode_feed_record
from streams.releaserecords import (
    ReleaseVerdict,
    TriageRecord,
    decode_release_verdict,
    decode_triage,
    encode_release_verdict,
    encode_triage,
)

log = logging.getLogger("canarywatch.releases")

# Sends to a topic and returns once Kafka acknowledged: (topic, key, value, partition or None).
Send = Callable[[str, bytes, bytes, int | None], Awaitable[None]]
# Writes a table entry to its changelog partition and returns once acknowledged.
Put = Callable[[int, bytes, bytes], Awaitable[None]]


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
        self.send_failures = Counter(
            "canarywatch_release_send_failures",
            "Sends (commands, verdicts, triage, table entries) not acknowledged; the next pass "
            "retries them.",
            registry=registry,
        )
        self.cohort = Gauge(
            "canarywatch_release_environments",
            "Environments the boards of this member know.",
            registry=registry,
        )
        self.partitions = Gauge(
            "canarywatch_release_partitions",
            "Summaries partitions (and so releases) this member owns.",
            registry=registry,
        )
        self.passes = Counter(
            "canarywatch_release_passes",
            "Evaluation passes over every board of this member, completed with what they sent.",
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


def _sent_key(command: AbortCommand) -> bytes:
    return f"sent|{command.env}|{command.pod_hash}|{command.release}".encode()


def _halt_key(release: str) -> bytes:
    return f"halt|{release}".encode()


def _triage_key(record: TriageRecord) -> bytes:
    return f"triage|{record.env}|{record.release}".encode()


class _Partition:
    """One summaries partition: its board, the latest state per environment, summaries that
    came before their state, and what was done (as the table says)."""

    def __init__(self, agent: ReleaseAgent) -> None:
        self.board = ReleaseBoard(
            agent.settings.release,
            pass_settings=PooledPassSettings.from_promotion(agent.settings.promotion),
        )
        self.states: dict[str, RolloutState] = {}
        self.pending: dict[str, FeedRecord] = {}
        self.sent: set[tuple[str, str]] = set()  # (env, pod hash) aborted by a release agent
        self.published: dict[str, int] = {}  # release -> targets of the verdict published
        self.triage_done: dict[str, tuple[str, str]] = {}  # env -> (pod hash, category)
        self.ebh_wanted: set[tuple[str, str]] = set()

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

    def wants_abort(self, env: str, pod: str) -> RolloutState | None:
        """The state to abort, if `env` still runs that canary revision and nobody aborted it."""
        if (env, pod) in self.sent:
            return None
        state = self.states.get(env)
        row = self.board.row_of.get(env)
        if state is None or row is None or state.current_pod_hash != pod:
            return None
        if not state.canary_in_progress or self.board.aborted[row]:
            return None
        return state


class ReleaseAgent:
    """The cohorts of the partitions this member owns: what the Faust app feeds and restores,
    with its sends and table writes passed in (`send`, `put`) and the clock."""

    def __init__(
        self,
        settings: Settings,
        metrics: ReleaseMetrics,
        send: Send,
        put: Put,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._send = send
        self._put = put
        self._clock = clock
        self.partitions: dict[int, _Partition] = {}
        self.restored = False
        self.generation = 0  # one per restore: a pass stops when a rebalance began under it

    # -- restore -------------------------------------------------------------------------------

    def revoke(self) -> None:
        """A rebalance began: evaluate nothing until the table is restored again."""
        self.restored = False
        self.generation += 1
        self.metrics.ready.set(0)

    def restore(self, partitions: Iterable[int], table: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild the boards of `partitions` from the table's entries (any order)."""
        owned = set(partitions)
        n = self.settings.partitions
        self.generation += 1
        self.partitions = {p: _Partition(self) for p in sorted(owned)}
        feed: list[tuple[int, FeedRecord]] = []
        halts: list[tuple[int, ReleaseVerdict]] = []
        sent: list[tuple[int, AbortCommand]] = []
        triaged: list[tuple[int, TriageRecord]] = []
        for key, value in table:
            if not value:
                continue
            kind = key.split(b"|", 1)[0]
            try:
                if kind in (b"state", b"summary"):
                    record = decode_feed_record(value)
                    feed.append((release_partition(record.release, n), record))
                elif kind == b"halt":
                    verdict = decode_release_verdict(value)
                    halts.append((release_partition(verdict.release, n), verdict))
                elif kind == b"sent":
                    command = decode_abort_command(value)
                    sent.append((release_partition(command.release, n), command))
                elif kind == b"triage":
                    triage = decode_triage(value)
                    triaged.append((release_partition(triage.release, n), triage))
            except DecodeError as error:
                log.warning("table entry %r refused: %s", key[:80], error)
        feed.sort(key=lambda item: item[1].kind != "state")  # states first, then summaries
        for p, record in feed:
            if p in owned:
                self._apply_record(self.partitions[p], record)
        for p, verdict in halts:
            if p in owned:
                self.partitions[p].board.restore_halt(verdict)
                self.partitions[p].published[verdict.release] = len(verdict.targets)
        for p, command in sent:
            if p in owned:
                self.partitions[p].sent.add((command.env, command.pod_hash))
                self.partitions[p].board.ebh_done.add(f"{command.env}@{command.pod_hash}")
        for p, triage in triaged:
            if p in owned and self.partitions[p].board.restore_triage(triage):
                self.partitions[p].triage_done[triage.env] = (
                    triage.pod_hash,
                    triage.category.value,
                )
        self.restored = True
        self.metrics.partitions.set(len(owned))
        self.metrics.ready.set(int(bool(owned)))
        log.info(
            "release agent: partitions %s restored (%d records, %d halts, %d commands sent)",
            sorted(owned),
            len(feed),
            len(halts),
            len(sent),
        )

    # -- the stream ----------------------------------------------------------------------------

    def apply(self, partition: int, offset: int, raw: bytes) -> FeedRecord | None:
        """One summaries record: applied to its board; returned (validated) for the table."""
        if not raw:
            return None
        try:
            record = decode_feed_record(raw)
        except DecodeError as error:
            self.metrics.records.labels("refused").inc()
            log.warning("summaries %d@%d refused: %s", partition, offset, error)
            return None
        part = self.partitions.get(partition)
        if part is None:
            part = self.partitions[partition] = _Partition(self)
        if not self._apply_record(part, record):
            log.warning("summaries %d@%d refused: does not fit the board", partition, offset)
            return None
        return record

    def _apply_record(self, part: _Partition, record: FeedRecord) -> bool:
        try:
            part.apply(record)
        except ValueError:
            self.metrics.records.labels("refused").inc()
            return False
        self.metrics.records.labels("applied").inc()
        return True

    # -- the pass ------------------------------------------------------------------------------

    async def evaluate(self) -> None:
        """One pass over every board: decide, then do what is decided and not yet done."""
        if not self.restored:
            return  # never judge (or fan out) from half of what the previous owner knew
        generation = self.generation
        now = self._clock()
        self.metrics.cohort.set(sum(len(p.board.envs) for p in self.partitions.values()))
        for partition, part in list(self.partitions.items()):
            if self.generation != generation:
                return  # a rebalance began: the new owner does the rest
            await self._pass(partition, part, now, generation)
        self.metrics.passes.inc()

    async def _pass(self, partition: int, part: _Partition, now: float, generation: int) -> None:
        s = self.settings
        result = part.board.evaluate(now)
        for release_pass in result.passes:
            # Beside the environments' snapshots: the gate lends it to quiet ones. A record
            # that does not go out is republished at the next refresh.
            try:
                await self._send(
                    s.topics.verdicts,
                    (KEY_PREFIX + release_pass.release).encode(),
                    release_pass.encode(),
                    None,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: the halt path must keep running
                self.metrics.send_failures.inc()
                log.warning("release pass %s not sent: %r", release_pass.release, exc)
                part.board.pass_sent.pop(release_pass.release, None)
        for verdict in result.verdicts:
            if verdict.release not in part.published:
                part.published[verdict.release] = -1  # decided here: announced once
                self.metrics.halts.labels(verdict.evidence.signal).inc()
                log.warning(
                    "release halt %s (policy %s, %d environments): %s",
                    verdict.decision_id,
                    s.release_policy,
                    len(verdict.targets),
                    verdict.evidence.describe(),
                )
        commands: list[tuple[AbortCommand, str]] = []
        if s.release_policy == "abort":
            for verdict in part.board.halted.values():
                for env, pod in verdict.targets:
                    state = part.wants_abort(env, pod)
                    if state is not None:
                        commands.append((fanout_command(verdict, state), "release"))
        part.ebh_wanted.update(result.ebh_aborts)
        halting = {c.env for c, _ in commands}
        for env, pod in sorted(part.ebh_wanted):
            state = part.wants_abort(env, pod)
            if state is None:
                part.ebh_wanted.discard((env, pod))
            elif env not in halting:
                commands.append((ebh_command(part.board, state, now), "ebh"))
        if not await self._send_commands(partition, part, commands, generation):
            return  # the verdicts wait until every command of theirs is acknowledged
        for release, verdict in list(part.board.halted.items()):
            if part.published.get(release) == len(verdict.targets):
                continue
            if self.generation != generation or not await self._deliver(
                (s.topics.releases, release.encode(), encode_release_verdict(verdict), partition),
                (partition, _halt_key(release), encode_release_verdict(verdict)),
            ):
                return
            part.published[release] = len(verdict.targets)
        for env, record in list(part.board.triaged.items()):
            done = (record.pod_hash, record.category.value)
            if part.triage_done.get(env) == done:
                continue
            if self.generation != generation or not await self._deliver(
                (s.topics.triage, env.encode(), encode_triage(record), None),
                (partition, _triage_key(record), encode_triage(record)),
            ):
                return
            part.triage_done[env] = done
            self.metrics.triage.labels(record.category.value).inc()
            log.warning("triage %s", record.describe())

    async def _deliver(
        self, message: tuple[str, bytes, bytes, int | None], entry: tuple[int, bytes, bytes]
    ) -> bool:
        """Send, then latch it in the table: False (counted, logged) if either is not acked."""
        try:
            await self._send(*message)
            await self._put(*entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.send_failures.inc()
            log.warning("release agent: %s not delivered (next pass retries): %r", message[0], exc)
            return False
        return True

    async def _send_commands(
        self,
        partition: int,
        part: _Partition,
        commands: list[tuple[AbortCommand, str]],
        generation: int,
    ) -> bool:
        if not commands or self.generation != generation:
            return self.generation == generation
        topic = self.settings.topics.commands

        async def one(command: AbortCommand, why: str) -> bool:
            value = encode_abort_command(command)
            ok = await self._deliver(
                (topic, command.namespace.encode(), value, None),
                (partition, _sent_key(command), value),
            )
            if ok:
                part.sent.add((command.env, command.pod_hash))
                self.metrics.fanout.labels(why).inc()
                log.warning(
                    "abort %s (release %s, triage %s): %s",
                    command.decision_id,
                    command.release,
                    command.extra.get("triage", "pending"),
                    command.extra.get("release_evidence") or command.evidence.describe(),
                )
            return ok

        results = await asyncio.gather(*(one(c, why) for c, why in commands))
        return all(results)
