"""The worker's side of release-level analysis, and the records of the summaries topic. Pure.

`SummaryFeed` keeps a `ReleaseEvidence` beside a `Fleet`'s decision engine. It reads the
engine's cumulative counts (the same increments the engine added, as differences between two
looks; block boundaries depend on request counts only, so the looks may be at any times) and
resets a row when its canary revision changes. `summaries(now)` returns an `EnvSummary` for
every row this worker counted lines of whose numbers changed since the last call.

The summaries topic carries two kinds of records, both partitioned by release (murmur2 of the
release, as the default partitioner would for a release key) and keyed per environment so that
compaction keeps the latest of each: `state` (the rollout state as the worker validated it: the
cohort's membership, quiet environments included) and `summary` (the evidence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import orjson

from streams.events import DecodeError, RolloutState, rollout_state_from_obj
from streams.fleet import Fleet
from streams.release import FleetControl, ReleaseSettings
from streams.releaseevidence import ReleaseEvidence, summary_from_rows
from streams.releaserecords import EnvSummary, decode_env_summary, encode_env_summary
from streams.windows import (
    CANARY_ERRORS,
    CANARY_REQUESTS,
    CANARY_SLOW,
    STABLE_ERRORS,
    STABLE_REQUESTS,
    STABLE_SLOW,
)

_CUM = (CANARY_REQUESTS, STABLE_REQUESTS, CANARY_ERRORS, CANARY_SLOW, STABLE_ERRORS, STABLE_SLOW)


class SummaryFeed:
    """`ReleaseEvidence` rows in step with a `Fleet`'s rows."""

    def __init__(self, fleet: Fleet, settings: ReleaseSettings) -> None:
        self.fleet = fleet
        self.settings = settings
        self.evidence = ReleaseEvidence(fleet.engine.capacity, settings, signals=2)
        self._seen = np.zeros((len(_CUM), fleet.engine.capacity), dtype=np.int64)
        self._revision: list[tuple[str, str] | None] = [None] * fleet.engine.capacity
        self._published: dict[str, tuple[int, ...]] = {}  # env -> counts last published

    def _grow(self, capacity: int) -> None:
        old = self.evidence
        if capacity <= old.capacity:
            return
        new = ReleaseEvidence(capacity, self.settings, signals=2)
        n = old.capacity
        new.loglik[:, :, :n] = old.loglik
        new.stable_sum[:n] = old.stable_sum
        new.share_sum[:n] = old.share_sum
        new.block[:, :n] = old.block
        new.diff_log[:, :, :n] = old.diff_log
        new.canary_sum[:n] = old.canary_sum
        self.evidence = new
        seen = np.zeros((len(_CUM), capacity), dtype=np.int64)
        seen[:, :n] = self._seen
        self._seen = seen
        self._revision += [None] * (capacity - n)

    def observe(self) -> None:
        """Add what the engine added since the previous look."""
        fleet = self.fleet
        self._grow(fleet.engine.capacity)
        cum = fleet.engine.cumulative[list(_CUM)]
        states = fleet.attribution.states
        reset: list[int] = []
        for row in range(min(len(states), cum.shape[1])):
            state = states[row]
            revision = None if state is None else (state.env, state.current_pod_hash)
            if revision != self._revision[row]:
                self._revision[row] = revision
                reset.append(row)
        rows = np.asarray(reset, dtype=np.intp)
        backwards = np.flatnonzero((cum < self._seen[:, : cum.shape[1]]).any(axis=0))
        rows = np.union1d(rows, backwards).astype(np.intp)
        if rows.size:
            self.evidence.reset(rows)
            self._seen[:, rows] = 0
        width = cum.shape[1]
        inc = cum - self._seen[:, :width]
        self._seen[:, :width] = cum
        if not inc.any():
            return
        pad = self.evidence.capacity - width

        def full(a: np.ndarray) -> np.ndarray:
            return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]) if pad else a

        self.evidence.update(
            full(inc[0]), full(inc[1]), full(inc[2:4]).reshape(-1), full(inc[4:6]).reshape(-1)
        )

    def summaries(self, now: float) -> list[EnvSummary]:
        """Rows counted by this worker, with a release, whose counts changed since last time."""
        fleet = self.fleet
        self.observe()
        result = fleet.last_pass
        if result is None:
            return []
        engine = fleet.engine
        threshold = engine.settings.threshold
        aborted = np.asarray(engine.aborted.any(axis=0), dtype=np.bool_)
        window = fleet.windows.window_sum
        out: list[EnvSummary] = []
        live: set[str] = set()
        for row in np.flatnonzero(fleet.counted_rows).tolist():
            state = fleet.attribution.states[row] if row < len(fleet.attribution.states) else None
            if state is None or not state.release or row >= result.statistic.shape[1]:
                continue
            live.add(state.env)
            counts = tuple(int(engine.cumulative[i, row]) for i in _CUM)
            mark = (*counts, int(aborted[row]), hash(state.current_pod_hash))
            if self._published.get(state.env) == mark:
                continue
            self._published[state.env] = mark
            log_e = [
                max(float(result.statistic[t, row]), threshold)
                if engine.aborted[t, row]
                else float(result.statistic[t, row])
                for t in range(2)
            ]
            out.append(
                summary_from_rows(
                    state.env,
                    state.release,
                    state.current_pod_hash,
                    now,
                    self.evidence,
                    row,
                    counts,
                    (
                        int(window[STABLE_REQUESTS, row]),
                        int(window[STABLE_ERRORS, row]),
                        int(window[STABLE_SLOW, row]),
                    ),
                    log_e,
                    aborted=bool(aborted[row]),
                )
            )
        for env in set(self._published) - live:
            del self._published[env]
        return out


