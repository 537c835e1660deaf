"""Verdict snapshots out: each canary's pass/abort/inconclusive and bounds, to a compacted topic.

The worker that holds an environment's evidence publishes it, keyed by env
(`<namespace>/<rollout>`), to `<prefix>.verdicts` (compacted: the latest snapshot per env is
all a reader needs). The gate (agents/gate.py) reads that topic, so it answers for every
environment whichever worker holds it; `canarywatch status` and a UI can read it the same way.

Publishing is rate-limited per env: a changed verdict (or a new revision) goes out after the
pass that produced it; unchanged evidence at most every `refresh_s`, so that readers can tell a
live worker from a stopped one (`decided_at`). At most `max_per_tick` snapshots per pass; the
rest wait for the next pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from streams.fleet import Fleet

Send = Callable[[bytes, bytes], Awaitable[object]]


@dataclass(slots=True)
class _Sent:
    pod_hash: str
    code: int
    at: float


class VerdictPublisher:
    def __init__(self, send: Send, *, refresh_s: float = 5.0, max_per_tick: int = 500) -> None:
        self._send = send
        self.refresh_s = refresh_s
        self.max_per_tick = max_per_tick
        self._sent: dict[str, _Sent] = {}
        self.published = 0

    def due(self, fleet: Fleet, now: float) -> list[int]:
        """Rows whose snapshot should go out now: changed verdicts first, then stale ones."""
        rows, codes = fleet.verdict_codes()
        changed: list[int] = []
        stale: list[int] = []
        states = fleet.attribution.states
        for row, code in zip(rows.tolist(), codes.tolist(), strict=True):
            state = states[row]
            if state is None:
                continue
            last = self._sent.get(state.env)
            if last is None or last.pod_hash != state.current_pod_hash or last.code != code:
                changed.append(row)
            elif now - last.at >= self.refresh_s:
                stale.append(row)
        return (changed + stale)[: self.max_per_tick]

    async def tick(self, fleet: Fleet, now: float) -> int:
        """Publish what is due after an evaluation pass; returns how many went out."""
        rows = self.due(fleet, now)
        if not rows:
            return 0
        all_rows, codes = fleet.verdict_codes()
        code_of = dict(zip(all_rows.tolist(), codes.tolist(), strict=True))
        for snapshot in fleet.pass_state(rows):
            row = fleet.attribution.row_of_env[snapshot.env]
            await self._send(snapshot.env.encode(), snapshot.encode())
            self._sent[snapshot.env] = _Sent(snapshot.pod_hash, code_of[row], now)
            self.published += 1
        live = set(fleet.attribution.row_of_env)
        for env in [env for env in self._sent if env not in live]:
            del self._sent[env]
        return len(rows)
