"""`canarywatch migrate` against a real API server and the real Argo Rollouts controller.

An API server of its own (the controller runs cluster-wide there), the stand-in kubelet marking
ReplicaSets and Deployments, and `canarywatch migrate` as a child process with the migrator
ServiceAccount's token (so deploy/base's RBAC is enough for it):

- `--dry-run` prints the plan (table and JSON) with its blockers and changes nothing;
- 200 Deployments in 20 namespaces (HPAs, PDBs, 6 that never become healthy) migrate in waves
  while the migrator is `kill -9`ed mid-wave and started again: every healthy one ends as a
  Healthy Rollout with its HPA moved and its Deployment at 0, every failing one is rolled back
  (Deployment at its replicas, HPA back, Rollout gone), no Rollout is created twice, and at no
  watched change did a service have fewer available replicas than its floor;
- a third run changes nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from streams.migration import ANN_PHASE, ANN_REASON, ANN_REPLICAS
from tests.support.argo import dump
from tests.support.localkube import REPO_ROOT, wait_until
from tests.support.migration import (
    FLEET_LABEL,
    MigrationCluster,
    MigratorProcess,
    ScenarioResult,
    Service,
    fleet,
    migrator_argv,
    run_scenario,
    write_template,
)

pytestmark = [pytest.mark.kube, pytest.mark.argo, pytest.mark.timeout(900)]

SERVICES = fleet(namespaces=20, per_namespace=10, never_ready=6)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigrationCluster]:
    with MigrationCluster(tmp_path_factory.mktemp("migrate")) as cluster:
        yield cluster
        assert cluster.controller is not None and cluster.kubelet is not None
        cluster.controller.check_alive()
        assert not cluster.kubelet.errors[5:], cluster.kubelet.errors


def migrate_cli(
    cluster: MigrationCluster, tmp: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    kubeconfig = cluster.write_kubeconfig("migrator")
    template = write_template(tmp / "template.yaml")
    argv = [sys.executable, "-m", "agents.cli", "migrate", f"--kubeconfig={kubeconfig}"]
    argv += [f"--template={template}", *args]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def blocked_namespace(cluster: MigrationCluster) -> None:
    """mig-blocked: one Deployment that can move, and three that cannot."""
    ns = "mig-blocked"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    def deployment(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": {"tier": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/a:1"}]},
                },
                **spec,
            },
        }

    hashpdb = deployment("hashpdb")
    hashpdb["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] = "abc"
    for obj in (
        deployment("ok"),
        deployment("singleton", strategy={"type": "Recreate"}),
        deployment("taken"),
        hashpdb,
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "legacy", "namespace": ns},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "taken"}},
                "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "taken"},
                "strategy": {"canary": {}},
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "hashpdb", "namespace": ns},
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": {"app": "hashpdb", "pod-template-hash": "abc"}},
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "ok", "namespace": ns},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "ok"}}},
        },
    ):
        cluster.kube.apply(obj)
    apps = k8s.AppsV1Api(cluster.admin)

    def marked() -> bool:
        items = apps.list_namespaced_deployment(ns).items
        return all((d.status and d.status.available_replicas) == 2 for d in items)

    wait_until(marked, timeout=60, what="mig-blocked Deployments available")


def versions(cluster: MigrationCluster, namespace: str) -> dict[str, str]:
    listed = k8s.AppsV1Api(cluster.admin).list_namespaced_deployment(namespace)
    return {
        str(d.metadata and d.metadata.name): str(d.metadata and d.metadata.resource_version)
        for d in listed.items
    }


def test_dry_run_prints_the_plan_and_changes_nothing(
    cluster: MigrationCluster, tmp_path: Path
) -> None:
    blocked_namespace(cluster)
    before = versions(cluster, "mig-blocked")
    common = ("--namespace=mig-blocked", "--selector=tier=web", "--dry-run")
    table = migrate_cli(cluster, tmp_path, *common)
    assert table.returncode == 0, table.stderr
    for word in ("wave", "deployment", "floor", "ok", "ready", "blocked", "Recreate"):
        assert word in table.stdout, table.stdout
    out = migrate_cli(cluster, tmp_path, *common, "--output=json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    by_name = {p["name"]: p for p in plan["plans"]}
    assert plan["services"] == 4 and plan["ready"] == 1 and plan["blocked"] == 3
    ok = by_name["ok"]
    assert ok["blockers"] == [] and ok["wave"] == 1 and ok["pdbs"] == ["ok"]
    assert ok["availability_floor"] == 1
    assert ok["rollout"]["spec"]["workloadRef"]["name"] == "ok"
    assert ok["rollout"]["spec"]["selector"] == {"matchLabels": {"app": "ok"}}
    assert ok["rollout"]["spec"]["strategy"]["canary"]["steps"]
    assert any("Recreate" in b for b in by_name["singleton"]["blockers"])
    assert any("owned by Rollout legacy" in b for b in by_name["taken"]["blockers"])
    assert any("pod-template-hash" in b for b in by_name["hashpdb"]["blockers"])
    after = versions(cluster, "mig-blocked")
    assert after == before  # nothing written
    assert set(cluster.rollouts()) == {"mig-blocked/legacy"}


@pytest.fixture(scope="module")
def migrated(cluster: MigrationCluster, tmp_path_factory: pytest.TempPathFactory) -> ScenarioResult:
    workdir = tmp_path_factory.mktemp("scenario")
    return run_scenario(
        cluster,
        SERVICES,
        workdir,
        kill_at=90,
        wave_size=40,
        concurrency=40,
        failure_budget=0.2,
        health_timeout=60,
    )


def test_fleet_migrates_in_waves_through_a_kill_9(migrated: ScenarioResult) -> None:
    r = migrated
    log = r.log.read_text(errors="replace")[-4000:]
    assert r.exit_codes == [-9, 0], log
    assert r.killed_in_progress >= 3 and 0 < r.killed_at_started < len(SERVICES)
    failing = sorted(s.key for s in SERVICES if s.never_ready)
    assert r.outcome("rolled-back") == failing, log
    assert len(r.outcome("migrated")) == len(SERVICES) - len(failing), log
    assert "wave 1/" in log and "migrated" in log  # the per-wave summary
    assert r.report["migrated"] == r.outcome("migrated")
    assert sorted(r.report["rolled_back"]) == failing
    assert all("Degraded" in why or "Healthy" in why for why in r.report["rolled_back"].values())


def test_no_moment_below_the_floor_and_no_second_rollout(migrated: ScenarioResult) -> None:
    f = migrated.findings
    assert not migrated.recorder_errors, migrated.recorder_errors
    assert f.changes > 1000  # every status change of 200 services was seen
    assert f.unavailable_moments == 0, f.examples
    assert f.early_scale_downs == 0, f.examples
    assert f.duplicate_rollouts == 0, f.rollouts_created
    created = set(f.rollouts_created)
    assert created >= {s.key for s in SERVICES}  # each got exactly one Rollout, once


def test_end_state_of_every_service(migrated: ScenarioResult) -> None:
    for svc in SERVICES:
        dep = migrated.deployments[svc.key]
        ann = dep["metadata"]["annotations"]
        assert ann[ANN_REPLICAS] == str(svc.replicas)
        hpa = migrated.hpas.get(svc.key)
        target = hpa["spec"]["scaleTargetRef"]["kind"] if hpa else None
        if svc.never_ready:
            assert ann[ANN_PHASE] == "rolled-back" and ann[ANN_REASON], dump(dep)
            assert dep["spec"]["replicas"] == svc.replicas
            assert dep["status"]["availableReplicas"] == svc.replicas
            assert svc.key not in migrated.rollouts
            assert target in (None, "Deployment")
        else:
            assert ann[ANN_PHASE] == "migrated", dump(dep)
            assert dep["spec"]["replicas"] == 0
            rollout = migrated.rollouts[svc.key]
            assert rollout["status"]["phase"] == "Healthy", dump(rollout["status"])
            assert rollout["status"]["availableReplicas"] == svc.replicas
            assert rollout["spec"]["workloadRef"]["name"] == svc.name
            assert target == ("Rollout" if svc.hpa else None)


def test_running_it_again_changes_nothing(
    cluster: MigrationCluster, migrated: ScenarioResult, tmp_path: Path
) -> None:
    before = {k: d["metadata"]["resourceVersion"] for k, d in cluster.deployments().items()}
    rollouts = {k: r["metadata"]["uid"] for k, r in cluster.rollouts().items()}
    report = tmp_path / "again.json"
    argv = migrator_argv(
        cluster.write_kubeconfig("migrator"),
        write_template(tmp_path / "t.yaml"),
        report,
        SERVICES,
        wave_size=40,
        concurrency=40,
    )
    code = MigratorProcess(argv, tmp_path / "again.log").start().wait(120)
    assert code == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert {k: d["metadata"]["resourceVersion"] for k, d in cluster.deployments().items()} == before
    assert {k: r["metadata"]["uid"] for k, r in cluster.rollouts().items()} == rollouts
    final = json.loads(report.read_text())
    assert len(final["migrated"]) == len(SERVICES) - 6 and len(final["rolled_back"]) == 6
    assert FLEET_LABEL  # the selector the runs used


def test_a_wave_over_its_failure_budget_stops_the_migration(
    cluster: MigrationCluster, migrated: ScenarioResult, tmp_path: Path
) -> None:
    """Runs after the fleet (its namespace is outside the fleet's): the first wave's two
    services never get healthy, the budget is 0, so the second wave never starts."""
    services = [
        Service("mig-budget", f"b-{i}", 1, False, None, never_ready=i < 2) for i in range(4)
    ]
    cluster.create_fleet(services)
    report = tmp_path / "budget.json"
    argv = migrator_argv(
        cluster.write_kubeconfig("migrator"),
        write_template(tmp_path / "t.yaml"),
        report,
        services,
        wave_size=2,
        concurrency=2,
        failure_budget=0,
        health_timeout=60,
    )
    log = tmp_path / "budget.log"
    assert MigratorProcess(argv, log).start().wait(120) == 1, log.read_text()[-3000:]
    final = json.loads(report.read_text())
    assert sorted(final["rolled_back"]) == ["mig-budget/b-0", "mig-budget/b-1"]
    assert final["not_done"] == ["mig-budget/b-2", "mig-budget/b-3"]
    assert final["stopped"].startswith("wave 1: 2 of 2 services failed")
    assert "stopped" in log.read_text()
    deployments = cluster.deployments()
    for name in ("b-2", "b-3"):  # never touched
        dep = deployments[f"mig-budget/{name}"]
        assert not (dep["metadata"].get("annotations") or {}).get(ANN_PHASE)
        assert dep["spec"]["replicas"] == 1
    assert not {k for k in cluster.rollouts() if k.startswith("mig-budget/")}


def test_explicit_scale_down_through_a_kill_9_scales_each_deployment_down_once(
    cluster: MigrationCluster, migrated: ScenarioResult, tmp_path: Path
) -> None:
    """`--scale-down explicit`: the migrator scales each Deployment to 0 itself, in the patch
    that records it; killed mid-wave and restarted, it never does it twice."""
    services = fleet(namespaces=4, per_namespace=10, never_ready=2, prefix="mx")
    r = run_scenario(
        cluster,
        services,
        tmp_path,
        kill_at=15,
        wave_size=10,
        concurrency=10,
        failure_budget=0.3,
        health_timeout=60,
        scale_down="explicit",
    )
    log = r.log.read_text(errors="replace")[-4000:]
    assert r.exit_codes == [-9, 0], log
    failing = sorted(s.key for s in services if s.never_ready)
    assert r.outcome("rolled-back") == failing, log
    assert len(r.outcome("migrated")) == len(services) - len(failing), log
    f = r.findings
    assert f.unavailable_moments == 0 and f.early_scale_downs == 0, f.examples
    assert f.duplicate_rollouts == 0, f.rollouts_created
    for svc in services:
        expected = 0 if svc.never_ready else 1
        assert f.scale_downs.get(svc.key, 0) == expected, (svc.key, f.scale_downs.get(svc.key))
        if not svc.never_ready:
            ref = r.rollouts[svc.key]["spec"]["workloadRef"]
            assert ref["scaleDown"] == "never"  # the controller was never asked to scale it


def test_sigterm_stops_at_the_next_step_and_a_rerun_finishes(
    cluster: MigrationCluster, migrated: ScenarioResult, tmp_path: Path
) -> None:
    services = fleet(namespaces=1, per_namespace=8, never_ready=0, prefix="mt")
    cluster.create_fleet(services)
    report = tmp_path / "term.json"
    argv = migrator_argv(
        cluster.write_kubeconfig("migrator"),
        write_template(tmp_path / "t.yaml"),
        report,
        services,
        wave_size=2,
        concurrency=2,
    )
    log = tmp_path / "term.log"
    first = MigratorProcess(argv, log).start()
    try:

        def some_started() -> bool:
            deps = cluster.deployments()
            return sum(1 for s in services if ANN_PHASE in _annotations(deps[s.key])) >= 2

        wait_until(some_started, timeout=60, what="two services started")
        assert first.popen is not None
        first.popen.send_signal(signal.SIGTERM)
        assert first.wait(60) == 1, log.read_text()[-3000:]
    finally:
        first.stop()
    assert "interrupted" in json.loads(report.read_text())["stopped"]
    assert MigratorProcess(argv, log).start().wait(120) == 0, log.read_text()[-3000:]
    final = json.loads(report.read_text())
    assert final["migrated"] == sorted(s.key for s in services) and not final["stopped"]


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})
