"""The worker's /metrics: the per-environment families rendered from the arrays say exactly what
prometheus_client's own rendering of the same collector says; served over real HTTP."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import FleetCollector, serve_metrics
from agents.processes import free_port
from tests.test_status import judged_fleet

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_text_rendering_matches_prometheus_client_and_is_served() -> None:
    fleet = judged_fleet()
    slow = CollectorRegistry()
    slow.register(FleetCollector(lambda: fleet))
    expected = samples(generate_latest(slow).decode())
    assert any(name == "canarywatch_env_verdict" for name, _ in expected)

    fast = CollectorRegistry()
    collector = FleetCollector(lambda: fleet)
    fast.register(collector)
    port = free_port()
    server = serve_metrics(port, fast, collector)
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
