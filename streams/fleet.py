"""The analyzer's pure core in one object: rollout states and request logs in, abort commands out.

`Fleet` composes attribution (hash -> row and arm), the window counters, the decision
engine and the promotion test (`streams.promotion`: the `pass` verdict, in its own object,
`Fleet.promotion`, fed the same increments as the engine). The Faust worker
(agents/worker.py) feeds it bytes and the time, and sends what it returns; everything here is
testable without Kafka.

Bounds (`FleetLimits`): at most `max_canaries` canaries are tracked (a new canary over the cap
is refused and counted in `refused_canaries`, until a later snapshot of it finds room, or until
its request lines arrive: a refused canary waits (its last snapshot, at most `max_waiting` of
them), and the first of its lines that no tracked canary claims admits it in place of an idle one,
a tracked canary that has not counted a line since it started, oldest admitted first
(`evicted_canaries`; it waits in turn and comes back the same way). A flood of snapshots nobody
sends traffic for cannot keep a real canary out); request
lines whose (namespace, hash) no tracked canary has yet are held for up to `hold_s` seconds of
processing time (the `now` passed in) and at most `hold_lines` lines, and looked up again at
each count and by `release_held` (after new canaries started): a line that arrives shortly
before its canary's snapshot is counted, not thrown away. Lines still unattributed after the
hold, or that find the hold full, are reported `unattributed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from streams.attribution import NOT_ATTRIBUTED, Attribution
from streams.decisions import (
    SIGNALS,
    DecisionEngine,
    DecisionSettings,
    PassResult,
    Verdict,
    bad_series,
)
from streams.events import (
    MAX_MESSAGE_BYTES,
    AbortCommand,
    DecodeError,
    Evidence,
    RolloutState,
    decision_id_for,
)
from streams.eventtime import REASONS, ClosedSlices, EventTimeSettings, SliceRing
from streams.promotion import (
    ABORT,
    INCONCLUSIVE,
    PASS,
    PromotionSettings,
    PromotionTest,
    VerdictSnapshot,
)
from streams.requestlog import MAX_BAD_LINES, Columns, decode_columns
from streams.verdictrows import verdict_snapshots
from streams.waiting import WaitingCanaries
from streams.windows import (
    ARM_CANARY,
    ARM_STABLE,
    CANARY_REQUESTS,
    N_SERIES,
    STABLE_REQUESTS,
    Counts,
    FleetWindows,
)

VERDICT_CODES = (INCONCLUSIVE, PASS, ABORT)
_CANARY_BAD = slice(bad_series(0, ARM_CANARY), bad_series(len(SIGNALS), ARM_CANARY))
_STABLE_BAD = slice(bad_series(0, ARM_STABLE), bad_series(len(SIGNALS), ARM_STABLE))


@dataclass(slots=True)
class IngestReport:
    """What one batch of request-log messages became."""

    counted: int = 0  # attributed to a canary or stable arm and counted (held ones included)
    unattributed: int = 0  # valid, but no canary in progress has that pod hash (after the hold)
    held: int = 0  # lines in the hold after this call
    # (index of the message in the batch, the refused bytes, why)
    invalid: list[tuple[int, bytes, DecodeError]] = field(default_factory=list)
    # index of a message with too many bad lines -> reason -> bad lines not in `invalid`
    flooded: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        """Refused messages and lines, listed or only tallied."""
        return len(self.invalid) + sum(sum(t.values()) for t in self.flooded.values())


@dataclass(frozen=True, slots=True)
class WindowSettings:
    bucket_s: float = 2.0
    buckets: int = 30


@dataclass(frozen=True, slots=True)
class FleetLimits:
    max_canaries: int = 20_000  # canaries tracked at once; a new one over the cap is refused
    # Refused (or evicted) canaries remembered so that their first line admits them, oldest
    # forgotten first. Above the cap: a restart reads the changelog's partitions interleaved,
    # so a real canary's snapshot may be followed by many more refused ones than the cap.
    max_waiting: int = 50_000
    hold_s: float = 5.0  # how long an unattributed line waits for its canary's snapshot
    hold_lines: int = 100_000  # at most this many lines wait


@dataclass(frozen=True, slots=True)
class PassBounds:
    """The promotion test's bounds for a set of rows, per signal (`Fleet.pass_state`)."""

    ratio: list[NDArray[np.float64]]
    diff: list[NDArray[np.float64]]
    have: list[NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """Pause this canary revision: stable degraded while it runs (shared breakage or an outage),
    so it must not promote on its own schedule. Issued once per revision."""

    decision_id: str
    namespace: str
    rollout: str
    pod_hash: str
    decided_at: float
    evidence: Evidence
    reason: str = "SharedBreakageSuspected"


class Fleet:
    def __init__(
        self,
        settings: DecisionSettings | None = None,
        window: WindowSettings | None = None,
        *,
        capacity: int = 64,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_bad_lines: int = MAX_BAD_LINES,
        limits: FleetLimits | None = None,
        promotion: PromotionSettings | None = None,
        event_time: EventTimeSettings | None = None,
    ) -> None:
        self.settings = settings or DecisionSettings()
        self.promotion_settings = promotion or PromotionSettings()
        window = window or WindowSettings()
        self.limits = limits or FleetLimits()
        self.max_message_bytes = max_message_bytes
        self.max_bad_lines = max_bad_lines
        self.attribution = Attribution(capacity, max_rows=self.limits.max_canaries)
        self.windows = FleetWindows(capacity, bucket_s=window.bucket_s, buckets=window.buckets)
        self.engine = DecisionEngine(self.settings, capacity)
        # Event time (streams.eventtime): when enabled, lines enter the test by their `ts`, in
        # slices closed by the watermark, and the windows run on event time too.
        self.event_time = event_time or EventTimeSettings()
        self.slices = SliceRing(capacity, self.event_time) if self.event_time.enabled else None
        self._event_clock: float | None = None  # end of the newest closed slice
        # Rows whose test block waits for time alone to close, and the next slice to visit them.
        self._waiting_rows = np.zeros(0, dtype=np.intp)
        self._wait_next = 0
        # Event time (slice end) at which each decision id's abort was first reached.
        self.decision_event_times: dict[str, float] = {}
        p = self.promotion_settings
        tolerances = p.tolerances()
        self.promotion = PromotionTest(
            capacity,
            tol_ratio=[t[0] for t in tolerances],
            tol_diff=[t[1] for t in tolerances],
            beta=p.beta,
            block_requests=p.block_requests,
        )
        self.decided: set[str] = set()  # decision ids already issued: one abort per revision
        # Rollouts to pause (verdict HOLD: stable degraded while the canary runs), new this pass.
        self.hold_requests: list[HoldRequest] = []
        self._hold_issued: set[str] = set()  # decision ids of HoldRequests already issued
        self.last_pass: PassResult | None = None
        # Rows that counted at least one line since their canary started: only those are judged
        # in the metrics (a worker that never saw a line of a canary exports nothing for it).
        self.counted_rows = np.zeros(capacity, dtype=np.bool_)
        # Where each row's lines come from (the request-log partition, -1: none yet), and
        # whether it changed since its last checkpoint (agents/evidence.py).
        self.row_source = np.full(capacity, -1, dtype=np.int64)
        self.dirty = np.zeros(capacity, dtype=np.bool_)
        self.refused_canaries = 0  # new canaries not tracked because of `max_canaries`
        self.evicted_canaries = 0  # idle canaries untracked to admit one whose lines arrived
        # Refused canaries by (namespace, hash) key of their pods, and their last snapshots.
        self._waiting = WaitingCanaries()
        self._admitted: dict[str, None] = {}  # tracked canaries, oldest admitted first
        # (held since, lines, their partition), oldest first
        self._held: list[tuple[float, Columns, int]] = []
        self._held_lines = 0
        self._started_since_hold = False

    @property
    def held_lines(self) -> int:
        return self._held_lines

    def apply_rollout(self, state: RolloutState, now: float) -> bool:
        """Take a snapshot into account; False when it is a new canary refused by the cap."""
        attribution = self.attribution
        if (
            state.canary_in_progress
            and state.env not in attribution.row_of_env
            and len(attribution.row_of_env) >= self.limits.max_canaries
        ):
            self.refused_canaries += 1
            self._wait(state)
            return False
        self._unwait(state.env)
        if state.canary_in_progress:
            self._admitted.setdefault(state.env, None)
        else:
            self._admitted.pop(state.env, None)
        row = attribution.row_of_env.get(state.env)
        old = attribution.states[row] if row is not None else None
        change = attribution.apply(state)
        moved = old is not None and (old.canary_weight, old.step_index) != (
            state.canary_weight,
            state.step_index,
        )
        if self.slices is not None and state.observed_at > 0:
            now = state.observed_at  # the test runs on event time: the snapshot's own time
        if moved and row is not None and not (change.ended or change.started):
            # A canary step brings new pods: their warm-up must not abort (latency grace).
            self.engine.start_grace(np.asarray([row], dtype=np.intp), now)
        capacity = attribution.capacity
        if capacity > self.windows.capacity:
            self.windows.grow(capacity)
            self.engine.grow(capacity)
            extra = np.zeros(capacity - self.counted_rows.size, dtype=np.bool_)
            self.counted_rows = np.concatenate([self.counted_rows, extra])
            self.dirty = np.concatenate([self.dirty, extra])
            self.row_source = np.concatenate(
                [self.row_source, np.full(extra.size, -1, dtype=np.int64)]
            )
            self.promotion.grow(capacity)
            if self.slices is not None:
                self.slices.grow(capacity)
        for rows in (change.ended, change.started):
            if rows:
                index = np.asarray(rows, dtype=np.intp)
                self.windows.clear_rows(index)
                self.engine.reset(index, now)
                self.counted_rows[index] = False
                self.row_source[index] = -1
                self.dirty[index] = False
                self.promotion.reset(index)
                if self.slices is not None:
                    self.slices.clear_rows(index)
        if change.started:
            self._started_since_hold = True
        return True

    def forget(self, env: str) -> None:
        """Stop tracking `env` (its canary ended, or the view dropped it); no-op if untracked."""
        self._unwait(env)
        self._admitted.pop(env, None)
        if env not in self.attribution.row_of_env:
            return
        row = self.attribution.remove(env)
        index = np.asarray([row], dtype=np.intp)
        self.windows.clear_rows(index)
        if self.slices is not None:
            self.slices.clear_rows(index)
        self.counted_rows[index] = False
        self.row_source[index] = -1
        self.dirty[index] = False

    # --- evidence rows: checkpoint and restore (agents/evidence.py) ---------------------------

    @property
    def row_width(self) -> int:
        """Floats per exported row: counted flag, windows, engine and test (and the open
        event-time slices, when event time is enabled)."""
        return 1 + self.windows.row_width + self.engine.row_width + self._slices_width

    @property
    def _slices_width(self) -> int:
        return self.slices.row_width if self.slices is not None else 0

    def export_rows(self, rows: NDArray[np.intp]) -> tuple[int, NDArray[np.float64]]:
        """(window head, [rows, row_width]): everything these rows' evidence is."""
        head = self.windows.head if self.windows.head is not None else 0
        data = np.concatenate(
            [
                self.counted_rows[rows, None].astype(np.float64),
                self.windows.export_rows(rows),
                self.engine.export_rows(rows),
                *([self.slices.export_rows(rows)] if self.slices is not None else []),
            ],
            axis=1,
        )
        return head, data

    def import_rows(
        self, rows: NDArray[np.intp], head: int, data: NDArray[np.float64], source: int
    ) -> None:
        """Restore `export_rows`'s rows (of the same canary revisions) into these rows."""
        if data.shape[1] != self.row_width:
            raise ValueError(f"evidence rows have {data.shape[1]} values, not {self.row_width}")
        w = self.windows.row_width
        self.counted_rows[rows] = data[:, 0] > 0
        self.windows.import_rows(rows, data[:, 1 : 1 + w], head)
        k = self._slices_width
        self.engine.import_rows(rows, data[:, 1 + w : data.shape[1] - k])
        if self.slices is not None:
            self.slices.import_rows(rows, data[:, data.shape[1] - k :])
        self.row_source[rows] = source
        self.dirty[rows] = False

    def checkpoint_rows(self, sources: set[int]) -> NDArray[np.intp]:
        """Rows of canaries in progress whose lines come from `sources` and whose evidence may
        have changed since their last checkpoint: counted lines, or an open slice (it closes on
        a later pass without new lines)."""
        mine = np.isin(self.row_source, np.fromiter(sources, dtype=np.int64, count=len(sources)))
        # A full test block waits for a quiet spell (or its longest span) and closes on a later
        # pass without new lines: listed. A block short of block_requests changes only with
        # new lines, which mark the row dirty, as does the pass that takes them into the test:
        # not listed, or every quiet canary is rewritten at every checkpoint, for ever.
        test = self.engine.test
        full = (test.block[0] + test.block[1] >= test.block_requests).any(axis=0)
        open_slice = full | self.windows.pending.any(axis=0)
        if self.slices is not None:
            open_slice |= self.slices.open_rows()
        rows: NDArray[np.intp] = np.flatnonzero(
            mine & self.attribution.active & (self.dirty | open_slice)
        )
        return rows

    def drop_sources(self, sources: set[int], now: float) -> int:
        """Forget the evidence of rows whose lines come from `sources` (their partitions moved
        to another worker, which restores it); returns how many rows."""
        mine = np.isin(self.row_source, np.fromiter(sources, dtype=np.int64, count=len(sources)))
        index = np.flatnonzero(mine)
        if self.slices is not None:
            self.slices.drop_sources(sources)
        if index.size:
            if self.slices is not None:
                self.slices.clear_rows(index)
            self.windows.clear_rows(index)
            self.engine.reset(index, now)
            self.counted_rows[index] = False
            self.row_source[index] = -1
            self.dirty[index] = False
        return int(index.size)

    def assign_sources(self, sources: set[int], now: float) -> None:
        """The request-log partitions this worker reads now: with event time, each one's
        watermark holds the open slices (one not heard from yet too, until it is idle)."""
        if self.slices is not None:
            self.slices.assign(sources, now)

    def release_held(self, now: float) -> IngestReport:
        """Look the held lines up again (call after snapshots started canaries); expire old ones."""
        report = IngestReport()
        self._count_held(now, report)
        report.held = self._held_lines
        return report

    def count(self, messages: Sequence[bytes], now: float) -> IngestReport:
        """Decode, attribute and count a batch of request-log messages (JSON or NDJSON each)."""
        return self.count_columns(self.decode(messages), now)

    def decode(self, messages: Sequence[bytes]) -> Columns:
        """The stateless half of `count`: safe to run in another thread."""
        return decode_columns(messages, self.max_message_bytes, self.max_bad_lines)

    def count_columns(self, columns: Columns, now: float, source: int = -1) -> IngestReport:
        """Attribute and count decoded lines; hold those no tracked canary has yet.

        `source` (the request-log partition) is noted for the rows counted (-1: unknown).
        """
        report = IngestReport(invalid=columns.invalid, flooded=columns.flooded)
        self._count_held(now, report)
        if len(columns):
            rest = self._count(columns, now, report, source)
            if rest is not None and self._waiting and self._admit_by_traffic(rest, now):
                rest = self._count(rest, now, report, source)
            if rest is not None:
                self._hold(rest, now, report, source)
        report.held = self._held_lines
        return report

    def _count(
        self, columns: Columns, now: float, report: IngestReport, source: int = -1
    ) -> Columns | None:
        """Count what is attributed; returns the unattributed lines (None when there are none)."""
        codes = self.attribution.lookup_keys(columns.keys)
        for row, (namespace, pod_hash) in columns.overflow.items():
            codes[row] = self.attribution.lookup(namespace, pod_hash)
        attributed = codes != NOT_ATTRIBUTED
        counted = int(np.count_nonzero(attributed))
        report.counted += counted
        if counted:
            codes = codes[attributed]
            rows = codes >> 1
            arms = codes & 1
            errors = columns.status[attributed] >= 500
            slow = columns.duration_ms[attributed] > self.settings.latency_objective_ms
            ts = columns.ts[attributed]
            if self.slices is None:
                self.windows.add(rows, arms, errors, slow, ts, now)
            else:
                self.slices.add(rows, arms, errors, slow, ts, now, source)
            self.counted_rows[rows] = True
            self.dirty[rows] = True
            if source >= 0:
                self.row_source[rows] = source
        if counted == len(columns):
            return None
        return columns.select(~attributed) if counted else columns

    def _wait(self, state: RolloutState) -> None:
        """Remember a refused canary's last snapshot by its pods' keys, at most `max_waiting`."""
        self._waiting.add(state, self.limits.max_waiting)
        self._started_since_hold = True  # held lines may be this canary's: it can be admitted

    def _unwait(self, env: str) -> None:
        self._waiting.remove(env)

    def _admit_by_traffic(self, columns: Columns, now: float) -> bool:
        """Admit waiting canaries whose lines are in `columns`, each in place of an idle one."""
        envs = self._waiting.envs_of(np.unique(columns.keys).tolist())
        admitted = False
        for env in sorted(envs):
            state = self._waiting.get(env)
            if state is None:
                continue  # gave way to a canary evicted for an earlier one of `envs`
            if len(self.attribution.row_of_env) >= self.limits.max_canaries:
                idle = self._idle_canary()
                if idle is None:
                    break  # every tracked canary counts lines: the cap holds
                idle_state = self.attribution.states[self.attribution.row_of_env[idle]]
                self.forget(idle)
                self.evicted_canaries += 1
                if idle_state is not None:
                    self._wait(idle_state)
            admitted = self.apply_rollout(state, now) or admitted
        return admitted

    def _idle_canary(self) -> str | None:
        """The oldest admitted canary that has counted no line since it started, if any."""
        row_of_env = self.attribution.row_of_env
        for env in self._admitted:
            row = row_of_env.get(env)
            if row is not None and not self.counted_rows[row]:
                return env
        return None

    def _hold(self, columns: Columns, now: float, report: IngestReport, source: int) -> None:
        room = max(0, self.limits.hold_lines - self._held_lines) if self.limits.hold_s > 0 else 0
        n = len(columns)
        if room < n:
            report.unattributed += n - room
            if not room:
                return
            keep = np.zeros(n, dtype=np.bool_)
            keep[:room] = True
            columns = columns.select(keep)
        columns.invalid, columns.flooded = [], {}  # reported once, with the fetch they came in
        self._held.append((now, columns, source))
        self._held_lines += len(columns)

    def _count_held(self, now: float, report: IngestReport) -> None:
        if not self._held:
            return
        expired = 0
        while self._held and now - self._held[0][0] > self.limits.hold_s:
            expired += len(self._held.pop(0)[1])
        report.unattributed += expired
        self._held_lines -= expired
        if not self._started_since_hold or not self._held:
            return  # no canary started since the last look: nothing new to attribute to
        self._started_since_hold = False
        kept: list[tuple[float, Columns, int]] = []
        for held_at, columns, source in self._held:
            rest = self._count(columns, now, report, source)
            if rest is not None and self._waiting and self._admit_by_traffic(rest, now):
                rest = self._count(rest, now, report, source)
            if rest is not None:
                kept.append((held_at, rest, source))
        self._held = kept
        self._held_lines = sum(len(c) for _, c, _ in kept)

    def evaluate(
        self, now: float, *, await_delivery: bool = False
    ) -> tuple[PassResult, list[AbortCommand]]:
        """One pass over every row; returns the pass and the abort commands not yet issued.

        A decision is made once per rollout revision and epoch (`decision_id_for`). With
        `await_delivery` it counts as made only when the caller reports its command delivered
        (`delivered`): until then every pass returns it again (the engine's abort latch holds),
        so a send that failed is retried by the next pass. Without it, returning is deciding.
        """
        if self.slices is not None:
            result = self._event_pass(now)
        else:
            self.windows.advance(now)
            increments = self.windows.take_pending()
            self.dirty[: increments.shape[1]] |= increments.any(axis=0)  # the test moved
            result = self.engine.evaluate(
                increments, self.windows.window_sum, self.attribution.active, now
            )
            self.promotion.update(
                increments[CANARY_REQUESTS],
                increments[STABLE_REQUESTS],
                increments[_CANARY_BAD],
                increments[_STABLE_BAD],
            )
        self.last_pass = result
        self.hold_requests = self._holds(result, now)
        commands: list[AbortCommand] = []
        aborting = np.flatnonzero((result.verdicts == Verdict.ABORT).any(axis=0))
        for row in aborting.tolist():
            state = self.attribution.states[row]
            assert state is not None
            decision_id = decision_id_for(
                state.namespace, state.name, state.current_pod_hash, state.cluster, state.epoch
            )
            if decision_id in self.decided:
                continue
            if not await_delivery:
                self.decided.add(decision_id)
            signal = int(np.argmax(result.verdicts[:, row] == Verdict.ABORT))
            commands.append(
                AbortCommand(
                    decision_id=decision_id,
                    namespace=state.namespace,
                    rollout=state.name,
                    pod_hash=state.current_pod_hash,
                    decided_at=now,
                    evidence=result.evidence(row, signal),
                    release=state.release,
                    reason=f"Canary{SIGNALS[signal].capitalize()}Regression",
                    cluster=state.cluster,
                )
            )
        return result, commands

    @property
    def outside_event_time(self) -> dict[str, int]:
        """Lines dropped from the test by event time, by reason (`late`, `future`)."""
        if self.slices is None:
            return {reason: 0 for reason in REASONS}
        return dict(self.slices.dropped)

    def _close_slices(self, closed: ClosedSlices) -> None:
        """The slices closed by this pass, oldest first, into the windows, the test and the
        promotion test, in one call: each slice costs O(the rows with lines in it, and rows
        whose test block waits for time to close); the other rows would not change."""
        groups = closed.groups()
        g = 0
        waiting = self._waiting_rows
        while True:
            due = self._wait_next if waiting.size and self._wait_next < closed.through else None
            if g < len(groups) and (due is None or groups[g][0] <= due):
                number, rows, counts = groups[g]
                g += 1
            elif due is not None:
                number, rows, counts = due, waiting[:0], np.zeros((N_SERIES, 0), np.int64)
            else:
                break
            if waiting.size:
                extra = waiting[~np.isin(waiting, rows)]
                if extra.size:
                    rows = np.concatenate([rows, extra])
                    pad = np.zeros((counts.shape[0], extra.size), dtype=np.int64)
                    counts = np.concatenate([counts, pad], axis=1)
            waiting = self._close_slice(number, rows, counts)
            self._wait_next = number + 1
        self._waiting_rows = waiting

    def _close_slice(self, number: int, rows: NDArray[np.intp], counts: Counts) -> NDArray[np.intp]:
        """One closed slice of these rows; returns the rows whose block still waits."""
        start = number * self.event_time.slice_s
        end = start + self.event_time.slice_s
        self.windows.add_rows(rows, counts, start)
        self.dirty[rows] = True  # the test moves (counts, or a waiting block's time)
        new, waiting = self.engine.step_rows(
            rows, counts, self.windows.window_sum[:, rows], self.attribution.active[rows], end
        )
        self.promotion.update(
            counts[CANARY_REQUESTS],
            counts[STABLE_REQUESTS],
            counts[_CANARY_BAD],
            counts[_STABLE_BAD],
            rows=rows,
        )
        self._event_clock = end
        for row in new.tolist():
            state = self.attribution.states[row]
            if state is not None:
                decision_id = decision_id_for(
                    state.namespace, state.name, state.current_pod_hash, state.cluster, state.epoch
                )
                self.decision_event_times.setdefault(decision_id, end)
        out: NDArray[np.intp] = rows[waiting]
        return out

    def _event_pass(self, now: float) -> PassResult:
        """The slices the watermarks passed since the last pass go into the test (decisions
        are taken there, at each slice's end); then every row is judged at the newest slice's
        end, without new counts and without new decisions, so that how often passes run
        changes nothing in the decisions."""
        assert self.slices is not None
        closed = self.slices.take_closed(now)
        self._close_slices(closed)
        if self._waiting_rows.size and self.slices.all_idle(now):
            # Idle: no line comes to close the blocks that wait for their bad requests' quiet;
            # their time passes anyway (nothing is counted into these slice ends).
            s, slice_s = self.settings, self.event_time.slice_s
            after = math.ceil(max(s.quiet_s, s.max_slice_s) / slice_s) + 1
            empty = ClosedSlices(closed.numbers[:0], closed.rows[:0], closed.counts[:, :0], 0)
            self._close_slices(replace(empty, through=max(closed.through, self._wait_next) + after))
        clock = self._event_clock if self._event_clock is not None else now
        return self.engine.judge(self.windows.window_sum, self.attribution.active, clock)

    def delivered(self, command: AbortCommand) -> None:
        """The command was acknowledged by Kafka: its decision is made (see `evaluate`)."""
        self.decided.add(command.decision_id)

    def _holds(self, result: PassResult, now: float) -> list[HoldRequest]:
        holds: list[HoldRequest] = []
        held = np.flatnonzero((result.verdicts == Verdict.HOLD).any(axis=0))
        for row in held.tolist():
            state = self.attribution.states[row]
            assert state is not None
            decision_id = decision_id_for(
                state.namespace, state.name, state.current_pod_hash, epoch=state.epoch
            )
            if decision_id in self._hold_issued:
                continue
            self._hold_issued.add(decision_id)
            signal = int(np.argmax(result.verdicts[:, row] == Verdict.HOLD))
            holds.append(
                HoldRequest(
                    decision_id,
                    state.namespace,
                    state.name,
                    state.current_pod_hash,
                    now,
                    result.evidence(row, signal),
                )
            )
        return holds

    def verdict_codes(self) -> tuple[NDArray[np.intp], NDArray[np.int8]]:
        """(active rows, their gate verdict code) from the last pass, vectorised: 0
        inconclusive, 1 pass, 2 abort (`VERDICT_CODES`)."""
        result = self.last_pass
        if result is None:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int8)
        width = result.verdicts.shape[1]
        rows = np.flatnonzero(self.attribution.active[:width])
        passed = self.promotion.passed[:, rows].all(axis=0)
        aborted = (result.verdicts[:, rows] == Verdict.ABORT).any(axis=0)
        codes = np.where(aborted, 2, np.where(passed, 1, 0)).astype(np.int8)
        return rows, codes

    def pass_state(self, rows: Sequence[int] | None = None) -> list[VerdictSnapshot]:
        """The gate's verdict for canaries in progress (these rows, or all), from the last
        evaluation pass: `abort` once the streaming test aborted (either signal), `pass` once
        every signal's promotion test passed, `inconclusive` otherwise (with an estimate of the
        time to a pass). All rows in one vectorised pass (streams/verdictrows.py)."""
        result = self.last_pass
        if result is None:
            return []
        if rows is None:
            rows = self.verdict_codes()[0].tolist()
        return verdict_snapshots(
            self.attribution.states, self.promotion, self.promotion_settings, result, rows
        )

    def verdict_of(self, row: int, result: PassResult) -> VerdictSnapshot:
        return verdict_snapshots(
            self.attribution.states, self.promotion, self.promotion_settings, result, [row]
        )[0]
