"""Kafka trouble as episodes: retried with backoff, logged once, visible in metrics and readiness.

A broker restart or a leader move makes every send or commit fail for a while. Logging each
failure would flood the log; ending the worker would reset evidence. An `Episodes` object per
component (`commands`, `ingest`, `checkpoint`) logs the first failure of an episode and its end,
counts every failure in `canarywatch_kafka_errors_total{component,error}`, sets
`canarywatch_kafka_trouble{component}` to 1 while it lasts (and `canarywatch_ready` to 0), and
says when the next attempt is due (exponential backoff).
"""

from __future__ import annotations

import logging

from agents.metrics import WorkerMetrics

log = logging.getLogger("canarywatch.kafka")

BACKOFF_S = 0.1
BACKOFF_MAX_S = 5.0


class Episodes:
    def __init__(self, component: str, metrics: WorkerMetrics) -> None:
        self.component = component
        self.metrics = metrics
        self.trouble: str | None = None  # the first error of the current episode
        self.failures = 0  # in the current episode
        self.backoff_s = BACKOFF_S
        self._next_at = 0.0

    def due(self, now: float) -> bool:
        """May the next attempt run at `now` (monotonic seconds)?"""
        return self.trouble is None or now >= self._next_at

    def failed(self, exc: BaseException, now: float) -> float:
        """Note a failure; returns the backoff before the next attempt."""
        what = f"{type(exc).__name__}: {exc}"
        self.metrics.kafka_errors.labels(self.component, type(exc).__name__).inc()
        if self.trouble is None:
            log.warning("%s: %s; retrying with backoff", self.component, what)
            self.trouble = what
            self.backoff_s = BACKOFF_S
            self.metrics.set_trouble(self.component, True)
        else:
            self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)
        self.failures += 1
        self._next_at = now + self.backoff_s
        return self.backoff_s

    def ok(self) -> None:
        """An attempt succeeded: the episode, if any, is over."""
        if self.trouble is None:
            return
        log.warning(
            "%s recovered after %d failures (first: %s)",
            self.component,
            self.failures,
            self.trouble,
        )
        self.trouble = None
        self.failures = 0
        self.metrics.set_trouble(self.component, False)
