"""The worker's /metrics: the per-environment families rendered from the arrays say exactly what
prometheus_client's own rendering of the same collector says (counted-only, capped at
`max_series`); served over real HTTP by `serve_health`; a scrape while the fleet's arrays grow
sees a consistent snapshot."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.health import Readiness, serve_health
from agents.metrics import FleetCollector, metrics_app
from agents.processes import free_port
from streams.events import RolloutState
from streams.eventtime import EventTimeSettings
from streams.fleet import Fleet
from tests.test_metrics import lines
from tests.test_status import judged_fleet

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fast_text(fleet: Fleet, max_series: int = 1000) -> str:
    registry = CollectorRegistry()
    collector = FleetCollector(lambda: fleet, max_series)
    registry.register(collector)
    body = b"".join(metrics_app(registry, collector)({}, lambda *_: None))
    return body.decode()


def slow_samples(fleet: Fleet, max_series: int = 1000) -> Samples:
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: fleet, max_series))
    return samples(generate_latest(registry).decode())


def test_text_rendering_matches_prometheus_client_and_is_served() -> None:
    fleet = judged_fleet()
    expected = slow_samples(fleet)
    assert any(name == "canarywatch_env_verdict" for name, _ in expected)
    assert any(name == "canarywatch_env_counted" for name, _ in expected)

    fast = CollectorRegistry()
    collector = FleetCollector(lambda: fleet)
    fast.register(collector)
    port = free_port()
    server = serve_health(
        port, fast, Readiness("worker"), addr="127.0.0.1", metrics=metrics_app(fast, collector)
    )
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert samples(text) == expected
        query = "?name[]=canarywatch_env_verdict&name[]=canarywatch_canaries_in_progress"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=5) as r:
            only = samples(r.read().decode())
        assert {name for name, _ in only} == {
            "canarywatch_env_verdict",
            "canarywatch_canaries_in_progress",
        }
        assert only == {k: v for k, v in expected.items() if k[0] in {n for n, _ in only}}
    finally:
        server.shutdown()
        server.server_close()


def grown_fleet(canaries: int) -> Fleet:
    """`canaries` environments, every one counted and judged (processing time: at once)."""
    fleet = Fleet(event_time=EventTimeSettings(enabled=False))
    for i in range(canaries):
        fleet.apply_rollout(RolloutState(f"ns-{i}", "web", "c", "s", canary_weight=50), 0.0)
    for t in range(1, 4):
        batch: list[bytes] = []
        for i in range(canaries):
            errors = 6 if i % 7 == 0 else 0
            batch += lines(f"ns-{i}", "c", 10, errors, t) + lines(f"ns-{i}", "s", 10, 0, t)
        fleet.count(batch, float(t))
        fleet.evaluate(float(t))
    return fleet


def test_the_text_path_keeps_the_cap_and_counted_only_export() -> None:
    fleet = grown_fleet(20)
    fleet.apply_rollout(RolloutState("idle", "web", "c", "s", canary_weight=50), 4.0)
    fast = samples(fast_text(fleet, max_series=3))
    assert fast == slow_samples(fleet, max_series=3)
    exported = {dict(labels)["env"] for name, labels in fast if name == "canarywatch_env_verdict"}
    assert exported == {"ns-0/web", "ns-7/web", "ns-14/web"}  # the failing ones: most urgent
    assert fast[("canarywatch_canaries_in_progress", frozenset())] == 21.0
    assert fast[("canarywatch_env_series_unexported", frozenset())] == 17.0


def test_a_scrape_while_the_arrays_grow_sees_a_consistent_snapshot() -> None:
    """Issue 16: `/metrics` failed with "index 64 is out of bounds for axis 1 with size 64"
    while rollout states loaded. `Fleet.apply_rollout` grows the attribution's arrays first,
    then the windows, then `counted_rows`; the scrape thread can run between any two. Here the
    fleet is stopped at each of those points and scraped both ways."""
    fleet = grown_fleet(64)  # the default capacity: full
    before = slow_samples(fleet)
    newcomer = RolloutState("ns-new", "web", "c2", "s2", canary_weight=50)
    fleet.attribution.apply(newcomer)  # attribution grown to 128, nothing else yet
    assert fleet.attribution.active.size > fleet.windows.window_sum.shape[1]
    for stage in ("attribution grown", "windows grown"):
        text = samples(fast_text(fleet))
        assert text == slow_samples(fleet), stage
        per_env = {k: v for k, v in text.items() if k[0].startswith("canarywatch_env_")}
        assert per_env == {k: v for k, v in before.items() if k[0].startswith("canarywatch_env_")}
        assert text[("canarywatch_canaries_in_progress", frozenset())] == 65.0
        fleet.windows.grow(fleet.attribution.capacity)  # next: windows, counted_rows still 64
        fleet.engine.grow(fleet.attribution.capacity)
    assert fleet.counted_rows.size < fleet.windows.window_sum.shape[1]
