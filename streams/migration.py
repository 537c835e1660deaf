"""Deployment -> Argo Rollout migration: the plan and the per-service state machine (pure).

No I/O and no clock: objects come in as the JSON dicts the API server returns, the time as a
number, and out come a plan (`plan_service`, `waves`) and, for one service at a time, the next
action to take (`next_action`). `agents.migrate` does the Kubernetes calls and runs the waves.

Progress lives in the cluster, on the objects themselves, so that a migrator killed at any
point resumes where it was:

- the Deployment's annotations `migrate.canarywatch.io/replicas` (its desired count before the
  migration, written once, before anything else happens) and `migrate.canarywatch.io/phase`
  (`migrating`, `scaled-down`, `migrated`, `rolling-back`, `rolled-back`);
- the Rollout's name is the Deployment's, so a second create answers 409 and never makes a
  second Rollout; its annotations say who made it (`migrate.canarywatch.io/deployment`) and when
  (`migrate.canarywatch.io/created-at`, the start of the health gate, so a resumed gate keeps its
  deadline).

Every action is decided from a fresh read of the objects, so running an action twice is
harmless: the second decision sees the first one's result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

ROLLOUT_API_VERSION = "argoproj.io/v1alpha1"
PREFIX = "migrate.canarywatch.io/"
ANN_REPLICAS = PREFIX + "replicas"
ANN_PHASE = PREFIX + "phase"
ANN_REASON = PREFIX + "reason"
ANN_DEPLOYMENT = PREFIX + "deployment"
ANN_CREATED_AT = PREFIX + "created-at"
MANAGED_BY = "canarywatch-migrate"
DEPLOYMENT_HASH_LABEL = "pod-template-hash"  # set by the Deployment controller on its pods


class Phase(StrEnum):
    MIGRATING = "migrating"
    SCALED_DOWN = "scaled-down"  # explicit scale-down done (written with the scale itself)
    MIGRATED = "migrated"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"


class ScaleDown(StrEnum):
    """How the Deployment is scaled down once its Rollout is up."""

    PROGRESSIVELY = "progressively"  # the controller, as the Rollout's pods become ready
    ONSUCCESS = "onsuccess"  # the controller, once the Rollout is Healthy
    EXPLICIT = "explicit"  # the migrator, once the Rollout is Healthy (workloadRef scaleDown never)

    @property
    def workload_ref_value(self) -> str:
        return {"progressively": "progressively", "onsuccess": "onsuccess"}.get(self, "never")


Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def annotations_of(obj: Obj | None) -> Mapping[str, str]:
    if obj is None:
        return {}
    found: Mapping[str, str] = _meta(obj).get("annotations") or {}
    return found


def name_of(obj: Obj) -> str:
    return str(_meta(obj).get("name", ""))


def namespace_of(obj: Obj) -> str:
    return str(_meta(obj).get("namespace", ""))


def key_of(obj: Obj) -> str:
    return f"{namespace_of(obj)}/{name_of(obj)}"


def desired(deployment: Obj) -> int:
    replicas = (deployment.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def original_replicas(deployment: Obj) -> int:
    """The Deployment's desired count before the migration (the annotation), else now."""
    value = annotations_of(deployment).get(ANN_REPLICAS)
    return int(value) if value is not None and value.isdigit() else desired(deployment)


def available(obj: Obj | None) -> int:
    if obj is None:
        return 0
    return int((obj.get("status") or {}).get("availableReplicas") or 0)


def template_labels(deployment: Obj) -> Mapping[str, str]:
    template = (deployment.get("spec") or {}).get("template") or {}
    labels: Mapping[str, str] = (template.get("metadata") or {}).get("labels") or {}
    return labels


