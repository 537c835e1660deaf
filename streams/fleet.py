"""The analyzer's pure core in one object: rollout states and request logs in, abort commands out.

`Fleet` composes attribution (hash -> row and arm), the window counters and the decision
engine. The Faust worker (agents/worker.py) feeds it bytes and the time, and sends what it
returns; everything here is testable without Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streams.attribution import NOT_ATTRIBUTED, Attribution
from streams.decisions import SIGNALS, DecisionEngine, DecisionSettings, PassResult, Verdict
from streams.events import (
    MAX_MESSAGE_BYTES,
    AbortCommand,
    DecodeError,
    RolloutState,
    decision_id_for,
)
from streams.requestlog import Columns, decode_columns
from streams.windows import FleetWindows


@dataclass(slots=True)
class IngestReport:
    """What one batch of request-log messages became."""

    counted: int = 0  # attributed to a canary or stable arm and counted
    unattributed: int = 0  # valid, but no canary in progress has that pod hash
    # (index of the message in the batch, the refused bytes, why)
    invalid: list[tuple[int, bytes, DecodeError]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WindowSettings:
    bucket_s: float = 2.0
    buckets: int = 30


class Fleet:
    def __init__(
        self,
        settings: DecisionSettings | None = None,
        window: WindowSettings | None = None,
        *,
        capacity: int = 64,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.settings = settings or DecisionSettings()
        window = window or WindowSettings()
        self.max_message_bytes = max_message_bytes
        self.attribution = Attribution(capacity)
        self.windows = FleetWindows(capacity, bucket_s=window.bucket_s, buckets=window.buckets)
        self.engine = DecisionEngine(self.settings, capacity)
        self.decided: set[str] = set()  # decision ids already issued: one abort per revision
        self.last_pass: PassResult | None = None

    def apply_rollout(self, state: RolloutState, now: float) -> None:
        change = self.attribution.apply(state)
        capacity = self.attribution.capacity
        if capacity > self.windows.capacity:
            self.windows.grow(capacity)
            self.engine.grow(capacity)
        for rows in (change.ended, change.started):
            if rows:
                index = np.asarray(rows, dtype=np.intp)
                self.windows.clear_rows(index)
                self.engine.reset(index, now)

    def retain(self, envs: set[str]) -> None:
        """Forget the environments not in `envs` (their partitions went to another worker)."""
        for env in [env for env in self.attribution.row_of_env if env not in envs]:
            row = self.attribution.remove(env)
            index = np.asarray([row], dtype=np.intp)
            self.windows.clear_rows(index)

    def count(self, messages: Sequence[bytes], now: float) -> IngestReport:
        """Decode, attribute and count a batch of request-log messages (JSON or NDJSON each)."""
        return self.count_columns(self.decode(messages), now)

    def decode(self, messages: Sequence[bytes]) -> Columns:
        """The stateless half of `count`: safe to run in another thread."""
        return decode_columns(messages, self.max_message_bytes)

    def count_columns(self, columns: Columns, now: float) -> IngestReport:
        """Attribute and count decoded lines."""
        report = IngestReport(invalid=columns.invalid)
        if not len(columns):
            return report
        codes = self.attribution.lookup_keys(columns.keys)
        for row, (namespace, pod_hash) in columns.overflow.items():
            codes[row] = self.attribution.lookup(namespace, pod_hash)
        attributed = codes != NOT_ATTRIBUTED
        report.counted = int(np.count_nonzero(attributed))
        report.unattributed = len(columns) - report.counted
        if report.counted:
            codes = codes[attributed]
            self.windows.add(
                codes >> 1,
                codes & 1,
                columns.status[attributed] >= 500,
                columns.duration_ms[attributed] > self.settings.latency_objective_ms,
                columns.ts[attributed],
                now,
            )
        return report

    def evaluate(self, now: float) -> tuple[PassResult, list[AbortCommand]]:
        """One pass over every row; returns the pass and the abort commands not yet issued."""
        self.windows.advance(now)
        result = self.engine.evaluate(
            self.windows.take_pending(), self.windows.window_sum, self.attribution.active, now
        )
        self.last_pass = result
        commands: list[AbortCommand] = []
        aborting = np.flatnonzero((result.verdicts == Verdict.ABORT).any(axis=0))
        for row in aborting.tolist():
            state = self.attribution.states[row]
            assert state is not None
            decision_id = decision_id_for(
                state.namespace, state.name, state.current_pod_hash, state.cluster
            )
            if decision_id in self.decided:
                continue
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
