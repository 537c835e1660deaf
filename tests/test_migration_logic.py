"""streams.migration: the plan, the waves and the per-service state machine, on plain dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from streams.migration import (
    ANN_CREATED_AT,
    ANN_PHASE,
    ANN_REASON,
    ANN_REPLICAS,
    Act,
    Action,
    Phase,
    ScaleDown,
    TemplateError,
    availability_floor,
    build_rollout,
    next_action,
    pdb_allowance,
    plan_service,
    validate_template,
    wave_failed,
    waves,
)

TEMPLATE = validate_template(
    {"strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}}
)


def deployment(name: str = "web", replicas: int = 4, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"app": name, "team": "a"},
            "generation": 1,
            "resourceVersion": "10",
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}},
            **spec,
        },
        "status": {"observedGeneration": 1, "availableReplicas": replicas},
    }


def hpa(target_kind: str = "Deployment", name: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}-hpa", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": target_kind, "name": name}},
    }


def pdb(selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web-pdb"}, "spec": {"selector": selector, **spec}}


def plan(dep: dict[str, Any], **others: Any) -> Any:
    kwargs: dict[str, Any] = {"rollouts": [], "hpas": [], "pdbs": [], "services": []}
    kwargs.update(others)
    return plan_service(
        dep, template_spec=TEMPLATE, scale_down=ScaleDown.PROGRESSIVELY, now=100.0, **kwargs
    )


def test_template_needs_a_canary_and_no_pod_template() -> None:
    with pytest.raises(TemplateError):
        validate_template({"strategy": {"blueGreen": {}}})
    with pytest.raises(TemplateError):
        validate_template({"strategy": {"canary": {}}, "selector": {}})
    whole = {"kind": "Rollout", "spec": {"strategy": {"canary": {"steps": []}}}}
    assert validate_template(whole) == {"strategy": {"canary": {"steps": []}}}


def test_the_rollout_refers_to_the_deployment_with_its_selector_labels_and_replicas() -> None:
    dep = deployment(replicas=4, minReadySeconds=5)
    rollout = build_rollout(dep, TEMPLATE, ScaleDown.ONSUCCESS, created_at=12.5)
    assert rollout["metadata"]["name"] == "web"
    assert rollout["metadata"]["labels"]["app"] == "web"
    assert rollout["metadata"]["annotations"][ANN_CREATED_AT] == "12.500"
    spec = rollout["spec"]
    assert spec["workloadRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "scaleDown": "onsuccess",
    }
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["replicas"] == 4
    assert spec["minReadySeconds"] == 5
    assert "template" not in spec  # the controller takes it from the Deployment
    assert spec["strategy"] == TEMPLATE["strategy"]
    explicit = build_rollout(dep, TEMPLATE, ScaleDown.EXPLICIT, created_at=0)
    assert explicit["spec"]["workloadRef"]["scaleDown"] == "never"


def test_plan_finds_the_hpa_the_pdb_and_the_services() -> None:
    svc = {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}}
    other = {"metadata": {"name": "db"}, "spec": {"selector": {"app": "db"}}}
    p = plan(
        deployment(),
        hpas=[hpa()],
        pdbs=[pdb({"matchLabels": {"app": "web"}}, maxUnavailable=1)],
        services=[svc, other],
    )
    assert not p.blocked, p.blockers
    assert p.hpa == "web-hpa"
    assert p.pdbs == ("web-pdb",)
    assert p.services == ("web",)
    assert p.floor == 3
    assert p.scale_down is ScaleDown.ONSUCCESS  # an HPA would fight a progressive scale-down
    assert plan(deployment()).floor == 4
    assert plan(deployment()).scale_down is ScaleDown.PROGRESSIVELY
    assert plan(deployment(minReadySeconds=10)).scale_down is ScaleDown.ONSUCCESS


@pytest.mark.parametrize(
    ("dep", "others", "reason"),
    [
        (
            deployment(),
            {
                "rollouts": [
                    {
                        "metadata": {"name": "legacy"},
                        "spec": {"workloadRef": {"kind": "Deployment", "name": "web"}},
                    }
                ]
            },
            "already owned by Rollout legacy",
        ),
        (deployment(), {"rollouts": [{"metadata": {"name": "web"}, "spec": {}}]}, "not made by"),
        (deployment(strategy={"type": "Recreate"}), {}, "unsupported strategy Recreate"),
        (deployment(paused=True), {}, "paused"),
        (deployment(replicas=0), {}, "scaled to 0"),
        (
            deployment(),
            {"pdbs": [pdb({"matchLabels": {"app": "web", "pod-template-hash": "abc"}})]},
            "",
        ),
        (
            deployment(),
            {
                "services": [
                    {"metadata": {"name": "s"}, "spec": {"selector": {"pod-template-hash": "x"}}}
                ]
            },
            "Service s selects by pod-template-hash",
        ),
        (
            deployment(),
            {"hpas": [hpa(), {**hpa(), "metadata": {"name": "b"}}]},
            "more than one HPA",
        ),
    ],
)
def test_plan_blockers(dep: dict[str, Any], others: dict[str, Any], reason: str) -> None:
    p = plan(dep, **others)
    if reason:
        assert p.blocked and any(reason in b for b in p.blockers), p.blockers
    else:  # a PDB on the Deployment's own hash label selects nothing of the Deployment's
        assert not p.pdbs


def test_an_unhealthy_deployment_is_blocked() -> None:
    dep = deployment(replicas=3)
    dep["status"]["availableReplicas"] = 2
    assert any("not healthy" in b for b in plan(dep).blockers)


def test_pdb_allowance_and_floor() -> None:
    assert pdb_allowance(None, 5) == 0
    assert pdb_allowance(pdb({}, maxUnavailable=1), 5) == 1
    assert pdb_allowance(pdb({}, maxUnavailable="25%"), 5) == 2  # rounds up
    assert pdb_allowance(pdb({}, minAvailable=4), 5) == 1
    assert pdb_allowance(pdb({}, minAvailable="50%"), 5) == 2  # needs ceil(2.5) = 3
    assert pdb_allowance(pdb({}, minAvailable=9), 5) == 0
    assert availability_floor(5, pdb({}, maxUnavailable=1)) == 4


def test_waves_resume_first_then_canary_then_least_busy() -> None:
    def p(name: str, replicas: int, phase: str = "", ns: str = "shop") -> Any:
        dep = deployment(name, replicas)
        dep["metadata"]["namespace"] = ns
        if phase:
            dep["metadata"]["annotations"] = {ANN_PHASE: phase, ANN_REPLICAS: str(replicas)}
        return plan(dep)

    plans = [
        p("a", 9),
        p("b", 1),
        p("c", 5),
        p("d", 2, Phase.MIGRATING),
        p("e", 3, Phase.MIGRATED),
        p("f", 7, ns="pilot"),
        p("g", 0),  # blocked: scaled to 0
        p("h", 1),
    ]
    order = [[x.key for x in wave] for wave in waves(plans, 2, canary=["pilot"])]
    assert order == [["shop/d"], ["pilot/f"], ["shop/b", "shop/h"], ["shop/c", "shop/a"]]


def test_wave_failure_budget() -> None:
    assert not wave_failed(2, 20, 0.1)
    assert wave_failed(3, 20, 0.1)
    assert not wave_failed(3, 20, 3)
    assert wave_failed(1, 20, 0)


# --- the state machine against a tiny simulated cluster ------------------------------------------


class Cluster:
    """Applies the actions as the migrator would, and plays the controller when asked."""

    def __init__(self, dep: dict[str, Any], with_hpa: bool = False) -> None:
        self.dep = dep
        self.rollout: dict[str, Any] | None = None
        self.hpa = hpa() if with_hpa else None
        self.scale_downs = 0
        self.creates = 0

    def step(self, mode: ScaleDown, now: float, timeout: float = 60.0) -> Action:
        action = next_action(
            copy.deepcopy(self.dep),
            copy.deepcopy(self.rollout),
            copy.deepcopy(self.hpa),
            scale_down=mode,
            now=now,
            health_timeout_s=timeout,
        )
        ann = self.dep["metadata"].setdefault("annotations", {})
        if action.act is Act.START:
            ann.update({ANN_REPLICAS: str(action.replicas), ANN_PHASE: Phase.MIGRATING})
        elif action.act is Act.CREATE_ROLLOUT:
            self.creates += 1
            self.rollout = build_rollout(self.dep, TEMPLATE, mode, created_at=now)
            self.rollout["metadata"]["generation"] = 1
        elif action.act is Act.MOVE_HPA:
            assert self.hpa is not None
            self.hpa["spec"]["scaleTargetRef"]["kind"] = action.target_kind
        elif action.act is Act.SCALE_DEPLOYMENT:
            if action.replicas < self.dep["spec"]["replicas"]:
                self.scale_downs += 1
            self.dep["spec"]["replicas"] = action.replicas
            self.dep["status"]["availableReplicas"] = action.replicas
            ann[ANN_PHASE] = action.phase
        elif action.act is Act.SET_PHASE:
            ann[ANN_PHASE] = action.phase
            if action.phase == Phase.ROLLING_BACK:
                ann[ANN_REASON] = action.reason
        elif action.act is Act.NEVER_SCALE_DOWN:
            assert self.rollout is not None
            self.rollout["spec"]["workloadRef"]["scaleDown"] = "never"
        elif action.act is Act.DELETE_ROLLOUT:
            self.rollout = None
        return action

    def controller_makes_healthy(self) -> None:
        assert self.rollout is not None
        n = self.rollout["spec"]["replicas"]
        self.rollout["status"] = {
            "phase": "Healthy",
            "observedGeneration": "1",
            "availableReplicas": n,
            "updatedReplicas": n,
        }
        if self.rollout["spec"]["workloadRef"]["scaleDown"] != "never":
            self.dep["spec"]["replicas"] = 0
            self.dep["status"]["availableReplicas"] = 0


def drive(cluster: Cluster, mode: ScaleDown, now: float = 0.0) -> list[Act]:
    acts = []
    for _ in range(20):
        action = cluster.step(mode, now)
        acts.append(action.act)
        if action.act in (Act.DONE, Act.BLOCKED, Act.WAIT):
            break
    return acts


@pytest.mark.parametrize("mode", [ScaleDown.ONSUCCESS, ScaleDown.EXPLICIT])
def test_a_healthy_service_migrates_and_a_second_run_changes_nothing(mode: ScaleDown) -> None:
    cluster = Cluster(deployment(replicas=3), with_hpa=True)
    assert drive(cluster, mode) == [Act.START, Act.CREATE_ROLLOUT, Act.WAIT]
    assert cluster.dep["spec"]["replicas"] == 3  # nothing scaled down before the Rollout is up
    cluster.controller_makes_healthy()
    acts = drive(cluster, mode, now=5.0)
    assert Act.MOVE_HPA in acts and acts[-1] is Act.DONE
    assert cluster.hpa is not None and cluster.hpa["spec"]["scaleTargetRef"]["kind"] == "Rollout"
    assert cluster.dep["spec"]["replicas"] == 0
    assert cluster.dep["metadata"]["annotations"][ANN_PHASE] == Phase.MIGRATED
    assert cluster.scale_downs == (1 if mode is ScaleDown.EXPLICIT else 0)
    assert drive(cluster, mode, now=6.0) == [Act.DONE]
    assert cluster.creates == 1 and cluster.scale_downs <= 1


def test_explicit_scale_down_happens_once_even_if_the_scale_is_undone() -> None:
    cluster = Cluster(deployment(replicas=2))
    drive(cluster, ScaleDown.EXPLICIT)
    cluster.controller_makes_healthy()
    assert cluster.step(ScaleDown.EXPLICIT, 1.0).act is Act.SCALE_DEPLOYMENT
    cluster.dep["spec"]["replicas"] = 2  # something scaled it back up (an old HPA, a human)
    assert cluster.step(ScaleDown.EXPLICIT, 2.0).act is Act.WAIT  # not a second scale-down
    assert cluster.scale_downs == 1


def test_a_rollout_that_never_gets_healthy_is_rolled_back_without_downtime() -> None:
    cluster = Cluster(deployment(replicas=3), with_hpa=True)
    drive(cluster, ScaleDown.PROGRESSIVELY)
    assert cluster.rollout is not None
    # the controller scaled the Deployment down by the Rollout's one ready pod, HPA moved by hand
    cluster.dep["spec"]["replicas"] = 2
    cluster.dep["status"]["availableReplicas"] = 2
    assert cluster.hpa is not None
    cluster.hpa["spec"]["scaleTargetRef"]["kind"] = "Rollout"
    assert cluster.step(ScaleDown.PROGRESSIVELY, 30.0).act is Act.WAIT  # within the gate
    acts = [cluster.step(ScaleDown.PROGRESSIVELY, 61.0).act for _ in range(4)]
    assert acts == [Act.SET_PHASE, Act.NEVER_SCALE_DOWN, Act.MOVE_HPA, Act.SCALE_DEPLOYMENT]
    cluster.dep["status"]["availableReplicas"] = 2  # not yet up again
    assert cluster.step(ScaleDown.PROGRESSIVELY, 62.0).act is Act.WAIT  # Rollout kept meanwhile
    assert cluster.rollout is not None
    cluster.dep["status"]["availableReplicas"] = 3
    acts = [cluster.step(ScaleDown.PROGRESSIVELY, 63.0).act for _ in range(3)]
    assert acts == [Act.DELETE_ROLLOUT, Act.SET_PHASE, Act.DONE]
    assert cluster.hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    ann = cluster.dep["metadata"]["annotations"]
    assert ann[ANN_PHASE] == Phase.ROLLED_BACK and "not Healthy within 60s" in ann[ANN_REASON]


def test_a_degraded_rollout_is_rolled_back_at_once() -> None:
    cluster = Cluster(deployment(replicas=1))
    drive(cluster, ScaleDown.ONSUCCESS)
    assert cluster.rollout is not None
    cluster.rollout["status"] = {"phase": "Degraded", "message": "ProgressDeadlineExceeded"}
    action = cluster.step(ScaleDown.ONSUCCESS, 1.0)
    assert action.phase == Phase.ROLLING_BACK and "Degraded" in action.reason


def test_a_foreign_rollout_is_never_touched() -> None:
    cluster = Cluster(deployment())
    cluster.step(ScaleDown.ONSUCCESS, 0.0)
    cluster.rollout = {"metadata": {"name": "web"}, "spec": {}}
    assert cluster.step(ScaleDown.ONSUCCESS, 1.0).act is Act.BLOCKED
