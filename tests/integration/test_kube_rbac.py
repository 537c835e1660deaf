"""deploy/base RBAC against a real kube-apiserver: each identity can do its job and no more."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics, Outcome
from agents.rolloutapi import KubeRolloutApi
from agents.settings import Settings
from streams.actuation import RetryPolicy
from streams.events import AbortCommand, Evidence
from streams.rollouts import POLICY_ANNOTATION, Action
from tests.support.localkube import REPO_ROOT, LocalKubeAPI
from tests.support.rbac import DEPLOY_BASE, render_rbac

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
NAMESPACE = "shop-prod"
MERGE_PATCH = "application/merge-patch+json"
INITIAL_STATUS = {
    "phase": "Paused",
    "currentPodHash": "5d4f8c7b9",
    "stableRS": "6b7c9d8f4",
    "currentStepIndex": 1,
    "replicas": 2,
}


def rollout_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop:1.2.3"}]},
            },
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
        },
    }


def forbidden(call: Callable[[], object]) -> k8s.ApiException:
    with pytest.raises(k8s.ApiException) as exc:
        call()
    assert exc.value.status == 403, exc.value.body
    return exc.value


@pytest.fixture(scope="module")
def admin(kube_api: LocalKubeAPI) -> Iterator[k8s.ApiClient]:
    with kube_api.client("admin") as api:
        kube_api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield api


@pytest.fixture
def actuator(kube_api: LocalKubeAPI) -> Iterator[k8s.ApiClient]:
    with kube_api.client("actuator") as api:
        yield api


@pytest.fixture
def bridge(kube_api: LocalKubeAPI) -> Iterator[k8s.ApiClient]:
    with kube_api.client("bridge") as api:
        yield api


@pytest.fixture
def rollout(admin: k8s.ApiClient) -> str:
    """A Rollout created as admin, with a canary status set through the status subresource."""
    name = f"shop-{uuid.uuid4().hex[:8]}"
    objects = k8s.CustomObjectsApi(admin)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, rollout_manifest(name)
    )
    objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        name,
        {"status": INITIAL_STATUS},
        _content_type=MERGE_PATCH,
    )
    return name


def read(api: k8s.ApiClient, name: str) -> dict[str, Any]:
    obj = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name
    )
    return cast(dict[str, Any], obj)  # custom objects come back as untyped JSON (`object`)


def test_admin_sets_status_through_subresource(admin: k8s.ApiClient, rollout: str) -> None:
    obj = read(admin, rollout)
    assert obj["status"] == INITIAL_STATUS
    assert obj["metadata"]["generation"] == 1  # a status write does not bump the generation


def test_actuator_aborts_through_status_subresource(
    admin: k8s.ApiClient, actuator: k8s.ApiClient, rollout: str
) -> None:
    before = read(admin, rollout)
    k8s.CustomObjectsApi(actuator).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        rollout,
        {"status": {"abort": True}},
        _content_type=MERGE_PATCH,
    )
    after = read(admin, rollout)
    assert after["status"] == {**INITIAL_STATUS, "abort": True}
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    # The actuator may read what it patched (get/list/watch).
    assert read(actuator, rollout)["status"]["abort"] is True


def test_actuator_cannot_patch_spec_or_main_resource(
    admin: k8s.ApiClient, actuator: k8s.ApiClient, rollout: str
) -> None:
    objects = k8s.CustomObjectsApi(actuator)
    for body in ({"spec": {"paused": True}}, {"status": {"abort": True}}):
        forbidden(
            functools.partial(
                objects.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                NAMESPACE,
                PLURAL,
                rollout,
                body,
                _content_type=MERGE_PATCH,
            )
        )
    obj = read(admin, rollout)
    assert "paused" not in obj["spec"]
    assert "abort" not in obj["status"]


def test_actuator_cannot_delete_or_create_rollouts(actuator: k8s.ApiClient, rollout: str) -> None:
    objects = k8s.CustomObjectsApi(actuator)
    forbidden(
        lambda: objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, rollout)
    )
    forbidden(
        lambda: objects.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, rollout_manifest(f"{rollout}-x")
        )
    )


def test_actuator_cannot_read_secrets(admin: k8s.ApiClient, actuator: k8s.ApiClient) -> None:
    name = f"db-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(admin).create_namespaced_secret(
        NAMESPACE,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data={"password": "hunter2"}),
    )
    core = k8s.CoreV1Api(actuator)
    forbidden(lambda: core.read_namespaced_secret(name, NAMESPACE))
    forbidden(lambda: core.list_namespaced_secret(NAMESPACE))


def test_actuator_creates_events(
    admin: k8s.ApiClient, actuator: k8s.ApiClient, rollout: str
) -> None:
    ref = k8s.V1ObjectReference(
        api_version=f"{GROUP}/{VERSION}",
        kind="Rollout",
        namespace=NAMESPACE,
        name=rollout,
    )
    core_name, new_name = f"{rollout}.core", f"{rollout}.new"
    k8s.CoreV1Api(actuator).create_namespaced_event(
        NAMESPACE,
        k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=core_name),
            involved_object=ref,
            type="Warning",
            reason="CanarywatchAbort",
            message="canary error rate above stable",
            source=k8s.V1EventSource(component="canarywatch-actuator"),
        ),
    )
    k8s.EventsV1Api(actuator).create_namespaced_event(
        NAMESPACE,
        k8s.EventsV1Event(
            metadata=k8s.V1ObjectMeta(name=new_name),
            regarding=ref,
            type="Warning",
            reason="CanarywatchAbort",
            action="Abort",
            note="canary error rate above stable",
            reporting_controller="canarywatch.io/actuator",
            reporting_instance="actuator-0",
            # Non-zero microseconds: kubernetes-client 37 serialises MicroTime via isoformat(),
            # which drops a zero fraction, and the server then rejects the time (400).
            event_time=datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        ),
    )
    got = k8s.CoreV1Api(admin).read_namespaced_event(core_name, NAMESPACE)
    assert got.reason == "CanarywatchAbort"
    assert got.involved_object.name == rollout
    assert k8s.EventsV1Api(admin).read_namespaced_event(new_name, NAMESPACE).action == "Abort"
    # Creating events is all it may do with them.
    forbidden(lambda: k8s.CoreV1Api(actuator).delete_namespaced_event(core_name, NAMESPACE))


def test_bridge_lists_and_watches_rollouts(
    admin: k8s.ApiClient, bridge: k8s.ApiClient, rollout: str
) -> None:
    objects = k8s.CustomObjectsApi(bridge)
    # custom objects come back as untyped JSON (`object`)
    listed = cast(dict[str, Any], objects.list_cluster_custom_object(GROUP, VERSION, PLURAL))
    assert rollout in {item["metadata"]["name"] for item in listed["items"]}
    resource_version = listed["metadata"]["resourceVersion"]
    # A change after the list is delivered by a watch started from the list's resourceVersion,
    # whenever the watch connects.
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        rollout,
        {"status": {"currentStepIndex": 2}},
        _content_type=MERGE_PATCH,
    )
    seen: dict[str, Any] | None = None
    w = watch.Watch()  # type: ignore[no-untyped-call]  # kubernetes.watch is unannotated
    for event in w.stream(  # type: ignore[no-untyped-call]
        objects.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        resource_version=resource_version,
        timeout_seconds=30,
    ):
        obj = event["object"]
        if event["type"] == "MODIFIED" and obj["metadata"]["name"] == rollout:
            seen = obj
            w.stop()  # type: ignore[no-untyped-call]
    assert seen is not None, "no MODIFIED event for the rollout within 30 s"
    assert seen["status"]["currentStepIndex"] == 2


def test_bridge_reads_events(bridge: k8s.ApiClient) -> None:
    k8s.CoreV1Api(bridge).list_namespaced_event(NAMESPACE)
    # Raw response: kubernetes-client 37's EventsV1Event model requires eventTime, which events
    # created through the core API lack, so the typed list fails to parse.
    # With _preload_content=False the client returns the raw urllib3 response, not the
    # EventsV1EventList its signature declares.
    resp = cast(
        urllib3.BaseHTTPResponse,
        k8s.EventsV1Api(bridge).list_namespaced_event(NAMESPACE, _preload_content=False),
    )
    assert resp.status == 200
    forbidden(
        lambda: k8s.CoreV1Api(bridge).create_namespaced_event(
            NAMESPACE,
            k8s.CoreV1Event(
                metadata=k8s.V1ObjectMeta(name="x"),
                involved_object=k8s.V1ObjectReference(name="x", namespace=NAMESPACE),
            ),
        )
    )


def test_bridge_cannot_patch(admin: k8s.ApiClient, bridge: k8s.ApiClient, rollout: str) -> None:
    objects = k8s.CustomObjectsApi(bridge)
    abort = {"status": {"abort": True}}
    forbidden(
        lambda: objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, rollout, abort, _content_type=MERGE_PATCH
        )
    )
    forbidden(
        lambda: objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            rollout,
            {"spec": {"paused": True}},
            _content_type=MERGE_PATCH,
        )
    )
    assert "abort" not in read(admin, rollout)["status"]


@pytest.mark.parametrize("identity", ["worker", "nobody"])
def test_identities_without_rollout_rights(kube_api: LocalKubeAPI, identity: str) -> None:
    """Guards against a permissive authorizer: unbound identities are denied."""
    with kube_api.client(identity) as api:
        objects = k8s.CustomObjectsApi(api)
        forbidden(lambda: objects.list_cluster_custom_object(GROUP, VERSION, PLURAL))


# --- the migrator (`canarywatch migrate`): its own identity, separate from the actuator's -------


@pytest.fixture
def migrator(kube_api: LocalKubeAPI) -> Iterator[k8s.ApiClient]:
    with kube_api.client("migrator") as api:
        yield api


def deployment_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop:1"}]},
            },
        },
    }


@pytest.fixture
def deployment(kube_api: LocalKubeAPI, admin: k8s.ApiClient) -> str:
    """A Deployment and an HPA on it, made by admin."""
    name = f"mig-{uuid.uuid4().hex[:8]}"
    k8s.AppsV1Api(admin).create_namespaced_deployment(
        NAMESPACE, cast(Any, deployment_manifest(name))
    )
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 3,
        },
    }
    k8s.AutoscalingV2Api(admin).create_namespaced_horizontal_pod_autoscaler(
        NAMESPACE, cast(Any, hpa)
    )
    return name


def test_migrator_can_do_its_job(migrator: k8s.ApiClient, deployment: str) -> None:
    apps, objects = k8s.AppsV1Api(migrator), k8s.CustomObjectsApi(migrator)
    apps.list_deployment_for_all_namespaces(limit=1)
    k8s.PolicyV1Api(migrator).list_pod_disruption_budget_for_all_namespaces(limit=1)
    k8s.CoreV1Api(migrator).list_service_for_all_namespaces(limit=1)
    k8s.AutoscalingV2Api(migrator).list_horizontal_pod_autoscaler_for_all_namespaces(limit=1)
    patch = {"metadata": {"annotations": {"migrate.canarywatch.io/phase": "migrating"}}}
    apps.patch_namespaced_deployment(deployment, NAMESPACE, patch, _content_type=MERGE_PATCH)
    apps.patch_namespaced_deployment(
        deployment, NAMESPACE, {"spec": {"replicas": 0}}, _content_type=MERGE_PATCH
    )
    body = rollout_manifest(deployment)
    del body["spec"]["template"]
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
    body["spec"]["workloadRef"] = ref
    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, deployment,
        {"spec": {"workloadRef": {"scaleDown": "never"}}}, _content_type=MERGE_PATCH,
    )  # fmt: skip
    target = {"spec": {"scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout"}}}
    k8s.AutoscalingV2Api(migrator).patch_namespaced_horizontal_pod_autoscaler(
        deployment, NAMESPACE, target, _content_type=MERGE_PATCH
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, deployment)


def test_migrator_is_denied_what_it_must_not_do(
    migrator: k8s.ApiClient, actuator: k8s.ApiClient, deployment: str, rollout: str
) -> None:
    apps, objects = k8s.AppsV1Api(migrator), k8s.CustomObjectsApi(migrator)
    core, hpas = k8s.CoreV1Api(migrator), k8s.AutoscalingV2Api(migrator)
    # Deployments: never created, replaced or deleted; their status is the controller's
    forbidden(
        lambda: apps.create_namespaced_deployment(NAMESPACE, cast(Any, deployment_manifest("x")))
    )
    forbidden(lambda: apps.delete_namespaced_deployment(deployment, NAMESPACE))
    current = apps.read_namespaced_deployment(deployment, NAMESPACE)
    forbidden(lambda: apps.replace_namespaced_deployment(deployment, NAMESPACE, current))
    forbidden(
        lambda: apps.patch_namespaced_deployment_status(
            deployment, NAMESPACE, {"status": {"replicas": 9}}, _content_type=MERGE_PATCH
        )
    )
    # Rollouts: no status writes (the controller's, and aborts are the actuator's)
    forbidden(
        lambda: objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, rollout, {"status": {"abort": True}},
            _content_type=MERGE_PATCH,
        )
    )  # fmt: skip
    # no Pods, ReplicaSets, Secrets or Events; HPAs, PDBs and Services are not its to make
    forbidden(lambda: core.list_namespaced_pod(NAMESPACE))
    forbidden(lambda: core.list_namespaced_secret(NAMESPACE))
    forbidden(lambda: apps.list_namespaced_replica_set(NAMESPACE))
    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name="e"),
        involved_object=k8s.V1ObjectReference(kind="Deployment", name=deployment),
    )
    forbidden(lambda: core.create_namespaced_event(NAMESPACE, event))
    forbidden(lambda: hpas.delete_namespaced_horizontal_pod_autoscaler(deployment, NAMESPACE))
    forbidden(
        lambda: core.patch_namespaced_service(
            "web", NAMESPACE, {"spec": {"selector": {"app": "x"}}}, _content_type=MERGE_PATCH
        )
    )
    forbidden(
        lambda: k8s.PolicyV1Api(migrator).delete_namespaced_pod_disruption_budget("p", NAMESPACE)
    )
    # and the actuator cannot migrate: the two identities are separate
    forbidden(
        lambda: k8s.AppsV1Api(actuator).patch_namespaced_deployment(
            deployment, NAMESPACE, {"spec": {"replicas": 0}}, _content_type=MERGE_PATCH
        )
    )
    forbidden(
        lambda: k8s.AutoscalingV2Api(actuator).patch_namespaced_horizontal_pod_autoscaler(
            deployment, NAMESPACE, {"spec": {"maxReplicas": 4}}, _content_type=MERGE_PATCH
        )
    )


def test_rbac_objects_come_from_deploy_base(admin: k8s.ApiClient) -> None:
    rbac = k8s.RbacAuthorizationV1Api(admin)
    role = rbac.read_cluster_role("canarywatch-actuator")
    assert role.rules is not None
    # A rule without apiGroups or resources (e.g. a nonResourceURLs rule) grants none of them.
    granted = {
        (group, resource, verb)
        for rule in role.rules
        for group in rule.api_groups or ()
        for resource in rule.resources or ()
        for verb in rule.verbs
    }
    assert {(g, r) for g, r, v in granted if v == "patch"} == set()  # every policy's: no write
    abort = rbac.read_cluster_role("canarywatch-actuator-abort")
    assert [(r.api_groups, r.resources, r.verbs) for r in abort.rules or ()] == [
        ([GROUP], ["rollouts/status"], ["patch"])
    ]
    for name in ("canarywatch-actuator", "canarywatch-actuator-abort"):
        binding = rbac.read_cluster_role_binding(name)
        assert binding.subjects is not None
        assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [
            ("ServiceAccount", "canarywatch", "canarywatch-actuator")
        ]


def test_restart_apiserver_keeps_state_port_and_tokens(
    kube_api: LocalKubeAPI, admin: k8s.ApiClient, rollout: str, tmp_path: Path
) -> None:
    port = kube_api.port
    kube_api.restart_apiserver()
    assert kube_api.port == port
    assert read(admin, rollout)["status"] == INITIAL_STATUS  # same etcd, same client, same token
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig", identity="bridge")
    # kubernetes.config is unannotated
    api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        str(path)
    )
    with api:
        assert read(api, rollout)["metadata"]["name"] == rollout
        forbidden(lambda: k8s.CoreV1Api(api).list_namespaced_secret(NAMESPACE))


def test_unknown_token_is_unauthenticated(kube_api: LocalKubeAPI) -> None:
    with (
        kube_api.client(token="not-a-canarywatch-token") as api,
        pytest.raises(k8s.ApiException) as exc,
    ):
        k8s.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert exc.value.status == 401


# --- each policy's RBAC (deploy/base, overlays/pause, overlays/dry-run), with the actuator ------

POLICY_DEPLOY = {
    Action.ABORT: DEPLOY_BASE,
    Action.PAUSE: REPO_ROOT / "deploy" / "overlays" / "pause",
    Action.DRY_RUN: REPO_ROOT / "deploy" / "overlays" / "dry-run",
}
# What each directory's actuator can do, by the Rollout's policy: the rest answers 403.
GRANTED = {
    Action.ABORT: {Action.ABORT, Action.DRY_RUN},
    Action.PAUSE: {Action.ABORT, Action.PAUSE, Action.DRY_RUN},
    Action.DRY_RUN: {Action.DRY_RUN},
}
CANARY = str(INITIAL_STATUS["currentPodHash"])
FAST = RetryPolicy(base_s=0.05, max_s=0.2, budget_s=10.0)


def actuator_roles(directory: Path) -> list[dict[str, Any]]:
    """The ClusterRoles that `directory` binds to the actuator's ServiceAccount."""
    objects = render_rbac(directory)
    bound = {
        o["roleRef"]["name"]
        for o in objects
        if o["kind"] == "ClusterRoleBinding"
        and any(s.get("name") == "canarywatch-actuator" for s in o.get("subjects") or [])
    }
    return [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] in bound]