# --- label selectors --------------------------------------------------------------------------


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set. An empty or
    missing selector matches nothing (as a PDB's or Service's would select nothing useful)."""
    if not selector:
        return False
    match_labels: Mapping[str, str] = selector.get("matchLabels") or {}
    expressions: Sequence[Obj] = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in expressions:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_keys(selector: Obj | None) -> set[str]:
    if not selector:
        return set()
    keys = set((selector.get("matchLabels") or {}).keys())
    keys.update(str(e.get("key", "")) for e in selector.get("matchExpressions") or [])
    return keys


def service_selects(service: Obj, labels: Mapping[str, str]) -> bool:
    selector: Mapping[str, str] = (service.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- PDB allowance and the availability floor --------------------------------------------------


def _int_or_percent(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = float(value[:-1]) / 100.0 * total
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def pdb_allowance(pdb: Obj | None, desired_count: int) -> int:
    """How many of `desired_count` pods the PDB lets be unavailable (0 without a PDB), as the
    disruption controller computes it: minAvailable rounds up, maxUnavailable rounds up."""
    if pdb is None:
        return 0
    spec = pdb.get("spec") or {}
    if spec.get("maxUnavailable") is not None:
        allowed = _int_or_percent(spec["maxUnavailable"], desired_count, round_up=True)
    elif spec.get("minAvailable") is not None:
        need = _int_or_percent(spec["minAvailable"], desired_count, round_up=True)
        allowed = desired_count - need
    else:
        allowed = 0
    return max(0, min(desired_count, allowed))


def availability_floor(desired_count: int, pdb: Obj | None) -> int:
    """The fewest available replicas a service may have at any moment of its migration."""
    return desired_count - pdb_allowance(pdb, desired_count)


# --- the plan ----------------------------------------------------------------------------------


class TemplateError(ValueError):
    pass


def validate_template(template: Obj) -> dict[str, Any]:
    """The user's Rollout template: a mapping with `strategy.canary` (a Rollout manifest's
    `spec`, or a whole Rollout whose `spec` is taken). Returns the spec fragment to merge."""
    spec = template.get("spec", template) if template.get("kind") == "Rollout" else template
    if not isinstance(spec, Mapping):
        raise TemplateError("the template must be a mapping")
    strategy = spec.get("strategy")
    if not isinstance(strategy, Mapping) or not isinstance(strategy.get("canary"), Mapping):
        raise TemplateError("the template needs strategy.canary (a canary strategy)")
    for forbidden in ("template", "selector", "workloadRef", "replicas"):
        if forbidden in spec:
            raise TemplateError(
                f"the template must not set spec.{forbidden}: it comes from the Deployment"
            )
    return json.loads(json.dumps(spec))  # type: ignore[no-any-return]


def build_rollout(
    deployment: Obj, template_spec: Obj, scale_down: ScaleDown, *, created_at: float
) -> dict[str, Any]:
    """The Rollout for `deployment`: same name, namespace, labels and selector; a workloadRef to
    it (the controller takes the pod template from the Deployment); the template's strategy;
    replicas = the Deployment's desired count before the migration."""
    meta = _meta(deployment)
    spec = deployment.get("spec") or {}
    rollout_spec: dict[str, Any] = json.loads(json.dumps(template_spec))
    rollout_spec.update(
        {
            "replicas": original_replicas(deployment),
            "selector": json.loads(json.dumps(spec.get("selector") or {})),
            "workloadRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": meta.get("name"),
                "scaleDown": scale_down.workload_ref_value,
            },
        }
    )
    if spec.get("revisionHistoryLimit") is not None and "revisionHistoryLimit" not in rollout_spec:
        rollout_spec["revisionHistoryLimit"] = spec["revisionHistoryLimit"]
    if spec.get("minReadySeconds") is not None and "minReadySeconds" not in rollout_spec:
        rollout_spec["minReadySeconds"] = spec["minReadySeconds"]
    labels = dict(meta.get("labels") or {})
    labels["app.kubernetes.io/managed-by"] = labels.get("app.kubernetes.io/managed-by", MANAGED_BY)
    return {
        "apiVersion": ROLLOUT_API_VERSION,
        "kind": "Rollout",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": {
                ANN_DEPLOYMENT: str(meta.get("name")),
                ANN_CREATED_AT: f"{created_at:.3f}",
            },
        },
        "spec": rollout_spec,
    }


def is_ours(rollout: Obj, deployment: Obj) -> bool:
    """Did the migrator create this Rollout for this Deployment?"""
    ref = (rollout.get("spec") or {}).get("workloadRef") or {}
    return (
        annotations_of(rollout).get(ANN_DEPLOYMENT) == name_of(deployment)
        and ref.get("kind") == "Deployment"
        and ref.get("name") == name_of(deployment)
    )


def hpa_targets(hpa: Obj, kind: str, name: str) -> bool:
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    return bool(ref.get("kind") == kind and ref.get("name") == name)


