"""The evaluation timer as a service of its own, started when the worker has something to judge.

Faust starts its app timers only once its own tables are recovered. A restarting worker loads
its rollout view and restores its canaries' evidence meanwhile (agents/view.py, agents/ingest.py),
so its first pass would wait for Faust's recovery of tables the pass does not read (seconds at
100,000 environments: docs/performance.md). This timer starts when the view is restored; what a
pass must not do before the decisions table is recovered (send an abort that may already have
been sent) the worker holds back itself (agents/worker.py `evaluate`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mode import Service


class EvaluationTimer(Service):
    """Run `step` every `every_s` seconds (mode's drift-corrected timer) until stopped."""

    def __init__(self, step: Callable[[], Awaitable[None]], every_s: float) -> None:
        super().__init__()
        self._step = step
        self.every_s = every_s

    @Service.task
    async def _run(self) -> None:
        async for _ in self.itertimer(self.every_s, name="evaluate"):
            await self._step()