@pytest.fixture(scope="module")
def policy_clients(
    kube_api: LocalKubeAPI, admin: k8s.ApiClient
) -> Iterator[dict[Action, tuple[str, KubeRolloutApi]]]:
    """Per deployed policy: a namespace where the `nobody` identity holds exactly the ClusterRoles
    that directory gives the actuator (copied under test names, bound by RoleBindings, so that
    the cluster-wide actuator identity the other tests use keeps the base's grants)."""
    clients: dict[Action, tuple[str, KubeRolloutApi]] = {}
    with contextlib.ExitStack() as stack:
        for deployed, directory in POLICY_DEPLOY.items():
            namespace = f"cw-policy-{deployed.value}"
            kube_api.apply(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            )
            for role in actuator_roles(directory):
                name = f"test-{deployed.value}-{role['metadata']['name']}"
                kube_api.apply({**role, "metadata": {"name": name}})
                kube_api.apply(
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "RoleBinding",
                        "metadata": {"name": name, "namespace": namespace},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": name,
                        },
                        "subjects": [
                            {
                                "apiGroup": "rbac.authorization.k8s.io",
                                "kind": "User",
                                "name": kube_api.identities["nobody"].user,
                            }
                        ],
                    }
                )
            api = stack.enter_context(kube_api.client("nobody"))
            clients[deployed] = (namespace, KubeRolloutApi(api))
        yield clients