def keep_own_abort(release: str, control: FleetControl) -> bool:
    """With e-BH (fleet_control = ebh) the release agent selects per-environment aborts among
    the cohort; the worker sends only those of canaries without a release."""
    return control is FleetControl.PER_ENV or not release


# --- records of the summaries topic -------------------------------------------------------------

Kind = Literal["state", "summary"]


@dataclass(frozen=True, slots=True)
class FeedRecord:
    kind: Kind
    release: str
    state: RolloutState | None = None
    summary: EnvSummary | None = None

    @property
    def env(self) -> str:
        if self.state is not None:
            return self.state.env
        assert self.summary is not None
        return self.summary.env

    @property
    def key(self) -> bytes:
        """Per environment and release, so that compaction keeps the latest of each."""
        return f"{self.kind}|{self.env}|{self.release}".encode()


def state_record(state: RolloutState) -> FeedRecord:
    return FeedRecord("state", state.release, state=state)


def left_cohort(previous: RolloutState, state: RolloutState) -> RolloutState | None:
    """The state to send to `previous.release`'s partition when `state` moves the environment
    out of that cohort (another release, or no canary in progress and not aborted)."""
    if not previous.release or previous.release == state.release:
        return None
    return replace(previous, ended=True)


def summary_record(summary: EnvSummary) -> FeedRecord:
    return FeedRecord("summary", summary.release, summary=summary)


def encode_feed_record(record: FeedRecord) -> bytes:
    if record.kind == "state":
        assert record.state is not None
        return orjson.dumps({"kind": "state", "state": asdict(record.state)})
    assert record.summary is not None
    return b'{"kind":"summary","summary":' + encode_env_summary(record.summary) + b"}"


def decode_feed_record(raw: bytes) -> FeedRecord:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_object", "feed record must be a JSON object")
    kind = obj.get("kind")
    if kind == "state":
        state = rollout_state_from_obj(obj.get("state"))
        return FeedRecord("state", state.release, state=state)
    if kind == "summary":
        summary = decode_env_summary(orjson.dumps(obj.get("summary")))
        return FeedRecord("summary", summary.release, summary=summary)
    raise DecodeError("bad_format", f"feed record kind {str(kind)[:20]!r}")
