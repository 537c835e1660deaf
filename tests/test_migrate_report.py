"""agents.migrate without a cluster: the plan as JSON and as a table, the final report, metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console

from agents.migrate import MigrateMetrics, Report
from agents.migrate_report import plan_json, plan_table
from streams.migration import ANN_PHASE, ANN_REASON, ScaleDown, plan_service, waves
from tests.test_migration_logic import TEMPLATE, deployment


def plans() -> list[Any]:
    ok = deployment("web", 2)
    recreate = deployment("db", 1, strategy={"type": "Recreate"})
    done = deployment("api", 3)
    done["metadata"]["annotations"] = {ANN_PHASE: "migrated"}
    return [
        plan_service(
            d,
            rollouts=[],
            hpas=[],
            pdbs=[],
            services=[],
            template_spec=TEMPLATE,
            scale_down=ScaleDown.ONSUCCESS,
            now=0.0,
        )
        for d in (ok, recreate, done)
    ]


def test_plan_json_and_table() -> None:
    p = plans()
    order = waves(p, 10)
    doc = plan_json(p, order)
    assert doc["services"] == 3 and doc["ready"] == 1 and doc["blocked"] == 1
    assert doc["waves"] == [["shop/web"]]
    by_name = {x["name"]: x for x in doc["plans"]}
    assert by_name["web"]["wave"] == 1 and by_name["db"]["wave"] is None
    assert by_name["web"]["rollout"]["spec"]["workloadRef"]["name"] == "web"
    console = Console(width=250, record=True)
    console.print(plan_table(p, order))
    text = console.export_text()
    assert "Recreate" in text and "ready" in text and "migrated" in text


def test_final_report_comes_from_the_cluster() -> None:
    p = plans()
    rolled = deployment("cart", 1)
    rolled["metadata"]["annotations"] = {ANN_PHASE: "rolled-back", ANN_REASON: "Degraded"}
    migrated = deployment("api", 3)
    migrated["metadata"]["annotations"] = {ANN_PHASE: "migrated"}
    final = Report(p).final([deployment("web", 2), deployment("db", 1), migrated, rolled])
    assert final["migrated"] == ["shop/api"]
    assert final["rolled_back"] == {"shop/cart": "Degraded"}
    assert list(final["blocked"]) == ["shop/db"]
    assert final["not_done"] == ["shop/web"]


def test_metrics_are_registered() -> None:
    registry = CollectorRegistry()
    metrics = MigrateMetrics(registry)
    metrics.services.labels("migrated").inc()
    names = {family.name for family in registry.collect()}
    assert {
        "canarywatch_migrate_services",
        "canarywatch_migrate_actions",
        "canarywatch_migrate_wave",
        "canarywatch_migrate_in_flight",
        "canarywatch_migrate_service_seconds",
    } <= names
