"""canarywatch against the real Argo Rollouts controller (built by scripts/argo/build.sh).

The controller runs out of cluster in namespaced mode (only `NAMESPACE`), against the test
kube-apiserver; `ReplicaSetKubelet` stands in for kubelet and the ReplicaSet controller. Each test
drives a real basic-canary Rollout: created at v1 (the controller makes it Healthy), updated to
v2 (the controller starts the canary: setWeight 20, then an indefinite pause), and then:
- an abort command through Kafka and the actuator makes the controller abort;
- a promotion while a command is pending makes the command stale;
- a new template between the actuator's judgement and its patch never aborts the new revision;
- after `retry`, a redelivered command does not abort the retried canary;
- with nginx traffic routing, an abort sets the canary Ingress weight to 0 at once and scales the
  canary down after `abortScaleDownDelaySeconds`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiokafka.structs import TopicPartition
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics, Outcome
from agents.bridge import Bridge, BridgeMetrics, BridgeOptions, RolloutReader
from agents.processes import poll_until
from agents.rolloutapi import MERGE_PATCH, KubeRolloutApi
from agents.settings import Settings
from streams.events import AbortCommand, encode_abort_command
from streams.rollouts import GROUP, PLURAL, POLICY_ANNOTATION, VERSION, Action, Rollout
from tests.integration.test_actuator import (
    FAST,
    command_for,
    count,
    create_topics,
    ensure_namespace,
    events_about,
    produce,
    read_rollout,
    running,
    unique_settings,
    wait_committed,
)
from tests.integration.test_bridge import Snapshots
from tests.integration.test_bridge import running as bridge_running
from tests.support.argo import ReplicaSetKubelet, RolloutsController, dump
from tests.support.localkube import REPO_ROOT, LocalKubeAPI, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.argo]

NAMESPACE = "cw-argo"
REPLICAS = 5
STEPS: list[dict[str, Any]] = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]
IMAGE = "registry.example/web:{}"
WITHIN_S = 60.0  # the controller reacts in well under a second; the machine is shared


@pytest.fixture(scope="module")
def controller(kube_api: LocalKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The real controller and the stand-in kubelet for `NAMESPACE`, for this module."""
    ensure_namespace(kube_api, NAMESPACE)
    workdir = tmp_path_factory.mktemp("argo")
    with kube_api.client("admin") as admin, ReplicaSetKubelet(admin, NAMESPACE) as kubelet:
        controller = RolloutsController(kube_api, NAMESPACE, workdir)
        try:
            controller.start()
            yield
            controller.check_alive()
            assert not kubelet.errors[5:], kubelet.errors  # a dropped watch or two is fine
        finally:
            controller.stop()


@pytest.fixture
def admin(kube_api: LocalKubeAPI, controller: None) -> Iterator[k8s.ApiClient]:
    with kube_api.client("admin") as api:
        yield api


@pytest.fixture
def actuator_api(kube_api: LocalKubeAPI, controller: None) -> Iterator[KubeRolloutApi]:
    with kube_api.client("actuator") as api:
        yield KubeRolloutApi(api)


# --- the Rollout and what the controller makes of it ----------------------------------------


def manifest(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": IMAGE.format(version)}]},
            },
            "strategy": {"canary": {"steps": STEPS}},
        },
    }


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cast(dict[str, Any], cond)
    return {}


def reconciled(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status", {})
    return str(status.get("observedGeneration")) == str(obj["metadata"]["generation"])


def replica_sets(admin: k8s.ApiClient, name: str) -> dict[str, k8s.V1ReplicaSet]:
    """The Rollout's ReplicaSets by pod-template hash."""
    listed = k8s.AppsV1Api(admin).list_namespaced_replica_set(
        NAMESPACE, label_selector=f"app={name}"
    )
    return {
        ((rs.metadata and rs.metadata.labels) or {}).get("rollouts-pod-template-hash", ""): rs
        for rs in listed.items
    }


def set_image(admin: k8s.ApiClient, name: str, version: str) -> None:
    patch = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "app", "image": IMAGE.format(version)}]}}
        }
    }
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, patch, _content_type=MERGE_PATCH
    )


