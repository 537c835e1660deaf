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

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from streams.fleet import Fleet

Send = Callable[[bytes, bytes], Awaitable[object]]


class VerdictPublisher:
    """Per row (vectorised): the code, revision start and time of the last snapshot sent."""

    def __init__(
        self, send: Send, *, refresh_s: float = 5.0, max_per_tick: int = 500, chunk: int = 50
    ) -> None:
        self._send = send
        self.chunk = chunk
        self.refresh_s = refresh_s
        self.max_per_tick = max_per_tick
        self._code = np.zeros(0, dtype=np.int8)
        self._started = np.zeros(0)
        self._at = np.zeros(0)
        self.published = 0

    def _grow(self, capacity: int) -> None:
        extra = capacity - self._code.size
        if extra > 0:
            self._code = np.concatenate([self._code, np.full(extra, -1, dtype=np.int8)])
            self._started = np.concatenate([self._started, np.full(extra, np.nan)])
            self._at = np.concatenate([self._at, np.full(extra, -np.inf)])

    def due(self, fleet: Fleet, now: float) -> list[int]:
        """Rows whose snapshot should go out now: changed verdicts (or a new revision: its
        start time differs) first, then those unchanged for `refresh_s`."""
        rows, codes = fleet.verdict_codes()
        if not rows.size:
            return []
        self._grow(int(rows.max()) + 1)
        started = fleet.engine.started_at[rows]
        revision = self._started[rows] != started
        changed = (self._code[rows] != codes) | revision
        stale = ~changed & (now - self._at[rows] >= self.refresh_s)
        # Every worker knows every canary (global view), but only the one reading its lines
        # judges it: a canary this worker counted nothing for goes out once per revision (so
        # the gate and `status` know it from the start), never refreshed, so it cannot
        # overwrite the judge's snapshot (an abort) in the compacted topic.
        counted = fleet.counted_rows
        judged = np.zeros(rows.size, dtype=np.bool_)
        inside = rows < counted.size
        judged[inside] = counted[rows[inside]]
        changed &= judged | revision
        stale &= judged
        out: list[int] = np.concatenate([rows[changed], rows[stale]])[: self.max_per_tick].tolist()
        return out

    async def tick(self, fleet: Fleet, now: float) -> int:
        """Publish what is due after an evaluation pass; returns how many went out."""
        rows = self.due(fleet, now)
        if not rows:
            return 0
        all_rows, codes = fleet.verdict_codes()
        code_of = dict(zip(all_rows.tolist(), codes.tolist(), strict=True))
        for first in range(0, len(rows), self.chunk):
            chunk = rows[first : first + self.chunk]
            for row, snapshot in zip(chunk, fleet.pass_state(chunk), strict=True):
                await self._send(snapshot.env.encode(), snapshot.encode())
                self._code[row] = code_of[row]
                self._started[row] = fleet.engine.started_at[row]
                self._at[row] = now
                self.published += 1
            # The bounds cost ~1 ms a row on a loaded core: between chunks the loop turns, so
            # a burst of new canaries never starves the consumers' heartbeats.
            await asyncio.sleep(0)
        return len(rows)
