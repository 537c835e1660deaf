"""The alert rules, checked and unit-tested by promtool; the counters they need start at 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agents.actuator import ActuatorMetrics, Outcome
from agents.bridge import BridgeMetrics
from agents.metrics import WorkerMetrics
from streams.decisions import SIGNALS

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy/prometheus/canarywatch-rules.yaml"
RULE_TESTS = ROOT / "tests/prometheus/rules_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from Debian, installed by the project's script when missing."""
    found = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-promtool.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return found.stdout.strip().splitlines()[-1]


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=RULE_TESTS.parent, capture_output=True, text=True, check=False
    )


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_promtool_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    untested = alerts - tested
    assert not untested, f"alerts without a promtool test: {sorted(untested)}"


def test_labelled_counters_that_alerts_read_start_at_zero() -> None:
    worker = CollectorRegistry()
    WorkerMetrics(worker)
    for signal in SIGNALS:
        assert worker.get_sample_value("canarywatch_abort_commands_total", {"signal": signal}) == 0
    for outcome in ("counted", "unattributed", "invalid"):
        value = worker.get_sample_value("canarywatch_request_lines_total", {"outcome": outcome})
        assert value == 0
    actuator = CollectorRegistry()
    ActuatorMetrics(actuator)
    for result in Outcome:
        labels = {"outcome": result.value}
        assert actuator.get_sample_value("canarywatch_actuator_commands_total", labels) == 0
    bridge = CollectorRegistry()
    BridgeMetrics(bridge)
    labels = {"reason": "error"}
    assert bridge.get_sample_value("canarywatch_bridge_watch_restarts_total", labels) == 0