def patch_status(admin: k8s.ApiClient, name: str, status: dict[str, Any]) -> None:
    """As `kubectl argo rollouts` does: a merge patch on the status subresource."""
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
    )


async def wait_for(admin: k8s.ApiClient, name: str, what: str, check: Any) -> dict[str, Any]:
    """Poll the Rollout until `check(obj)` holds; the object."""

    def probe() -> dict[str, Any]:
        obj = read_rollout(admin, NAMESPACE, name)
        return obj if check(obj) else {}

    try:
        return await poll_until(probe, WITHIN_S, f"{name}: {what}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last: {dump(read_rollout(admin, NAMESPACE, name))}") from None


def paused_canary(obj: Mapping[str, Any], canary: str | None = None) -> bool:
    status = obj.get("status", {})
    current, stable = status.get("currentPodHash"), status.get("stableRS")
    return (
        reconciled(obj)
        and bool(current and stable and current != stable)
        and (canary is None or current == canary)
        and status.get("phase") == "Paused"
        and status.get("currentStepIndex") == 1
        and not status.get("abort")
    )


async def canary_in_progress(admin: k8s.ApiClient) -> tuple[str, str, str]:
    """A Rollout made Healthy at v1 by the controller, then updated to v2 and paused at its
    first pause step (20 %); its name, canary hash, stable hash."""
    name = f"web-{uuid.uuid4().hex[:8]}"
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, manifest(name, "1.0.0")
    )
    healthy = await wait_for(
        admin,
        name,
        "Healthy at v1",
        lambda o: (
            reconciled(o)
            and o.get("status", {}).get("phase") == "Healthy"
            and o["status"].get("stableRS") == o["status"].get("currentPodHash")
        ),
    )
    stable = healthy["status"]["stableRS"]
    set_image(admin, name, "2.0.0")
    paused = await wait_for(admin, name, "canary v2 paused at 20 %", paused_canary)
    canary = paused["status"]["currentPodHash"]
    sets = replica_sets(admin, name)
    # Basic canary: 20 % of 5 replicas is 1 canary pod, and stable gives one up.
    assert (sets[canary].spec.replicas, sets[stable].spec.replicas) == (1, REPLICAS - 1), dump(
        paused
    )
    return name, canary, stable


