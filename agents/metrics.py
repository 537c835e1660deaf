"""Prometheus metrics of the worker; the registry is passed in, never the global one.

Per-environment ratios are computed at scrape time from the fleet's arrays (a custom collector),
for environments with a canary in progress whose lines this worker counted (every worker knows
every canary, agents/view.py; only the one reading an environment's lines judges it), at most
`max_series` of them, the most urgent first (highest statistic): label cardinality is bounded,
and nothing is paid on the hot path. The aggregate gauges cover every such environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
    Counts,
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


PER_ENV = (
    "canarywatch_window_bad_ratio",
    "canarywatch_window_requests",
    "canarywatch_env_verdict",
    "canarywatch_env_statistic",
    "canarywatch_env_counted",
)
_HELP = {
    "canarywatch_window_bad_ratio": (
        "Bad requests / requests over the sliding window, per canary environment."
    ),
    "canarywatch_window_requests": (
        "Requests over the sliding window, per canary environment and arm."
    ),
    "canarywatch_env_verdict": "1 for each canary environment's current verdict, per signal.",
    "canarywatch_env_statistic": (
        "The sequential test's statistic (log e-value) per canary environment and signal; "
        "abort at canarywatch_abort_threshold."
    ),
    "canarywatch_env_counted": (
        "Requests counted into the test since the canary (epoch) started, per environment "
        "and series (same selection as canarywatch_env_statistic)."
    ),
}
_VERDICT_NAMES = [v.name.lower() for v in sorted(Verdict, key=lambda v: v.value)]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _values(array: np.ndarray[Any, Any]) -> list[str]:
    """Sample values as the text format writes them (Go's +Inf, -Inf, NaN)."""
    values: list[float] = array.astype(np.float64).tolist()
    if np.isfinite(array).all():
        return list(map(repr, values))
    return [floatToGoString(v) for v in values]  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class FleetView:
    """A consistent copy of what a scrape reads. The fleet's arrays are read once each, by
    reference (growing one replaces it, never resizes it in place), and cut to the narrowest
    of them: a scrape while rollout states arrive and the arrays grow one after another sees
    the rows every array already has, never an index past one of them."""

    envs: list[str]  # escaped label values of the exported rows, one per column below
    window: Counts  # [series, exported rows]
    verdicts: NDArray[np.int8] | None  # [signal, exported rows] (None: no pass yet)
    statistic: NDArray[np.float64] | None
    threshold: float | None
    rows: int  # canaries in progress
    counted: int  # of those, the ones this worker counted lines for (judges)
    unexported: int  # counted rows beyond max_series
    verdict_counts: NDArray[np.int64] | None  # [signal, verdict] over every judged row
    cumulative: Counts  # [series, exported rows]: counted since the canary (epoch) started
    has_cumulative: NDArray[np.bool_]  # [exported rows]: False for a row the engine lacks yet


class FleetCollector(Collector):
    """Window ratios and verdicts of the environments in canary, read at scrape time.

    `text=True` (set by `metrics_app`): the per-environment families are rendered as text
    straight from the arrays (`render_text`), and `collect` yields only the fleet-wide ones;
    otherwise `collect` yields every family through prometheus_client (slower: a Python object
    per sample). Either way at most `max_series` environments, the most urgent first.
    """

    def __init__(
        self,
        fleet_source: Callable[[], Fleet | None],
        max_series: int = 1000,
        *,
        text: bool = False,
    ) -> None:
        self._fleet_source = fleet_source
        self.max_series = max_series
        self.text = text
        self._labels: dict[str, str] = {}

    def describe(self) -> Iterator[Metric]:
        # Named up front, so a scrape restricted with `?name[]=...` skips this collector.
        families = self._families()
        yield from (f for f in families if not self.text or f.name not in PER_ENV)
        yield self._outside_event_time(None)
        yield self._held(None)

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
    def _held(fleet: Fleet | None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "canarywatch_held_lines",
            "Request lines read and not yet attributed, held for their canary's snapshot "
            "(HOLD_S, at most HOLD_LINES): counted if it comes, unattributed after the hold.",
        )
        family.add_metric([], float(fleet.held_lines if fleet is not None else 0))
        return family

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        ratio = GaugeMetricFamily(
            "canarywatch_window_bad_ratio",
            _HELP["canarywatch_window_bad_ratio"],
            labels=["env", "arm", "signal"],
        )
        requests = GaugeMetricFamily(
            "canarywatch_window_requests",
            _HELP["canarywatch_window_requests"],
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
            _HELP["canarywatch_env_verdict"],
            labels=["env", "signal", "verdict"],
        )
        env_statistic = GaugeMetricFamily(
            "canarywatch_env_statistic",
            _HELP["canarywatch_env_statistic"],
            labels=["env", "signal"],
        )
        threshold = GaugeMetricFamily(
            "canarywatch_abort_threshold", "The statistic at which a canary is aborted."
        )
        env_counted = GaugeMetricFamily(
            "canarywatch_env_counted",
            _HELP["canarywatch_env_counted"],
            labels=["env", "series"],
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
            env_counted,
        )

    def view(self) -> FleetView | None:
        fleet = self._fleet_source()
        if fleet is None:
            return None
        attribution = fleet.attribution
        # Each read once; the worker's loop may replace any of them between two reads.
        states = list(attribution.states)
        active = attribution.active
        counted_rows = fleet.counted_rows
        window = fleet.windows.window_sum
        cumulative = fleet.engine.cumulative
        last = fleet.last_pass
        width = min(len(states), active.size, counted_rows.size, window.shape[1])
        in_progress = int(np.count_nonzero(active))
        judged = np.flatnonzero(active[:width] & counted_rows[:width])
        judged = judged[[states[row] is not None for row in judged.tolist()]]
        counted = int(judged.size)
        verdicts = statistic = verdict_counts = None
        threshold = None
        if last is not None:
            judged = judged[judged < last.verdicts.shape[1]]  # rows since the pass: no verdict
            verdict_counts = np.stack(
                [
                    np.bincount(last.verdicts[signal, judged], minlength=len(Verdict))
                    for signal in range(len(SIGNALS))
                ]
            )
        exported = self._most_urgent(judged, last.statistic if last is not None else None)
        if last is not None:
            verdicts = last.verdicts[:, exported]
            statistic = last.statistic[:, exported]
            threshold = last.threshold
        labels = self._labels
        if len(labels) > 4 * max(exported.size, 1024):
            labels.clear()
        envs = []
        for row in exported.tolist():
            state = states[row]
            assert state is not None
            label = labels.get(state.env)
            if label is None:
                label = labels[state.env] = _escape(state.env)
            envs.append(label)
        has_cumulative = exported < cumulative.shape[1]
        since = np.zeros((cumulative.shape[0], exported.size), dtype=np.int64)
        since[:, has_cumulative] = cumulative[:, exported[has_cumulative]]
        return FleetView(
            envs,
            window[:, exported],
            verdicts,
            statistic,
            threshold,
            in_progress,
            counted,
            int(judged.size - exported.size),
            verdict_counts,
            since,
            has_cumulative,
        )

    def _most_urgent(
        self, rows: NDArray[np.intp], statistic: NDArray[np.float64] | None
    ) -> NDArray[np.intp]:
        """At most `max_series` rows, highest statistic (over signals) first; ties by row."""
        if rows.size <= self.max_series:
            return rows
        if statistic is None:
            return rows[: self.max_series]
        urgency = statistic[:, rows].max(axis=0)
        order = np.lexsort((rows, -urgency))
        return np.sort(rows[order[: self.max_series]])

    def collect(self) -> Iterator[Metric]:
        yield from self._collect_fleet()
        fleet = self._fleet_source()
        yield self._outside_event_time(fleet)
        yield self._held(fleet)

    def _collect_fleet(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
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
            env_counted,
        ) = families
        view = self.view()
        if view is None:
            yield canaries
            return
        canaries.add_metric([], float(view.rows))
        counted.add_metric([], float(view.counted))
        unexported.add_metric([], float(view.unexported))
        if view.verdict_counts is not None and view.threshold is not None and view.counted:
            threshold.add_metric([], view.threshold)
            for signal, signal_name in enumerate(SIGNALS):
                for verdict in Verdict:
                    verdicts.add_metric(
                        [verdict.name.lower(), signal_name],
                        float(view.verdict_counts[signal, verdict.value]),
                    )
        if self.text:
            yield from (f for f in families if f.name not in PER_ENV)
            return
        # The slow path: one prometheus_client sample per series (tests, other registries).
        window = view.window
        for i, env in enumerate(view.envs):
            for arm, arm_name, total_series in (
                (ARM_CANARY, "canary", CANARY_REQUESTS),
                (ARM_STABLE, "stable", STABLE_REQUESTS),
            ):
                total = int(window[total_series, i])
                requests.add_metric([env, arm_name], float(total))
                for signal, signal_name in enumerate(SIGNALS):
                    bad = int(window[bad_series(signal, arm), i])
                    ratio.add_metric([env, arm_name, signal_name], bad / total if total else 0.0)
            for series, series_name in enumerate(SERIES_NAMES):
                if view.has_cumulative[i]:
                    env_counted.add_metric([env, series_name], float(view.cumulative[series, i]))
            if view.verdicts is not None and view.statistic is not None:
                for signal, signal_name in enumerate(SIGNALS):
                    name = _VERDICT_NAMES[int(view.verdicts[signal, i])]
                    env_verdict.add_metric([env, signal_name, name], 1.0)
                    env_statistic.add_metric([env, signal_name], float(view.statistic[signal, i]))
        yield from families

    def render_text(self, names: set[str] | None = None) -> str:
        """The per-environment families in the text format, from the arrays: one pass of
        string joins per series kind, no Python object per sample."""
        wanted = [n for n in PER_ENV if names is None or n in names]
        if not wanted:
            return ""  # a scrape restricted to other families: no fleet view to build
        view = self.view()
        if view is None or not view.envs:
            return ""
        out: list[str] = []
        envs = view.envs
        window = view.window
        for name in wanted:
            out.append(f"# HELP {name} {_HELP[name]}\n# TYPE {name} gauge\n")
            if name == "canarywatch_window_requests":
                for arm_name, series in (("canary", CANARY_REQUESTS), ("stable", STABLE_REQUESTS)):
                    head = f'{name}{{arm="{arm_name}",env="'
                    out.extend(
                        f'{head}{e}"}} {v}\n'
                        for e, v in zip(envs, _values(window[series]), strict=True)
                    )
            elif name == "canarywatch_window_bad_ratio":
                for arm, arm_name, series in (
                    (ARM_CANARY, "canary", CANARY_REQUESTS),
                    (ARM_STABLE, "stable", STABLE_REQUESTS),
                ):
                    total = window[series]
                    for signal, signal_name in enumerate(SIGNALS):
                        bad = window[bad_series(signal, arm)]
                        ratio = np.divide(bad, total, out=np.zeros(total.shape), where=total > 0)
                        head = f'{name}{{arm="{arm_name}",env="'
                        tail = f'",signal="{signal_name}"}} '
                        out.extend(
                            f"{head}{e}{tail}{v}\n"
                            for e, v in zip(envs, _values(ratio), strict=True)
                        )
            elif name == "canarywatch_env_counted":
                present = view.has_cumulative
                counted_envs = [e for e, p in zip(envs, present.tolist(), strict=True) if p]
                head = f'{name}{{env="'
                for series, series_name in enumerate(SERIES_NAMES):
                    tail = f'",series="{series_name}"}} '
                    values = _values(view.cumulative[series, present])
                    out.extend(
                        f"{head}{e}{tail}{v}\n" for e, v in zip(counted_envs, values, strict=True)
                    )
            elif view.verdicts is not None and view.statistic is not None:
                for signal, signal_name in enumerate(SIGNALS):
                    if name == "canarywatch_env_statistic":
                        head, tail = f'{name}{{env="', f'",signal="{signal_name}"}} '
                        values = _values(view.statistic[signal])
                        out.extend(
                            f"{head}{e}{tail}{v}\n" for e, v in zip(envs, values, strict=True)
                        )
                    else:
                        head = f'{name}{{env="'
                        tails = [f'",signal="{signal_name}",verdict="{v}"}} 1.0\n'
                                 for v in _VERDICT_NAMES]  # fmt: skip
                        codes = view.verdicts[signal].tolist()
                        out.extend(f"{head}{e}{tails[c]}" for e, c in zip(envs, codes, strict=True))
        return "".join(out)


def metrics_app(
    registry: CollectorRegistry, fleet: FleetCollector | None = None
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app for /metrics: the registry through prometheus_client, then the fleet's
    per-environment families as text from its arrays (`fleet.text` is set). `?name[]=...`
    restricts both, as prometheus_client's own app does. A drop-in for `make_wsgi_app`."""
    if fleet is not None:
        fleet.text = True

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        names = set(parse_qs(environ.get("QUERY_STRING", "")).get("name[]", [])) or None
        source = registry.restricted_registry(list(names)) if names else registry
        body = generate_latest(source)
        if fleet is not None:
            body += fleet.render_text(names).encode()
        start("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return app