@dataclass(frozen=True)
class ServicePlan:
    namespace: str
    name: str
    replicas: int
    phase: str  # "" (not started) or a Phase
    hpa: str = ""  # the HPA whose scaleTargetRef moves to the Rollout
    pdbs: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    floor: int = 0  # availability floor: replicas minus the PDB's allowance
    scale_down: ScaleDown = ScaleDown.ONSUCCESS
    blockers: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    rollout: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def blocked(self) -> bool:
        return bool(self.blockers)

    @property
    def done(self) -> bool:
        return self.phase in (Phase.MIGRATED, Phase.ROLLED_BACK)

    @property
    def in_progress(self) -> bool:
        return self.phase in (Phase.MIGRATING, Phase.SCALED_DOWN, Phase.ROLLING_BACK)

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "replicas": self.replicas,
            "phase": self.phase or "pending",
            "hpa": self.hpa or None,
            "pdbs": list(self.pdbs),
            "services": list(self.services),
            "availability_floor": self.floor,
            "scale_down": str(self.scale_down),
            "blockers": list(self.blockers),
            "notes": list(self.notes),
            "rollout": dict(self.rollout),
        }


def plan_service(
    deployment: Obj,
    *,
    rollouts: Iterable[Obj],
    hpas: Iterable[Obj],
    pdbs: Iterable[Obj],
    services: Iterable[Obj],
    template_spec: Obj,
    scale_down: ScaleDown,
    now: float,
) -> ServicePlan:
    """What migrating `deployment` means: the Rollout to create, the HPA to move, the PDBs and
    Services that must still select its pods, and what blocks it. The other objects are those
    of the Deployment's namespace."""
    name, namespace = name_of(deployment), namespace_of(deployment)
    spec = deployment.get("spec") or {}
    labels = template_labels(deployment)
    phase = annotations_of(deployment).get(ANN_PHASE, "")
    replicas = original_replicas(deployment)
    blockers: list[str] = []
    notes: list[str] = []

    for rollout in rollouts:
        ref = (rollout.get("spec") or {}).get("workloadRef") or {}
        if is_ours(rollout, deployment):
            continue
        if ref.get("kind") == "Deployment" and ref.get("name") == name:
            blockers.append(f"already owned by Rollout {name_of(rollout)} (workloadRef)")
        elif name_of(rollout) == name:
            blockers.append(f"a Rollout named {name} exists and was not made by the migrator")
    owners = [o for o in _meta(deployment).get("ownerReferences") or [] if o.get("controller")]
    if owners:
        blockers.append(f"controlled by {owners[0].get('kind')} {owners[0].get('name')}")

    if not phase:  # checks of a Deployment not yet touched
        strategy = (spec.get("strategy") or {}).get("type", "RollingUpdate")
        if strategy != "RollingUpdate":
            blockers.append(f"unsupported strategy {strategy}: its pods must not run twice")
        if spec.get("paused"):
            blockers.append("the Deployment is paused")
        if replicas == 0:
            blockers.append("scaled to 0: nothing to move")
        elif available(deployment) < replicas:
            blockers.append(
                f"not healthy before migration: {available(deployment)}/{replicas} available"
            )
        status = deployment.get("status") or {}
        generation = _meta(deployment).get("generation")
        if generation is not None and status.get("observedGeneration") not in (None, generation):
            blockers.append("the Deployment controller has not observed its latest spec")
    if not selector_matches(spec.get("selector"), labels):
        blockers.append("its selector does not match its pod template labels")

    hpa_names = [name_of(h) for h in hpas if hpa_targets(h, "Deployment", name)]
    hpa_names += [name_of(h) for h in hpas if hpa_targets(h, "Rollout", name)]
    if len(set(hpa_names)) > 1:
        blockers.append(f"more than one HPA scales it: {sorted(set(hpa_names))}")
    hpa = hpa_names[0] if hpa_names else ""

    pdb_list = [p for p in pdbs if selector_matches((p.get("spec") or {}).get("selector"), labels)]
    for pdb in pdb_list:
        if DEPLOYMENT_HASH_LABEL in selector_keys((pdb.get("spec") or {}).get("selector")):
            blockers.append(
                f"PDB {name_of(pdb)} selects by {DEPLOYMENT_HASH_LABEL}: Rollout pods lack it"
            )
    if len(pdb_list) > 1:
        notes.append("several PDBs select its pods: the strictest one sets the floor")
    service_names: list[str] = []
    for svc in services:
        selector: Mapping[str, str] = (svc.get("spec") or {}).get("selector") or {}
        if DEPLOYMENT_HASH_LABEL in selector and all(
            labels.get(k) == v for k, v in selector.items() if k != DEPLOYMENT_HASH_LABEL
        ):
            blockers.append(
                f"Service {name_of(svc)} selects by {DEPLOYMENT_HASH_LABEL}: Rollout pods lack it"
            )
        elif service_selects(svc, labels):
            service_names.append(name_of(svc))
    # The strictest PDB sets the floor; without one no replica may be lost.
    floor = max((availability_floor(replicas, p) for p in pdb_list), default=replicas)
    if pdb_list:
        notes.append("PDB and Services keep selecting its pods: Rollout pods carry the same labels")
    mode = scale_down
    if mode is ScaleDown.PROGRESSIVELY and int(spec.get("minReadySeconds") or 0) > 0:
        # The controller scales the Deployment down by the Rollout's *ready* replicas, which
        # are not yet available during minReadySeconds: that would dip below the floor.
        mode = ScaleDown.ONSUCCESS
        notes.append("minReadySeconds > 0: scaleDown onsuccess instead of progressively")
    if mode is ScaleDown.PROGRESSIVELY and hpa:
        # An HPA on the Deployment would scale back up what the controller scales down.
        mode = ScaleDown.ONSUCCESS
        notes.append("an HPA scales it: scaleDown onsuccess instead of progressively")

    return ServicePlan(
        namespace=namespace,
        name=name,
        replicas=replicas,
        phase=phase,
        hpa=hpa,
        pdbs=tuple(name_of(p) for p in pdb_list),
        services=tuple(service_names),
        floor=floor,
        scale_down=mode,
        blockers=tuple(dict.fromkeys(blockers)),
        notes=tuple(notes),
        rollout=build_rollout(deployment, template_spec, mode, created_at=now),
    )