def aborted_by_controller(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status", {})
    return (
        status.get("abort") is True
        and bool(status.get("abortedAt"))
        and condition(obj, "Progressing").get("reason") == "RolloutAborted"
        and status.get("phase") == "Degraded"
    )


def actuator(settings: Settings, api: Any) -> tuple[Actuator, CollectorRegistry]:
    registry = CollectorRegistry()
    return Actuator(settings, api, ActuatorMetrics(registry), policy=FAST), registry


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_an_abort_command_makes_the_real_controller_abort_the_canary(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    name, canary, stable = await canary_in_progress(admin)
    settings = unique_settings(kafka_bootstrap, tmp_path, "argo")
    await create_topics(settings)
    command = command_for(NAMESPACE, name, canary)
    act, registry = actuator(settings, actuator_api)
    commands = TopicPartition(settings.topics.commands, 0)
    async with running(act):
        # A first command for a Rollout that does not exist: once it is committed the actuator
        # has joined its group and the timing below is the steady state's.
        warm_up = command_for(NAMESPACE, "no-such-rollout", canary)
        await produce(
            kafka_bootstrap,
            settings.topics.commands,
            [(warm_up.env.encode(), encode_abort_command(warm_up))],
        )
        await wait_committed(kafka_bootstrap, act.group_id, commands, 1)
        sent = time.monotonic()
        await produce(
            kafka_bootstrap,
            settings.topics.commands,
            [(command.env.encode(), encode_abort_command(command))],
        )
        after = await wait_for(admin, name, "aborted by the controller", aborted_by_controller)
        took = time.monotonic() - sent
        await wait_committed(kafka_bootstrap, act.group_id, commands, 2)
    print(f"\ncommand produced -> controller's RolloutAborted condition: {took * 1000:.0f} ms")

    assert "Rollout aborted update to revision 2" in condition(after, "Progressing")["message"]
    assert after["status"]["currentStepIndex"] == 0, dump(after["status"])
    assert not after["status"].get("pauseConditions"), dump(after["status"])

    # Basic canary (no traffic routing): the canary is scaled to 0, stable back to full, at once.
    def canary_scaled_down() -> dict[str, k8s.V1ReplicaSet]:
        sets = replica_sets(admin, name)
        return sets if sets[canary].spec.replicas == 0 else {}

    sets = await poll_until(canary_scaled_down, WITHIN_S, "the canary ReplicaSet scaled to 0")
    assert sets[stable].spec.replicas == REPLICAS
    reasons = {e.reason for e in events_about(admin, NAMESPACE, name)}
    assert {"CanarywatchAbort", "RolloutAborted"} <= reasons, reasons
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1


async def test_a_promotion_while_the_command_is_pending_makes_it_stale(
    tmp_path: Path, admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    name, canary, _ = await canary_in_progress(admin)
    command = command_for(NAMESPACE, name, canary)  # decided, not yet applied
    patch_status(admin, name, {"promoteFull": True})  # `kubectl argo rollouts promote --full`
    await wait_for(
        admin,
        name,
        "v2 promoted to stable",
        lambda o: (
            reconciled(o)
            and o["status"].get("stableRS") == canary
            and o["status"].get("phase") == "Healthy"
        ),
    )

    act, registry = actuator(Settings(), actuator_api)
    result = await act.handle(command)

    assert result.outcome is Outcome.STALE, result
    assert "promoted" in result.detail
    after = read_rollout(admin, NAMESPACE, name)
    assert not after["status"].get("abort") and after["status"]["phase"] == "Healthy"
    assert "CanarywatchAbort" not in {e.reason for e in events_about(admin, NAMESPACE, name)}
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 0


class NewTemplateBeforePatch:
    """The real API; before the first abort patch, someone deploys v3 and the real controller
    starts it as the new canary. The patch then goes out with the resourceVersion of the v2
    judgement, as it would have had the change landed a moment later."""

    def __init__(self, api: KubeRolloutApi, admin: k8s.ApiClient, name: str, old: str) -> None:
        self.api, self.admin, self.name, self.old = api, admin, name, old
        self.new_canary = ""
        self.patches: list[str] = []

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        return self.api.get_rollout(namespace, name)

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Any]:
        return self.api.rollout_events(namespace, name, uid)

    def record_event(self, namespace: str, event: Any) -> bool:
        return self.api.record_event(namespace, event)

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        return self.api.replica_set_revision(namespace, name)

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        return self.api.pause_rollout(namespace, name, resource_version)

    def _new_canary_paused(self) -> dict[str, Any]:
        obj = read_rollout(self.admin, NAMESPACE, self.name)
        moved = paused_canary(obj) and obj["status"]["currentPodHash"] != self.old
        return obj if moved else {}

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        self.patches.append(resource_version)
        if len(self.patches) == 1:
            set_image(self.admin, self.name, "3.0.0")
            moved = wait_until(
                self._new_canary_paused,
                timeout=WITHIN_S,
                what="the controller to start v3 as the canary",
            )
            self.new_canary = moved["status"]["currentPodHash"]
        return self.api.abort_rollout(namespace, name, resource_version)


async def test_a_new_template_between_judge_and_patch_never_aborts_the_new_revision(
    admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    name, canary, _ = await canary_in_progress(admin)
    api = NewTemplateBeforePatch(actuator_api, admin, name, canary)
    act, registry = actuator(Settings(), api)

    result = await act.handle(command_for(NAMESPACE, name, canary))

    assert result.outcome is Outcome.STALE, result
    assert f"moved on to {api.new_canary}" in result.detail
    assert len(api.patches) == 1  # refused with 409, read again, judged stale: no second patch
    assert count(registry, "canarywatch_actuator_retries_total", status="409") == 1
    after = read_rollout(admin, NAMESPACE, name)
    assert paused_canary(after, api.new_canary), dump(after["status"])
    assert not after["status"].get("abortedAt")
    assert replica_sets(admin, name)[api.new_canary].spec.replicas == 1  # v3 still runs
    assert "CanarywatchAbort" not in {e.reason for e in events_about(admin, NAMESPACE, name)}


async def test_after_retry_a_redelivered_command_does_not_abort_the_retried_canary(
    admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    name, canary, stable = await canary_in_progress(admin)
    command: AbortCommand = command_for(NAMESPACE, name, canary)
    act, registry = actuator(Settings(), actuator_api)
    started = time.monotonic()
    assert (await act.handle(command)).outcome is Outcome.APPLIED
    patched = time.monotonic()
    aborted = await wait_for(admin, name, "aborted by the controller", aborted_by_controller)
    print(
        f"\nhandle (read, events, patch, Event): {(patched - started) * 1000:.0f} ms; "
        f"patch -> RolloutAborted: {(time.monotonic() - patched) * 1000:.0f} ms"
    )

    patch_status(admin, name, {"abort": False})  # `kubectl argo rollouts retry rollout`
    retried = await wait_for(admin, name, "the retried canary paused again", paused_canary)
    print(f"\nafter abort: {dump(aborted['status'])}\nafter retry: {dump(retried['status'])}")
    # What the controller does on retry: the same pod hash, from step 0, abortedAt cleared;
    # nothing on the Rollout remembers the abort.
    assert retried["status"]["currentPodHash"] == canary
    assert retried["status"]["stableRS"] == stable
    assert "abortedAt" not in retried["status"]
    assert replica_sets(admin, name)[canary].spec.replicas == 1

    result = await act.handle(command)  # redelivered (a crash before the commit, a rebalance)

    assert result.outcome is Outcome.STALE, result
    assert "retried" in result.detail
    after = read_rollout(admin, NAMESPACE, name)
    assert paused_canary(after, canary), dump(after["status"])
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1


# --- traffic routing: nginx Ingress ---------------------------------------------------------

CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
SCALE_DOWN_DEADLINE = "scale-down-deadline"
ABORT_SCALE_DOWN_DELAY_S = 3


def nginx_manifest(name: str, version: str) -> dict[str, Any]:
    obj = manifest(name, version)
    obj["spec"]["strategy"]["canary"] |= {
        "canaryService": f"{name}-canary",
        "stableService": f"{name}-stable",
        "trafficRouting": {"nginx": {"stableIngress": name}},
        "abortScaleDownDelaySeconds": ABORT_SCALE_DOWN_DELAY_S,
    }
    return obj


def create_services_and_ingress(admin: k8s.ApiClient, name: str) -> None:
    core, networking = k8s.CoreV1Api(admin), k8s.NetworkingV1Api(admin)
    for service in (f"{name}-stable", f"{name}-canary"):
        service_body: Any = {  # the client sends plain JSON as it is
            "metadata": {"name": service},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        core.create_namespaced_service(NAMESPACE, service_body)
    backend = {"service": {"name": f"{name}-stable", "port": {"number": 80}}}
    ingress_body: Any = {
        "metadata": {"name": name},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": f"{name}.example",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ],
        },
    }
    networking.create_namespaced_ingress(NAMESPACE, ingress_body)


def canary_ingress_weight(admin: k8s.ApiClient, name: str) -> str | None:
    try:
        ingress = k8s.NetworkingV1Api(admin).read_namespaced_ingress(
            f"{name}-{name}-canary", NAMESPACE
        )
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    annotations = (ingress.metadata and ingress.metadata.annotations) or {}
    return annotations.get(CANARY_WEIGHT)


async def test_with_nginx_traffic_routing_an_abort_moves_traffic_at_once_and_pods_later(
    admin: k8s.ApiClient, actuator_api: KubeRolloutApi
) -> None:
    name = f"web-{uuid.uuid4().hex[:8]}"
    create_services_and_ingress(admin, name)
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, nginx_manifest(name, "1.0.0")
    )
    healthy = await wait_for(
        admin,
        name,
        "Healthy at v1",
        lambda o: reconciled(o) and o.get("status", {}).get("phase") == "Healthy",
    )
    stable = healthy["status"]["stableRS"]
    set_image(admin, name, "2.0.0")
    paused = await wait_for(admin, name, "canary v2 paused at 20 %", paused_canary)
    canary = paused["status"]["currentPodHash"]
    weights = paused["status"]["canary"]["weights"]
    assert (weights["canary"]["weight"], weights["canary"]["podTemplateHash"]) == (20, canary)
    assert canary_ingress_weight(admin, name) == "20"
    # With traffic routing the canary gets its own full share of pods: stable keeps all five.
    sets = replica_sets(admin, name)
    assert (sets[canary].spec.replicas, sets[stable].spec.replicas) == (1, REPLICAS)

    act, _ = actuator(Settings(), actuator_api)
    assert (await act.handle(command_for(NAMESPACE, name, canary))).outcome is Outcome.APPLIED
    aborted_at = time.monotonic()
    after = await wait_for(admin, name, "aborted by the controller", aborted_by_controller)
    assert after["status"]["canary"]["weights"]["canary"]["weight"] == 0, dump(after["status"])
    await poll_until(
        lambda: canary_ingress_weight(admin, name) == "0", WITHIN_S, "canary Ingress weight 0"
    )
    # The canary's pods stay for abortScaleDownDelaySeconds, marked with a deadline.
    held = replica_sets(admin, name)[canary]
    annotations = (held.metadata and held.metadata.annotations) or {}
    if held.spec.replicas:
        assert any(SCALE_DOWN_DEADLINE in key for key in annotations), annotations

    def canary_scaled_down() -> bool:
        return replica_sets(admin, name)[canary].spec.replicas == 0

    await poll_until(canary_scaled_down, WITHIN_S, "the canary ReplicaSet scaled to 0")
    waited = time.monotonic() - aborted_at
    print(f"\nnginx: canary ReplicaSet scaled to 0 {waited:.1f} s after the abort patch")
    assert waited >= ABORT_SCALE_DOWN_DELAY_S - 1.5  # not at once (second-resolution deadline)


# --- the pause policy ------------------------------------------------------------------------

PAUSE_OVERLAY_RBAC = REPO_ROOT / "deploy" / "overlays" / "pause" / "rbac-pause.yaml"


@pytest.fixture
def pausing_api(kube_api: LocalKubeAPI, controller: None) -> Iterator[KubeRolloutApi]:
    """The actuator's identity with the pause overlay's grant, bound in `NAMESPACE` only (a
    ClusterRoleBinding would change what test_kube_rbac.py asserts the base allows)."""
    role, _ = yaml.safe_load_all(PAUSE_OVERLAY_RBAC.read_text())
    kube_api.apply(role)
    subject = kube_api.identities["actuator"].user.split(":")  # system:serviceaccount:ns:name
    kube_api.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "canarywatch-actuator-pause", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"kind": "ServiceAccount", "namespace": subject[2], "name": subject[3]}],
        }
    )
    with kube_api.client("actuator") as api:
        yield KubeRolloutApi(api)


