"""Per-environment series: only canaries this worker counted lines for, at most `max_series`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agents.metrics import FleetCollector
from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import EventTimeSettings
from streams.fleet import Fleet


def lines(ns: str, pod_hash: str, n: int, errors: int, t: float) -> list[bytes]:
    return [
        encode_request_line(
            RequestLine(t, ns, f"web-{pod_hash}", pod_hash, 503 if i < errors else 200, 20.0)
        )
        for i in range(n)
    ]


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


def exported_envs(registry: CollectorRegistry) -> set[str]:
    return {
        s.labels["env"]
        for family in registry.collect()
        if family.name == "canarywatch_env_verdict"
        for s in family.samples
    }


def fleet_with(canaries: int) -> Fleet:
    fleet = Fleet()
    for i in range(canaries):
        fleet.apply_rollout(RolloutState(f"ns-{i}", "web", "c", "s", canary_weight=50), 0.0)
    return fleet


def test_envs_without_counted_lines_are_not_exported() -> None:
    fleet = fleet_with(5)
    fleet.count(lines("ns-1", "c", 10, 0, 1.0) + lines("ns-3", "s", 10, 0, 1.0), 1.0)
    fleet.evaluate(1.0)
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: fleet))
    assert exported_envs(registry) == {"ns-1/web", "ns-3/web"}
    assert sample(registry, "canarywatch_canaries_in_progress") == 5.0
    assert sample(registry, "canarywatch_canaries_counted") == 2.0
    total = sum(
        s.value
        for family in registry.collect()
        if family.name == "canarywatch_verdicts"
        for s in family.samples
        if s.labels["signal"] == "errors"
    )
    assert total == 2.0  # the aggregate covers the judged canaries, every one of them


def test_series_are_capped_to_the_most_urgent_and_aggregates_stay_exact() -> None:
    fleet = fleet_with(10)
    for t in range(1, 6):
        batch: list[bytes] = []
        for i in range(10):
            errors = 8 if i in (2, 7) else 0  # two canaries failing: the most urgent
            batch += lines(f"ns-{i}", "c", 10, errors, t) + lines(f"ns-{i}", "s", 10, 0, t)
        fleet.count(batch, float(t))
        fleet.evaluate(float(t))
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: fleet, max_series=2))
    assert exported_envs(registry) == {"ns-2/web", "ns-7/web"}
    assert sample(registry, "canarywatch_canaries_counted") == 10.0
    assert sample(registry, "canarywatch_env_series_unexported") == 8.0
    total = sum(
        s.value
        for family in registry.collect()
        if family.name == "canarywatch_verdicts"
        for s in family.samples
        if s.labels["signal"] == "errors"
    )
    assert total == 10.0


def test_lines_outside_event_time_are_counted_by_reason() -> None:
    fleet = Fleet(event_time=EventTimeSettings(enabled=True, allowed_lateness_s=2.0))
    fleet.apply_rollout(RolloutState("ns-0", "web", "c", "s", canary_weight=50), 0.0)
    fleet.count(lines("ns-0", "c", 10, 0, 100.0), 100.0)
    fleet.count(lines("ns-0", "c", 3, 0, 90.0) + lines("ns-0", "s", 2, 0, 500.0), 101.0)
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: fleet))
    name = "canarywatch_lines_outside_event_time_total"
    assert registry.get_sample_value(name, {"reason": "late"}) == 3.0
    assert registry.get_sample_value(name, {"reason": "future"}) == 2.0


def test_lines_held_for_their_snapshot_are_a_gauge() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("ns-0", "web", "c", "s", canary_weight=50), 0.0)
    fleet.count(lines("ns-0", "c", 4, 0, 1.0) + lines("ns-9", "x", 7, 0, 1.0), 1.0)
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: fleet))
    assert registry.get_sample_value("canarywatch_held_lines") == 7.0  # ns-9 has no snapshot yet
    fleet.apply_rollout(RolloutState("ns-9", "web", "x", "y", canary_weight=10), 2.0)
    fleet.release_held(2.5)
    assert registry.get_sample_value("canarywatch_held_lines") == 0.0