def annotated_rollout(admin: k8s.ApiClient, namespace: str, policy: Action | None) -> str:
    """A Rollout with a canary in progress (reconciled), annotated with `policy` if given."""
    name = f"shop-{uuid.uuid4().hex[:8]}"
    body = rollout_manifest(name)
    body["metadata"]["namespace"] = namespace
    if policy is not None:
        body["metadata"]["annotations"] = {POLICY_ANNOTATION: policy.value}
    objects = k8s.CustomObjectsApi(admin)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    status = {**INITIAL_STATUS, "observedGeneration": "1"}
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
    )
    return name


def bad_canary_command(namespace: str, name: str) -> AbortCommand:
    return AbortCommand(
        decision_id=f"{namespace}/{name}@{CANARY}",
        namespace=namespace,
        rollout=name,
        pod_hash=CANARY,
        decided_at=time.time(),
        evidence=Evidence("errors", 118, 9, 1042, 1, 5.31, 4.61, 0.1017, 41.5, 0.083, 0.001),
        reason="CanaryErrorsRegression",
    )


@pytest.mark.parametrize("deployed", list(Action))
@pytest.mark.parametrize("annotation", [None, *Action])
async def test_each_policy_gets_exactly_the_rbac_it_needs(
    admin: k8s.ApiClient,
    policy_clients: dict[Action, tuple[str, KubeRolloutApi]],
    deployed: Action,
    annotation: Action | None,
) -> None:
    """The actuator deployed with `deployed`'s directory and CANARYWATCH_ACTION_POLICY, on a
    Rollout whose annotation overrides it: what the directory grants is applied, the rest is a
    403 from the API server (outcome failed, dead-lettered by the consumer loop) and writes
    nothing."""
    namespace, api = policy_clients[deployed]
    name = annotated_rollout(admin, namespace, annotation)
    registry = CollectorRegistry()
    actuator = Actuator(
        Settings(action_policy=deployed), api, ActuatorMetrics(registry), policy=FAST
    )
    policy = annotation or deployed

    result = await actuator.handle(bad_canary_command(namespace, name))

    after = k8s.CustomObjectsApi(admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    obj = cast(dict[str, Any], after)
    reasons = {
        e.reason
        for e in k8s.CoreV1Api(admin)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    }
    aborted, paused = obj["status"].get("abort") is True, obj["spec"].get("paused") is True
    if policy not in GRANTED[deployed]:
        assert result.outcome is Outcome.FAILED and result.detail.startswith("403"), result
        assert not aborted and not paused and not reasons, (obj, reasons)
    elif policy is Action.DRY_RUN:
        assert result.outcome is Outcome.DRY_RUN, result
        assert not aborted and not paused
        assert reasons == {"CanarywatchDryRun"}, reasons
    else:
        assert result.outcome is Outcome.APPLIED and result.action is policy, result
        assert (aborted, paused) == (policy is Action.ABORT, policy is Action.PAUSE), obj
        assert reasons == {"CanarywatchAbort" if aborted else "CanarywatchPause"}, reasons