async def test_the_pause_policy_holds_the_canary_and_never_pauses_it_again_after_a_resume(
    admin: k8s.ApiClient, pausing_api: KubeRolloutApi
) -> None:
    name, canary, stable = await canary_in_progress(admin)
    # The environment's policy is abort; this Rollout's annotation says pause.
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name,
        {"metadata": {"annotations": {POLICY_ANNOTATION: Action.PAUSE.value}}},
        _content_type=MERGE_PATCH,
    )  # fmt: skip
    command = command_for(NAMESPACE, name, canary)
    registry = CollectorRegistry()
    act = Actuator(Settings(), pausing_api, ActuatorMetrics(registry), policy=FAST)

    assert (await act.handle(command)).outcome is Outcome.APPLIED
    paused = await wait_for(
        admin,
        name,
        "manually paused",
        lambda o: reconciled(o) and o["status"].get("message") == "manually paused",
    )
    # Paused, not aborted: the canary keeps its pods and its step until a person decides.
    assert paused["spec"]["paused"] is True
    assert (paused["status"]["phase"], paused["status"]["currentPodHash"]) == ("Paused", canary)
    assert not paused["status"].get("abort") and not paused["status"].get("abortedAt")
    sets = replica_sets(admin, name)
    assert (sets[canary].spec.replicas, sets[stable].spec.replicas) == (1, REPLICAS - 1)
    reasons = {e.reason for e in events_about(admin, NAMESPACE, name)}
    assert "CanarywatchPause" in reasons and "RolloutAborted" not in reasons, reasons

    # `kubectl argo rollouts resume`: spec.paused false; the canary waits at its pause step again.
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": {"paused": False}},
        _content_type=MERGE_PATCH,
    )  # fmt: skip
    await wait_for(admin, name, "resumed, at its pause step", paused_canary)

    result = await act.handle(command)  # redelivered

    assert result.outcome is Outcome.STALE and "resumed" in result.detail, result
    after = read_rollout(admin, NAMESPACE, name)
    assert not after["spec"].get("paused") and paused_canary(after, canary)
    assert count(registry, "canarywatch_actuator_commands_total", outcome="applied") == 1


