"""Prometheus metrics of the worker; the registry is passed in, never the global one.

Per-environment ratios are computed at scrape time from the fleet's arrays (a custom collector),
for environments with a canary in progress whose lines this worker counted (every worker knows
every canary, agents/view.py; only the one reading an environment's lines judges it), at most
`max_series` of them, the most urgent first (highest statistic): label cardinality is bounded,
and nothing is paid on the hot path. The aggregate gauges cover every such environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents.deadletter import deadletter_counter, suppressed_counter
from agents.health import Readiness, ReadyGauge
from agents.unreadable import skipped_counter
from streams.decisions import SIGNALS, Verdict, bad_series
from streams.fleet import Fleet
from streams.windows import (
    ARM_CANARY,
    ARM_STABLE,
    CANARY_REQUESTS,
    SERIES_NAMES,
    STABLE_REQUESTS,
)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.lines = Counter(
            "canarywatch_request_lines",
            "Request-log lines consumed, by outcome (counted, unattributed, invalid).",
            ["outcome"],
            registry=registry,
        )
        self.deadletters = deadletter_counter(registry)
        self.deadletters_suppressed = suppressed_counter(registry)
        self.skipped_records = skipped_counter(registry)
        self.ingest_errors = Counter(
            "canarywatch_ingest_errors",
            "Errors of the request-log consumer, retried with backoff, by exception type.",
            ["error"],
            registry=registry,
        )
        self.rollout_states = Counter(
            "canarywatch_rollout_states", "Rollout-state snapshots applied.", registry=registry
        )
        self.aborts = Counter(
            "canarywatch_abort_commands",
            "Abort commands sent, by the signal that decided.",
            ["signal"],
            registry=registry,
        )
        self.evaluation = Histogram(
            "canarywatch_evaluation_seconds",
            "Duration of one evaluation pass over every environment.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.lag = Gauge(
            "canarywatch_consumer_lag",
            "Messages behind the end of the partition, per topic and partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.ingest_partitions = Gauge(
            "canarywatch_ingest_partitions",
            "Request-log partitions assigned to this worker in the group <app_id>-requests.",
            registry=registry,
        )
        self.restore_refused = Counter(
            "canarywatch_restore_refused",
            "Table records skipped on restore (or in the rollout view) because validation "
            "refused them, by table and reason.",
            ["table", "reason"],
            registry=registry,
        )
        self.canaries_refused = Counter(
            "canarywatch_canaries_refused",
            "New canaries not tracked because max_canaries was reached.",
            registry=registry,
        )
        self.canaries_evicted = Counter(
            "canarywatch_canaries_evicted",
            "Idle canaries (no line counted since they started) untracked at max_canaries to "
            "admit a refused canary whose request lines arrived.",
            registry=registry,
        )
        # /readyz and this gauge: the view restored and ingest started (`ready.set(1)`), plus
        # the probes the worker adds (a fetch answered lately).
        self.readiness = Readiness("worker")
        self.ready = ReadyGauge(
            self.readiness,
            registry,
            "canarywatch_ready",
            "1 while the worker is ready: rollout view restored, request-log partitions "
            "assigned, fetches answered lately (see /readyz).",
        )
        self.kafka_errors = Counter(
            "canarywatch_kafka_errors",
            "Kafka sends, commits and fetches that failed and are retried, by component and "
            "exception type.",
            ["component", "error"],
            registry=registry,
        )
        self.kafka_trouble = Gauge(
            "canarywatch_kafka_trouble",
            "1 while a component's Kafka operations fail (an episode), by component.",
            ["component"],
            registry=registry,
        )
        self.evidence_checkpoints = Counter(
            "canarywatch_evidence_checkpoints",
            "Evidence checkpoints committed (rows and request-log offsets, one transaction).",
            registry=registry,
        )
        self.evidence_rows = Counter(
            "canarywatch_evidence_rows",
            "Evidence rows written to or restored from <prefix>.evidence, by direction.",
            ["direction"],
            registry=registry,
        )
        for direction in ("written", "restored"):
            self.evidence_rows.labels(direction)

        # Every label value an alert's increase() reads exists from the start, at 0: a counter
        # born on its first inc() hides that first event from increase().
        for outcome in ("counted", "unattributed", "invalid"):
            self.lines.labels(outcome)
        for signal in SIGNALS:
            self.aborts.labels(signal)

    def set_ready(self) -> None:
        """The worker consumes and evaluates (its rollout view is restored)."""
        self.ready.set(1)

    def set_trouble(self, component: str, trouble: bool, why: str = "failing") -> None:
        """A Kafka trouble episode of `component` starts or ends (agents/episodes.py); the
        worker is not ready while one lasts (readiness condition `kafka:<component>`)."""
        condition = f"kafka:{component}"
        if trouble:
            self.readiness.fail(condition, why)
        else:
            self.readiness.mark(condition)
        self.kafka_trouble.labels(component).set(1 if trouble else 0)

    def count_lines(self, counted: int, unattributed: int, invalid: int) -> None:
        if counted:
            self.lines.labels("counted").inc(counted)
        if unattributed:
            self.lines.labels("unattributed").inc(unattributed)
        if invalid:
            self.lines.labels("invalid").inc(invalid)


class FleetCollector(Collector):
    """Window ratios and verdicts of the environments in canary, read at scrape time."""

    def __init__(self, fleet_source: Callable[[], Fleet | None], max_series: int = 1000) -> None:
        self._fleet_source = fleet_source
        self.max_series = max_series

    def describe(self) -> Iterator[Metric]:
        # Named up front, so a scrape restricted with `?name[]=...` skips this collector.
        yield from self._families()
        yield self._since_start()
        yield self._outside_event_time(None)

    @staticmethod
    def _outside_event_time(fleet: Fleet | None) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "canarywatch_lines_outside_event_time",
            "Request lines dropped from the test by event time (EVENT_TIME on), by reason: "
            "late (their slice was closed by the watermark) or future (beyond the clock skew).",
            labels=["reason"],
        )
        if fleet is not None:
            for reason, n in sorted(fleet.outside_event_time.items()):
                family.add_metric([reason], float(n))
        return family

    @staticmethod
    def _since_start() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "canarywatch_env_counted",
            "Requests counted into the test since the canary (epoch) started, per environment "
            "and series (same selection as canarywatch_env_statistic).",
            labels=["env", "series"],
        )

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        ratio = GaugeMetricFamily(
            "canarywatch_window_bad_ratio",
            "Bad requests / requests over the sliding window, per canary environment.",
            labels=["env", "arm", "signal"],
        )
        requests = GaugeMetricFamily(
            "canarywatch_window_requests",
            "Requests over the sliding window, per canary environment and arm.",
            labels=["env", "arm"],
        )
        verdicts = GaugeMetricFamily(
            "canarywatch_verdicts",
            "Environments in canary by current verdict and signal.",
            labels=["verdict", "signal"],
        )
        canaries = GaugeMetricFamily(
            "canarywatch_canaries_in_progress",
            "Environments with a canary in progress this worker tracks (every worker: all).",
        )
        counted = GaugeMetricFamily(
            "canarywatch_canaries_counted",
            "Canaries in progress this worker counted request lines for (those it judges).",
        )
        unexported = GaugeMetricFamily(
            "canarywatch_env_series_unexported",
            "Counted canaries whose per-environment series are not exported (max_env_series).",
        )
        env_verdict = GaugeMetricFamily(
            "canarywatch_env_verdict",
            "1 for each canary environment's current verdict, per signal.",
            labels=["env", "signal", "verdict"],
        )
        env_statistic = GaugeMetricFamily(
            "canarywatch_env_statistic",
            "The sequential test's statistic (log e-value) per canary environment and signal; "
            "abort at canarywatch_abort_threshold.",
            labels=["env", "signal"],
        )
        threshold = GaugeMetricFamily(
            "canarywatch_abort_threshold", "The statistic at which a canary is aborted."
        )
        return (
            canaries,
            counted,
            unexported,
            ratio,
            requests,
            verdicts,
            env_verdict,
            env_statistic,
            threshold,
        )

    def collect(self) -> Iterator[Metric]:
        fleet = self._fleet_source()
        families = self._families()
        since_start = self._since_start()
        (
            canaries,
            counted,
            unexported,
            ratio,
            requests,
            verdicts,
            env_verdict,
            env_statistic,
            threshold,
        ) = families
        if fleet is None:
            yield canaries
            return
        canaries.add_metric([], float(fleet.attribution.active_rows().size))
        judged = np.flatnonzero(fleet.attribution.active & fleet.counted_rows)
        counted.add_metric([], float(judged.size))
        last = fleet.last_pass
        if last is not None:
            # Rows added since the last pass have no verdict yet.
            judged = judged[judged < last.verdicts.shape[1]]
        exported = self._most_urgent(judged, fleet)
        unexported.add_metric([], float(judged.size - exported.size))
        window = fleet.windows.window_sum
        for row in exported.tolist():
            state = fleet.attribution.states[row]
            if state is None:
                continue
            for arm, arm_name, total_series in (
                (ARM_CANARY, "canary", CANARY_REQUESTS),
                (ARM_STABLE, "stable", STABLE_REQUESTS),
            ):
                total = int(window[total_series, row])
                requests.add_metric([state.env, arm_name], float(total))
                for signal, signal_name in enumerate(SIGNALS):
                    bad = int(window[bad_series(signal, arm), row])
                    ratio.add_metric(
                        [state.env, arm_name, signal_name], bad / total if total else 0.0
                    )
        cumulative = fleet.engine.cumulative
        for row in exported.tolist():
            state = fleet.attribution.states[row]
            if state is None or row >= cumulative.shape[1]:
                continue
            for series, series_name in enumerate(SERIES_NAMES):
                since_start.add_metric([state.env, series_name], float(cumulative[series, row]))
        if last is not None and judged.size:
            for signal, signal_name in enumerate(SIGNALS):
                counts = np.bincount(last.verdicts[signal, judged], minlength=len(Verdict))
                for verdict in Verdict:
                    verdicts.add_metric(
                        [verdict.name.lower(), signal_name], float(counts[verdict.value])
                    )
            threshold.add_metric([], last.threshold)
            for row in exported.tolist():
                state = fleet.attribution.states[row]
                if state is None:
                    continue
                for signal, signal_name in enumerate(SIGNALS):
                    name = Verdict(int(last.verdicts[signal, row])).name.lower()
                    env_verdict.add_metric([state.env, signal_name, name], 1.0)
                    env_statistic.add_metric(
                        [state.env, signal_name], float(last.statistic[signal, row])
                    )
        yield from families
        yield since_start
        yield self._outside_event_time(fleet)

    def _most_urgent(self, rows: NDArray[np.intp], fleet: Fleet) -> NDArray[np.intp]:
        """At most `max_series` rows, highest statistic (over signals) first; ties by row."""
        if rows.size <= self.max_series:
            return rows
        last = fleet.last_pass
        if last is None:
            return rows[: self.max_series]
        urgency = last.statistic[:, rows].max(axis=0)
        order = np.lexsort((rows, -urgency))
        return np.sort(rows[order[: self.max_series]])
