"""Deployment files stay in step with the code: metric names, commands, settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agents.actuator import ActuatorMetrics
from agents.bridge import BridgeMetrics
from agents.cli import _parser
from agents.metrics import FleetCollector, WorkerMetrics
from agents.releaseagent import ReleaseMetrics
from agents.settings import settings_from_env
from streams.events import RolloutState
from streams.fleet import Fleet

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def exported_names() -> set[str]:
    """What the worker, actuator, bridge and release agent export (a registry each)."""
    worker, actuator, bridge = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    releases = CollectorRegistry()
    WorkerMetrics(worker)
    ActuatorMetrics(actuator)
    BridgeMetrics(bridge)
    ReleaseMetrics(releases)
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1"), now=0.0)
    fleet.evaluate(1.0)
    worker.register(FleetCollector(lambda: fleet))
    names = set()
    for registry in (worker, actuator, bridge, releases):
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bcanarywatch_[a-z_]+\b", text))


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_names()
    rules = (ROOT / "deploy/prometheus/canarywatch-rules.yaml").read_text()
    dashboard = (ROOT / "deploy/grafana/canarywatch-dashboard.json").read_text()
    used = referenced(rules) | referenced(dashboard)
    assert used, "the files reference no metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_rules_are_well_formed() -> None:
    doc = yaml.safe_load((ROOT / "deploy/prometheus/canarywatch-rules.yaml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert ("alert" in rule) != ("record" in rule), rule
        assert rule["expr"].strip()
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert rule["annotations"]["summary"]


def test_dashboard_panels_have_queries() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/canarywatch-dashboard.json").read_text())
    assert all(panel["targets"] for panel in dashboard["panels"])


def commands_in(doc: object) -> list[list[str]]:
    """Every container command/args list found in a YAML document."""
    found: list[list[str]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("command", "args") and isinstance(value, list):
                found.append([str(v) for v in value])
            else:
                found.extend(commands_in(value))
    elif isinstance(doc, list):
        for item in doc:
            found.extend(commands_in(item))
    return found


def test_compose_and_manifests_run_real_subcommands() -> None:
    parser = _parser()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    invocations = commands_in(compose)
    for path in sorted((ROOT / "deploy/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            invocations.extend(cmd[1:] for cmd in commands_in(doc) if cmd[:1] == ["canarywatch"])
    assert invocations
    for argv in invocations:
        parser.parse_args(argv)  # exits (fails the test) on an unknown subcommand or flag


@pytest.mark.parametrize("policy", ["pause", "dry-run"])
def test_each_policy_overlay_sets_a_real_policy(policy: str) -> None:
    """overlays/<policy> sets CANARYWATCH_ACTION_POLICY to a value the settings accept (what
    its RBAC allows and forbids is test_kube_rbac.py's, on a real API server)."""
    kustomization = yaml.safe_load(
        (ROOT / "deploy/overlays" / policy / "kustomization.yaml").read_text()
    )
    assert kustomization["resources"][0] == "../../base"
    env = [
        op["value"]
        for patch in kustomization["patches"]
        if patch.get("target", {}).get("name") == "canarywatch-actuator"
        for op in yaml.safe_load(patch["patch"])
        if op["path"].endswith("/env/-")
    ]
    assert env == [{"name": "CANARYWATCH_ACTION_POLICY", "value": policy}]
    settings = settings_from_env({e["name"]: e["value"] for e in env})
    assert settings.action_policy.value == policy


def test_probes_use_the_health_endpoints_not_metrics() -> None:
    """A scrape at thousands of canaries takes seconds; probes must not restart a healthy pod."""
    probes = []
    for path in sorted((ROOT / "deploy/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for container in (
                (doc or {})
                .get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("containers", [])
            ):
                for kind, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                    if kind in container:
                        probes.append((path.name, kind))
                        assert container[kind]["httpGet"]["path"] == want, (path.name, kind)
    assert len(probes) >= 6