# --- the bridge on the real controller's Rollouts ---------------------------------------------


@pytest.mark.kafka
async def test_every_snapshot_pairs_the_canary_hash_with_its_own_release(
    kafka_bootstrap: str, tmp_path: Path, admin: k8s.ApiClient, kube_api: LocalKubeAPI
) -> None:
    """v1 -> v2 (canary) -> v3 (a new canary over the paused one) -> deleted, with the bridge
    watching: a spec change is seen by the watch before the controller reconciles it, and a
    snapshot of that moment would name the old canary's hash with the new release."""
    settings = unique_settings(kafka_bootstrap, tmp_path, "argo-bridge")
    await create_topics(settings)
    registry = CollectorRegistry()
    with kube_api.client("bridge") as bridge_client:
        reader = RolloutReader(bridge_client, timeout=(2, 10))
        bridge = Bridge(settings, reader, BridgeMetrics(registry), BridgeOptions((NAMESPACE,)))
        async with (
            Snapshots(kafka_bootstrap, settings.topics.rollouts) as snapshots,
            bridge_running(bridge, registry),
        ):
            name, canary, stable = await canary_in_progress(admin)
            set_image(admin, name, "3.0.0")
            third = await wait_for(
                admin,
                name,
                "v3 the new canary",
                lambda o: paused_canary(o) and o["status"]["currentPodHash"] != canary,
            )
            newest = third["status"]["currentPodHash"]
            k8s.CustomObjectsApi(admin).delete_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, name
            )
            key = f"{NAMESPACE}/{name}"
            states = await snapshots.until(key, 1)
            while not states[-1].ended:
                states = await snapshots.until(key, len(states) + 1, within=WITHIN_S)

    release_of_hash = {
        stable: IMAGE.format("1.0.0"),
        canary: IMAGE.format("2.0.0"),
        newest: IMAGE.format("3.0.0"),
    }
    pairs = [(s.current_pod_hash, s.release) for s in states]
    wrong = [s for s in states if release_of_hash[s.current_pod_hash] != s.release]
    assert not wrong, wrong
    assert {h for h, _ in pairs} == set(release_of_hash)  # each revision was seen
    assert [s.ended for s in states].count(True) == 1 and states[-1].current_pod_hash == newest
    # The watch did see the Rollouts whose spec the controller had not reconciled yet.
    held = {"source": "watch", "outcome": "unreconciled"}
    assert count(registry, "canarywatch_bridge_snapshots_total", **held) >= 2