def _matches_canary(plan: ServicePlan, canary: Sequence[str]) -> bool:
    return any(c in (plan.namespace, plan.key) for c in canary)


def waves(
    plans: Iterable[ServicePlan], wave_size: int, canary: Sequence[str] = ()
) -> list[list[ServicePlan]]:
    """The migration order: services already in progress first (a resumed run finishes them),
    then the canary wave the user named (namespaces or namespace/name), then the rest least busy
    first (fewest replicas, then by name), `wave_size` per wave. Blocked and finished services
    are in no wave."""
    if wave_size < 1:
        raise ValueError("wave_size must be at least 1")
    todo = [p for p in plans if not p.blocked and not p.done]
    resumed = sorted((p for p in todo if p.in_progress), key=lambda p: p.key)
    rest = [p for p in todo if not p.in_progress]
    named = sorted((p for p in rest if _matches_canary(p, canary)), key=lambda p: p.key)
    others = sorted(
        (p for p in rest if not _matches_canary(p, canary)), key=lambda p: (p.replicas, p.key)
    )
    result: list[list[ServicePlan]] = []
    if resumed:
        result.append(resumed)
    if named:
        result.append(named)
    result.extend(others[i : i + wave_size] for i in range(0, len(others), wave_size))
    return result


def wave_failed(failed: int, size: int, budget: float) -> bool:
    """Does a wave with `failed` of `size` services failing their health gate stop the
    migration? `budget` is a fraction of the wave (0.1 = 10 %) when < 1, else a count."""
    allowed = budget * size if budget < 1 else budget
    return failed > allowed


# --- one service's next action -------------------------------------------------------------------


class Act(StrEnum):
    START = "start"  # annotate the Deployment: replicas, phase=migrating
    CREATE_ROLLOUT = "create-rollout"
    WAIT = "wait"  # nothing to do until an object changes (or the deadline)
    MOVE_HPA = "move-hpa"  # scaleTargetRef -> target
    SCALE_DEPLOYMENT = "scale-deployment"  # spec.replicas = replicas, phase = phase (one patch)
    SET_PHASE = "set-phase"
    NEVER_SCALE_DOWN = "never-scale-down"  # the Rollout's workloadRef.scaleDown = never
    DELETE_ROLLOUT = "delete-rollout"
    DONE = "done"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Action:
    act: Act
    reason: str = ""
    phase: str = ""
    replicas: int = 0
    target_kind: str = ""


def rollout_healthy(rollout: Obj, replicas: int) -> bool:
    """Healthy as the controller says it, its latest spec observed, and all replicas updated
    and available."""
    status = rollout.get("status") or {}
    generation = _meta(rollout).get("generation")
    observed = str(status.get("observedGeneration", ""))
    return (
        status.get("phase") == "Healthy"
        and (generation is None or observed == str(generation))
        and int(status.get("availableReplicas") or 0) >= replicas
        and int(status.get("updatedReplicas") or 0) >= replicas
    )


