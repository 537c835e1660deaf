"""Replay and backtest: recorded request logs and rollout states through the engine.

Pure: timestamped records in (request-log lines or rollout-state snapshots, as bytes), in their
own time order, through `streams.fleet.Fleet` as fast as it goes; evaluated every `every_s` of
the records' time, as the worker's timer would. Out: what canarywatch would have decided and
when (aborts with their evidence, and each env's verdict changes). I/O in agents/replay.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.events import DecodeError, decode_rollout_state
from streams.fleet import VERDICT_CODES, Fleet

REQUEST, ROLLOUT = "request", "rollout"


@dataclass(frozen=True, slots=True)
class Record:
    t: float
    kind: str  # request | rollout
    value: bytes


def classify(line: bytes) -> Record | None:
    """A recorded NDJSON line: a rollout state (has `current_pod_hash`) or a request line."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if "current_pod_hash" in obj:
        t = obj.get("observed_at")
        return Record(float(t), ROLLOUT, line) if isinstance(t, int | float) else None
    t = obj.get("ts")
    return Record(float(t), REQUEST, line) if isinstance(t, int | float) else None


@dataclass(frozen=True, slots=True)
class Decision:
    t: float
    env: str
    verdict: str  # abort | pass | inconclusive (the gate's verdict), or "ABORT command"
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "env": self.env, "verdict": self.verdict, "detail": self.detail}


@dataclass(slots=True)
class ReplayResult:
    start: float = math.nan
    end: float = math.nan
    requests: int = 0
    states: int = 0
    invalid: int = 0
    aborts: list[Decision] = field(default_factory=list)  # the commands, with evidence
    changes: list[Decision] = field(default_factory=list)  # each env's gate verdict changes
    final: dict[str, str] = field(default_factory=dict)  # env -> last verdict

    def aborted_at(self) -> dict[str, float]:
        return {d.env: d.t for d in self.aborts}

    def lines(self) -> list[str]:
        out = [
            f"replay: {self.requests} request lines, {self.states} rollout states, "
            f"{self.invalid} invalid, {self.end - self.start:.1f}s of recorded time"
        ]
        for d in sorted(self.aborts + self.changes, key=lambda d: (d.t, d.env)):
            out.append(f"+{d.t - self.start:8.2f}s {d.env:<24} {d.verdict:<13} {d.detail}")
        counts: dict[str, int] = {}
        for verdict in self.final.values():
            counts[verdict] = counts.get(verdict, 0) + 1
        out.append(
            f"replay: {len(self.aborts)} aborts; final verdicts "
            + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        )
        return out


def replay(
    records: Iterable[Record], fleet: Fleet | None = None, every_s: float = 0.25
) -> ReplayResult:
    """Run time-ordered records through a fleet (sorted here, stably, by their time)."""
    fleet = fleet or Fleet()
    ordered = sorted(records, key=lambda r: r.t)
    result = ReplayResult()
    if not ordered:
        return result
    result.start, result.end = ordered[0].t, ordered[-1].t
    last_code: dict[str, int] = {}
    tick = ordered[0].t + every_s
    batch: list[bytes] = []

    def evaluate(now: float) -> None:
        if batch:
            report = fleet.count(batch, now)
            result.requests += len(batch)
            result.invalid += len(report.invalid)
            batch.clear()
        _, commands = fleet.evaluate(now)
        for command in commands:
            result.aborts.append(
                Decision(now, command.env, "ABORT command", command.evidence.describe())
            )
        rows, codes = fleet.verdict_codes()
        changed = []
        for row, code in zip(rows.tolist(), codes.tolist(), strict=True):
            state = fleet.attribution.states[row]
            if state is not None and last_code.get(state.env) != code:
                last_code[state.env] = code
                changed.append(row)
        for snapshot in fleet.pass_state(changed):
            result.changes.append(Decision(now, snapshot.env, snapshot.verdict, snapshot.reason))
            result.final[snapshot.env] = snapshot.verdict

    for record in ordered:
        while record.t >= tick:
            evaluate(tick)
            tick += every_s
        if record.kind == ROLLOUT:
            if batch:  # lines before the state change count under the old attribution
                report = fleet.count(batch, record.t)
                result.requests += len(batch)
                result.invalid += len(report.invalid)
                batch.clear()
            try:
                fleet.apply_rollout(decode_rollout_state(record.value), record.t)
                result.states += 1
            except DecodeError:
                result.invalid += 1
        else:
            batch.append(record.value)
    evaluate(tick)
    if fleet.slices is not None:  # event time: the recording is over, its last slices close
        evaluate(tick + fleet.event_time.idle_s)
    return result


def verdict_name(code: int) -> str:
    return VERDICT_CODES[code]