def rollout_failed(rollout: Obj) -> str:
    """Why the controller gave up on the Rollout ("" when it has not)."""
    status = rollout.get("status") or {}
    if status.get("phase") == "Degraded":
        return f"Rollout Degraded: {status.get('message', '')}".strip()
    for cond in status.get("conditions") or []:
        if cond.get("type") == "InvalidSpec" and cond.get("status") == "True":
            return f"InvalidSpec: {cond.get('message', '')}"
    return ""


def created_at(rollout: Obj) -> float | None:
    value = annotations_of(rollout).get(ANN_CREATED_AT)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def next_action(
    deployment: Obj | None,
    rollout: Obj | None,
    hpa: Obj | None,
    *,
    scale_down: ScaleDown,
    now: float,
    health_timeout_s: float,
) -> Action:
    """The one next step for a service, from what the cluster holds now. `hpa` is the HPA of
    the plan (None without one)."""
    if deployment is None:
        return Action(Act.BLOCKED, "the Deployment is gone")
    phase = annotations_of(deployment).get(ANN_PHASE, "")
    name = name_of(deployment)
    if phase == Phase.MIGRATED:
        return Action(Act.DONE, "migrated", phase=Phase.MIGRATED)
    if phase == Phase.ROLLED_BACK:
        return Action(
            Act.DONE,
            annotations_of(deployment).get(ANN_REASON, "rolled back"),
            phase=Phase.ROLLED_BACK,
        )
    if rollout is not None and not is_ours(rollout, deployment):
        return Action(Act.BLOCKED, f"Rollout {name_of(rollout)} was not made by the migrator")
    if not phase:
        return Action(Act.START, replicas=desired(deployment))
    replicas = original_replicas(deployment)
    if phase == Phase.ROLLING_BACK:
        return _rollback_step(deployment, rollout, hpa, replicas)
    if rollout is None:
        if phase == Phase.SCALED_DOWN:  # someone deleted our Rollout after the scale-down
            return Action(
                Act.SET_PHASE, "the Rollout vanished after the scale-down", phase=Phase.ROLLING_BACK
            )
        return Action(Act.CREATE_ROLLOUT)

    healthy = rollout_healthy(rollout, replicas)
    if not healthy:
        failure = rollout_failed(rollout)
        started = created_at(rollout)
        if not failure and started is not None and now - started > health_timeout_s:
            failure = f"not Healthy within {health_timeout_s:.0f}s"
        if failure:
            return Action(Act.SET_PHASE, failure, phase=Phase.ROLLING_BACK)
        return Action(Act.WAIT, "waiting for the Rollout to become Healthy")

    if hpa is not None and hpa_targets(hpa, "Deployment", name):
        return Action(Act.MOVE_HPA, "the Rollout is Healthy", target_kind="Rollout")
    if desired(deployment) > 0:
        if scale_down is ScaleDown.EXPLICIT and phase != Phase.SCALED_DOWN:
            return Action(
                Act.SCALE_DEPLOYMENT, "the Rollout is Healthy", phase=Phase.SCALED_DOWN, replicas=0
            )
        started = created_at(rollout)
        if started is not None and now - started > health_timeout_s:
            return Action(
                Act.SET_PHASE,
                "the controller did not scale the Deployment down",
                phase=Phase.ROLLING_BACK,
            )
        return Action(Act.WAIT, "waiting for the controller to scale the Deployment down")
    return Action(Act.SET_PHASE, "the Rollout serves all replicas", phase=Phase.MIGRATED)


def _rollback_step(deployment: Obj, rollout: Obj | None, hpa: Obj | None, replicas: int) -> Action:
    """Roll back without downtime: stop the controller from scaling the Deployment, give the
    HPA back, scale the Deployment back up, and remove the Rollout only once the Deployment
    has all its replicas available again."""
    name = name_of(deployment)
    if rollout is not None:
        ref = (rollout.get("spec") or {}).get("workloadRef") or {}
        if ref.get("scaleDown", "never") != "never":
            return Action(
                Act.NEVER_SCALE_DOWN, "rollback: the controller must not scale the Deployment"
            )
    if hpa is not None and hpa_targets(hpa, "Rollout", name):
        return Action(Act.MOVE_HPA, "rollback", target_kind="Deployment")
    if desired(deployment) < replicas:
        return Action(Act.SCALE_DEPLOYMENT, "rollback", phase=Phase.ROLLING_BACK, replicas=replicas)
    if available(deployment) < replicas:
        return Action(Act.WAIT, "rollback: waiting for the Deployment's replicas")
    if rollout is not None:
        return Action(Act.DELETE_ROLLOUT, "rollback: the Deployment serves again")
    return Action(Act.SET_PHASE, "rolled back", phase=Phase.ROLLED_BACK)
