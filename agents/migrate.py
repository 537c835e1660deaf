"""`canarywatch migrate`: Deployments become Argo Rollouts in waves, with no downtime.

The plan and every per-service decision are pure (`streams.migration`); this module reads the
cluster, applies the decided actions and runs the waves:

- `KubeMigrationApi`: the Kubernetes calls (synchronous kubernetes client, raw JSON dicts);
- `ChangeFeed`: watches of Deployments, Rollouts and HPAs in threads; a service waiting for the
  controller is woken by a change to one of its objects instead of polling the API server;
- `Migrator`: per service, read the objects, ask `next_action`, apply it, until done; a wave's
  services run concurrently in a thread pool (`concurrency`), and a wave in which more than the
  failure budget of its services were rolled back stops the migration.

Every write carries the `metadata.resourceVersion` its decision was made on (409 when the
object changed: read and decide again), and progress lives in annotations on the objects, so a
migrator killed at any point and started again finishes what it had started, creates no second
Rollout and scales no Deployment down twice.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.migration import (
    ANN_PHASE,
    ANN_REASON,
    ANN_REPLICAS,
    Act,
    Action,
    Phase,
    ScaleDown,
    ServicePlan,
    annotations_of,
    build_rollout,
    key_of,
    namespace_of,
    next_action,
    plan_service,
    validate_template,
    wave_failed,
    waves,
)

log = logging.getLogger("canarywatch.migrate")

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
MERGE_PATCH = "application/merge-patch+json"
Obj = dict[str, Any]


class KubeError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {reason}")
        self.status = status


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except k8s.ApiException as exc:
        raise KubeError(int(exc.status or 0), str(exc.reason)) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KubeError(0, f"{type(exc).__name__}: {exc}") from exc


def _json(resp: Any) -> Obj:
    # With _preload_content=False the client returns the raw urllib3 response.
    return cast(Obj, json.loads(cast(urllib3.BaseHTTPResponse, resp).data))


def migrate_api_client(kubeconfig: str | None, pool: int) -> k8s.ApiClient:
    """A client from `kubeconfig`, else in-cluster, else ~/.kube/config, with a connection pool
    big enough for `pool` threads."""
    configuration = k8s.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool
    return k8s.ApiClient(configuration)


class KubeMigrationApi:
    """The Kubernetes calls of the migrator, on raw JSON. Every method may raise KubeError."""

    def __init__(self, api: k8s.ApiClient, timeout: tuple[float, float] = (5, 30)) -> None:
        self.api = api
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._objects = k8s.CustomObjectsApi(api)
        self._hpa = k8s.AutoscalingV2Api(api)
        self._policy = k8s.PolicyV1Api(api)
        self._t = timeout

    def _items(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Obj]:
        items: list[Obj] = []
        token = ""
        while True:
            with _errors():
                page = _json(
                    call(
                        *args,
                        limit=500,
                        _continue=token or None,
                        _preload_content=False,
                        _request_timeout=self._t,
                        **kwargs,
                    )
                )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def _get(self, call: Callable[..., Any], *args: Any) -> Obj | None:
        with _errors():
            try:
                return _json(call(*args, _preload_content=False, _request_timeout=self._t))
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    # lists (per namespace, or every namespace when `namespace` is "")
    def deployments(self, namespace: str, selector: str) -> list[Obj]:
        if namespace:
            return self._items(
                self._apps.list_namespaced_deployment, namespace, label_selector=selector
            )
        return self._items(self._apps.list_deployment_for_all_namespaces, label_selector=selector)

    def rollouts(self, namespace: str) -> list[Obj]:
        if namespace:
            return self._items(
                self._objects.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
            )
        return self._items(self._objects.list_cluster_custom_object, GROUP, VERSION, PLURAL)

    def hpas(self, namespace: str) -> list[Obj]:
        if namespace:
            return self._items(self._hpa.list_namespaced_horizontal_pod_autoscaler, namespace)
        return self._items(self._hpa.list_horizontal_pod_autoscaler_for_all_namespaces)

    def pdbs(self, namespace: str) -> list[Obj]:
        if namespace:
            return self._items(self._policy.list_namespaced_pod_disruption_budget, namespace)
        return self._items(self._policy.list_pod_disruption_budget_for_all_namespaces)

    def services(self, namespace: str) -> list[Obj]:
        if namespace:
            return self._items(self._core.list_namespaced_service, namespace)
        return self._items(self._core.list_service_for_all_namespaces)

    # one object
    def deployment(self, namespace: str, name: str) -> Obj | None:
        return self._get(self._apps.read_namespaced_deployment, name, namespace)

    def rollout(self, namespace: str, name: str) -> Obj | None:
        return self._get(
            self._objects.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    def hpa(self, namespace: str, name: str) -> Obj | None:
        return self._get(self._hpa.read_namespaced_horizontal_pod_autoscaler, name, namespace)

    # writes
    def patch_deployment(self, namespace: str, name: str, body: Obj) -> Obj:
        with _errors():
            return _json(
                self._apps.patch_namespaced_deployment(
                    name,
                    namespace,
                    body,
                    _content_type=MERGE_PATCH,
                    _preload_content=False,
                    _request_timeout=self._t,
                )
            )

    def create_rollout(self, namespace: str, body: Obj) -> Obj | None:
        """The Rollout created; None when one of that name exists already."""
        with _errors():
            try:
                return _json(
                    self._objects.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        body,
                        _preload_content=False,
                        _request_timeout=self._t,
                    )
                )
            except k8s.ApiException as exc:
                if exc.status == 409:
                    return None
                raise

    def patch_rollout(self, namespace: str, name: str, body: Obj) -> Obj:
        with _errors():
            return _json(
                self._objects.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    body,
                    _content_type=MERGE_PATCH,
                    _preload_content=False,
                    _request_timeout=self._t,
                )
            )

    def delete_rollout(self, namespace: str, name: str, uid: str) -> None:
        body = k8s.V1DeleteOptions(
            propagation_policy="Background", preconditions=k8s.V1Preconditions(uid=uid)
        )
        with _errors():
            try:
                self._objects.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    body=body,
                    _preload_content=False,
                    _request_timeout=self._t,
                )
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise

    def patch_hpa(self, namespace: str, name: str, body: Obj) -> Obj:
        with _errors():
            return _json(
                self._hpa.patch_namespaced_horizontal_pod_autoscaler(
                    name,
                    namespace,
                    body,
                    _content_type=MERGE_PATCH,
                    _preload_content=False,
                    _request_timeout=self._t,
                )
            )


def _rv(obj: Mapping[str, Any]) -> int:
    value = str((obj.get("metadata") or {}).get("resourceVersion") or "0")
    return int(value) if value.isdigit() else 0


class ChangeFeed:
    """Watches of Deployments (of the selector), Rollouts and HPAs in every namespace, kept as
    an object cache that the service threads decide from, so that waiting costs the API server
    nothing. `wait(key, seen)` returns when an object of service `key` ("namespace/name")
    changed after `version(key)` was `seen`.

    A decision made on a cached object that is stale is harmless: every write carries the
    resourceVersion (or uid) it was decided on and is refused with 409; the migrator then
    reads the objects afresh and `put`s them here. Writes `put` their answers too. An object is
    replaced only by a newer one (resourceVersions of one etcd compare as integers)."""

    KINDS = ("deployment", "rollout", "hpa")

    def __init__(self, api: k8s.ApiClient, selector: str = "") -> None:
        apps, objects = k8s.AppsV1Api(api), k8s.CustomObjectsApi(api)
        hpa = k8s.AutoscalingV2Api(api)
        self._cond = threading.Condition()
        self._versions: Tally[str] = Tally()
        self._objects: dict[tuple[str, str, str], tuple[int, Obj | None]] = {}
        self._stopping = threading.Event()
        deployments: dict[str, Any] = {"label_selector": selector} if selector else {}
        sources: list[tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
            ("deployment", apps.list_deployment_for_all_namespaces, (), deployments),
            ("rollout", objects.list_cluster_custom_object, (GROUP, VERSION, PLURAL), {}),
            ("hpa", hpa.list_horizontal_pod_autoscaler_for_all_namespaces, (), {}),
        ]
        self._synced = {kind: threading.Event() for kind in self.KINDS}
        self._threads = [
            threading.Thread(
                target=self._run, args=(kind, fn, args, kw), name=f"feed-{kind}", daemon=True
            )
            for kind, fn, args, kw in sources
        ]

    def start(self, timeout: float = 120.0) -> ChangeFeed:
        """Start the watches; return once each has listed its objects."""
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for kind, synced in self._synced.items():
            if not synced.wait(max(0.0, deadline - time.monotonic())):
                raise KubeError(0, f"could not list {kind}s within {timeout:.0f}s")
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def version(self, key: str) -> int:
        with self._cond:
            return self._versions[key]

    def wait(self, key: str, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._versions[key] != seen or self._stopping.is_set(), timeout
            )

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            found = self._objects.get((kind, namespace, name))
        return copy.deepcopy(found[1]) if found and found[1] is not None else None

    def put(self, kind: str, obj: Mapping[str, Any] | None, *, deleted: bool = False) -> None:
        if not obj or not obj.get("metadata"):
            return
        meta = obj["metadata"]
        key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        rv = _rv(obj)
        with self._cond:
            held = self._objects.get(key)
            if held is not None and rv and held[0] > rv:
                return  # we hold a newer one
            self._objects[key] = (rv, None if deleted else dict(obj))
        self._bump(obj)

    def _bump(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        keys = {f"{meta.get('namespace')}/{meta.get('name')}"}
        target = ((obj.get("spec") or {}).get("scaleTargetRef") or {}).get("name")
        if target:
            keys.add(f"{meta.get('namespace')}/{target}")
        with self._cond:
            for key in keys:
                self._versions[key] += 1
            self._cond.notify_all()

    def _run(
        self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> None:
        version = ""
        while not self._stopping.is_set():
            try:
                if not version:
                    listed = _json(
                        fn(*args, _preload_content=False, _request_timeout=(5, 120), **kw)
                    )
                    version = (listed.get("metadata") or {}).get("resourceVersion") or ""
                    for obj in listed.get("items") or []:
                        self.put(kind, obj)
                    self._synced[kind].set()
                stream: Iterator[dict[str, Any]] = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
                    fn,
                    *args,
                    resource_version=version,
                    timeout_seconds=30,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                    **kw,
                )
                for event in stream:
                    if self._stopping.is_set():
                        return
                    raw = event.get("raw_object") or event.get("object")
                    if event.get("type") == "ERROR" or not isinstance(raw, Mapping):
                        version = ""
                        break
                    version = (raw.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        self.put(kind, raw, deleted=event.get("type") == "DELETED")
            except Exception as exc:  # expired or dropped: relist
                log.debug("watch %s: %s", kind, exc)
                version = ""
                self._stopping.wait(0.5)


# --- metrics, options, results ---------------------------------------------------------------


class MigrateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.services = Counter(
            "canarywatch_migrate_services_total",
            "services finished, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.actions = Counter(
            "canarywatch_migrate_actions_total",
            "actions applied, by kind",
            ["action"],
            registry=registry,
        )
        self.conflicts = Counter(
            "canarywatch_migrate_conflicts_total",
            "writes refused as stale (409)",
            registry=registry,
        )
        self.wave = Gauge(
            "canarywatch_migrate_wave", "the wave in progress (1-based)", registry=registry
        )
        self.in_flight = Gauge(
            "canarywatch_migrate_in_flight", "services being migrated now", registry=registry
        )
        self.seconds = Histogram(
            "canarywatch_migrate_service_seconds",
            "one service's migration, start to end",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )


@dataclass(frozen=True)
class MigrateOptions:
    template_spec: Mapping[str, Any]
    namespaces: tuple[str, ...] = ()
    selector: str = ""
    scale_down: ScaleDown = ScaleDown.PROGRESSIVELY
    wave_size: int = 20
    concurrency: int = 10
    failure_budget: float = 0.1
    health_timeout_s: float = 600.0
    canary: tuple[str, ...] = ()
    poll_s: float = 2.0  # re-read a waiting service at least this often, changes or not


@dataclass
class ServiceResult:
    key: str
    outcome: str  # migrated | rolled-back | blocked | error
    reason: str = ""
    seconds: float = 0.0


@dataclass
class WaveSummary:
    index: int
    size: int
    migrated: int = 0
    rolled_back: int = 0
    errors: int = 0
    seconds: float = 0.0
    stopped: bool = False


@dataclass
class Report:
    plans: list[ServicePlan]
    waves: list[WaveSummary] = field(default_factory=list)
    results: dict[str, ServiceResult] = field(default_factory=dict)
    stopped: str = ""
    seconds: float = 0.0

    def final(self, deployments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The report, from what the cluster holds at the end (so a resumed run reports the
        outcomes of the runs before it too)."""
        blocked = {p.key: list(p.blockers) for p in self.plans if p.blocked}
        migrated, rolled_back, pending = [], {}, []
        for dep in deployments:
            key, ann = key_of(dep), annotations_of(dep)
            phase = ann.get(ANN_PHASE, "")
            if phase == Phase.MIGRATED:
                migrated.append(key)
            elif phase == Phase.ROLLED_BACK:
                rolled_back[key] = ann.get(ANN_REASON, "")
            elif key not in blocked:
                pending.append(key)
        return {
            "services": len(deployments),
            "migrated": sorted(migrated),
            "rolled_back": dict(sorted(rolled_back.items())),
            "blocked": dict(sorted(blocked.items())),
            "not_done": sorted(pending),
            "stopped": self.stopped,
            "waves": [vars(w) for w in self.waves],
            "seconds": round(self.seconds, 3),
        }


# --- the migrator ----------------------------------------------------------------------------


class Migrator:
    def __init__(
        self,
        api: KubeMigrationApi,
        options: MigrateOptions,
        metrics: MigrateMetrics,
        *,
        console: Console | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.options = options
        self.metrics = metrics
        self.console = console or Console(stderr=True)
        self.clock = clock
        self._stopping = threading.Event()

    # planning
    def _namespaces(self) -> list[str]:
        return list(self.options.namespaces) or [""]

    def plan(self) -> list[ServicePlan]:
        """Every selected Deployment's plan; the namespaces are read concurrently."""
        now = self.clock()
        with ThreadPoolExecutor(max(1, min(8, self.options.concurrency)), "plan") as pool:
            per_namespace = list(
                pool.map(lambda ns: self._plan_namespace(ns, now), self._namespaces())
            )
        return sorted((p for plans in per_namespace for p in plans), key=lambda p: p.key)

    def _plan_namespace(self, namespace: str, now: float) -> list[ServicePlan]:
        deployments = self.api.deployments(namespace, self.options.selector)
        if not deployments:
            return []
        by_ns: dict[str, dict[str, list[Obj]]] = {}
        for kind, lister in (
            ("rollouts", self.api.rollouts),
            ("hpas", self.api.hpas),
            ("pdbs", self.api.pdbs),
            ("services", self.api.services),
        ):
            for obj in lister(namespace):
                by_ns.setdefault(namespace_of(obj), {}).setdefault(kind, []).append(obj)
        plans = []
        for dep in deployments:
            others = by_ns.get(namespace_of(dep), {})
            plans.append(
                plan_service(
                    dep,
                    rollouts=others.get("rollouts", []),
                    hpas=others.get("hpas", []),
                    pdbs=others.get("pdbs", []),
                    services=others.get("services", []),
                    template_spec=self.options.template_spec,
                    scale_down=self.options.scale_down,
                    now=now,
                )
            )
        return plans

    def deployments(self) -> list[Obj]:
        found: list[Obj] = []
        for namespace in self._namespaces():
            found.extend(self.api.deployments(namespace, self.options.selector))
        return found

    def stop(self) -> None:
        self._stopping.set()

    # one service
    def migrate_service(self, plan: ServicePlan, feed: ChangeFeed) -> ServiceResult:
        """Decide from the feed's objects, apply, until done. A conflict (409) means a decision
        was made on a stale object: read the objects afresh into the feed and decide again."""
        started = time.monotonic()
        ns, name = plan.namespace, plan.name
        self.metrics.in_flight.inc()
        try:
            while not self._stopping.is_set():
                seen = feed.version(plan.key)
                try:
                    deployment = feed.get("deployment", ns, name)
                    rollout = feed.get("rollout", ns, name)
                    hpa = feed.get("hpa", ns, plan.hpa) if plan.hpa else None
                    if deployment is None:  # not (yet) in the feed: ask the API server
                        deployment = self.api.deployment(ns, name)
                        feed.put("deployment", deployment)
                    action = next_action(
                        deployment,
                        rollout,
                        hpa,
                        scale_down=plan.scale_down,
                        now=self.clock(),
                        health_timeout_s=self.options.health_timeout_s,
                    )
                    if action.act is Act.DONE:
                        outcome = "migrated" if action.phase == Phase.MIGRATED else "rolled-back"
                        return ServiceResult(
                            plan.key, outcome, action.reason, time.monotonic() - started
                        )
                    if action.act is Act.BLOCKED:
                        return ServiceResult(
                            plan.key, "blocked", action.reason, time.monotonic() - started
                        )
                    if action.act is Act.WAIT:
                        feed.wait(plan.key, seen, self.options.poll_s)
                        continue
                    assert deployment is not None
                    self._apply(plan, action, deployment, rollout, hpa, feed)
                    self.metrics.actions.labels(str(action.act)).inc()
                except KubeError as exc:
                    if exc.status == 409:
                        self.metrics.conflicts.inc()
                    else:
                        log.warning("%s: %s; retrying", plan.key, exc)
                        feed.wait(plan.key, seen, self.options.poll_s)
                    self._refresh(plan, feed)
            return ServiceResult(plan.key, "error", "stopped", time.monotonic() - started)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.seconds.observe(time.monotonic() - started)

    def _refresh(self, plan: ServicePlan, feed: ChangeFeed) -> None:
        """Read the service's objects from the API server into the feed."""
        ns, name = plan.namespace, plan.name
        with contextlib.suppress(KubeError):
            feed.put("deployment", self.api.deployment(ns, name))
            rollout = self.api.rollout(ns, name)
            if rollout is None:
                held = feed.get("rollout", ns, name)
                feed.put("rollout", held, deleted=True)
            else:
                feed.put("rollout", rollout)
            if plan.hpa:
                feed.put("hpa", self.api.hpa(ns, plan.hpa))

    def _apply(
        self,
        plan: ServicePlan,
        action: Action,
        deployment: Obj,
        rollout: Obj | None,
        hpa: Obj | None,
        feed: ChangeFeed,
    ) -> None:
        """Apply `action`; what the API server answers goes into the feed."""
        ns, name = plan.namespace, plan.name
        rv = str((deployment.get("metadata") or {}).get("resourceVersion", ""))
        if action.act is Act.START:
            written = self.api.patch_deployment(
                ns,
                name,
                {
                    "metadata": {
                        "resourceVersion": rv,
                        "annotations": {
                            ANN_REPLICAS: str(action.replicas),
                            ANN_PHASE: str(Phase.MIGRATING),
                        },
                    }
                },
            )
            feed.put("deployment", written)
        elif action.act is Act.CREATE_ROLLOUT:
            # replicas from the annotation written by START; the health gate starts now
            body = build_rollout(
                deployment, self.options.template_spec, plan.scale_down, created_at=self.clock()
            )
            created = self.api.create_rollout(ns, body)
            if created is None:  # it exists (ours from before a crash, or not ours): read it
                raise KubeError(409, "the Rollout exists")
            feed.put("rollout", created)
        elif action.act is Act.MOVE_HPA:
            assert hpa is not None
            api_version = "argoproj.io/v1alpha1" if action.target_kind == "Rollout" else "apps/v1"
            hpa_rv = str((hpa.get("metadata") or {}).get("resourceVersion", ""))
            moved = self.api.patch_hpa(
                ns,
                plan.hpa,
                {
                    "metadata": {"resourceVersion": hpa_rv},
                    "spec": {
                        "scaleTargetRef": {
                            "apiVersion": api_version,
                            "kind": action.target_kind,
                            "name": name,
                        }
                    },
                },
            )
            feed.put("hpa", moved)
        elif action.act is Act.SCALE_DEPLOYMENT:
            # The scale and the phase in one patch: a crash leaves both or neither.
            written = self.api.patch_deployment(
                ns,
                name,
                {
                    "metadata": {"resourceVersion": rv, "annotations": {ANN_PHASE: action.phase}},
                    "spec": {"replicas": action.replicas},
                },
            )
            feed.put("deployment", written)
        elif action.act is Act.SET_PHASE:
            ann = {ANN_PHASE: action.phase}
            if action.phase == Phase.ROLLING_BACK:
                ann[ANN_REASON] = action.reason
                log.info("%s: rolling back: %s", plan.key, action.reason)
            written = self.api.patch_deployment(
                ns, name, {"metadata": {"resourceVersion": rv, "annotations": ann}}
            )
            feed.put("deployment", written)
        elif action.act is Act.NEVER_SCALE_DOWN:
            assert rollout is not None
            ro_rv = str((rollout.get("metadata") or {}).get("resourceVersion", ""))
            patched = self.api.patch_rollout(
                ns,
                name,
                {
                    "metadata": {"resourceVersion": ro_rv},
                    "spec": {"workloadRef": {"scaleDown": "never"}},
                },
            )
            feed.put("rollout", patched)
        elif action.act is Act.DELETE_ROLLOUT:
            assert rollout is not None
            self.api.delete_rollout(ns, name, str((rollout.get("metadata") or {}).get("uid", "")))
            feed.put("rollout", rollout, deleted=True)

    # the waves
    def run(self, plans: list[ServicePlan], feed: ChangeFeed) -> Report:
        began = time.monotonic()
        report = Report(plans)
        order = waves(plans, self.options.wave_size, self.options.canary)
        total = sum(len(w) for w in order)
        columns = (
            TextColumn("[bold]migrate[/] wave {task.fields[wave]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("migrated {task.fields[ok]} rolled back {task.fields[rb]}"),
            TimeElapsedColumn(),
        )
        ok = rb = 0
        with (
            Progress(*columns, console=self.console, transient=False) as progress,
            ThreadPoolExecutor(max(1, self.options.concurrency), "migrate") as pool,
        ):
            task = progress.add_task("migrate", total=total, wave=f"0/{len(order)}", ok=0, rb=0)
            for index, wave in enumerate(order, start=1):
                self.metrics.wave.set(index)
                progress.update(task, wave=f"{index}/{len(order)}")
                summary = WaveSummary(index, len(wave))
                wave_began = time.monotonic()
                futures = [pool.submit(self.migrate_service, plan, feed) for plan in wave]
                for future in futures:
                    result = future.result()
                    report.results[result.key] = result
                    self.metrics.services.labels(result.outcome).inc()
                    if result.outcome == "migrated":
                        summary.migrated += 1
                        ok += 1
                    elif result.outcome == "rolled-back":
                        summary.rolled_back += 1
                        rb += 1
                    else:
                        summary.errors += 1
                    progress.update(task, advance=1, ok=ok, rb=rb)
                summary.seconds = round(time.monotonic() - wave_began, 3)
                failed = summary.rolled_back + summary.errors
                summary.stopped = wave_failed(failed, len(wave), self.options.failure_budget)
                report.waves.append(summary)
                progress.console.print(
                    f"wave {index}/{len(order)}: {summary.size} services, {summary.migrated} "
                    f"migrated, {summary.rolled_back} rolled back, {summary.errors} errors, "
                    f"{summary.seconds:.1f}s"
                )
                if self._stopping.is_set():
                    report.stopped = f"interrupted in wave {index}: run again to resume"
                    progress.console.print(f"[bold red]stopped[/]: {report.stopped}")
                    break
                if summary.stopped:
                    report.stopped = (
                        f"wave {index}: {failed} of {len(wave)} services failed their health gate "
                        f"(budget {self.options.failure_budget:g})"
                    )
                    progress.console.print(f"[bold red]stopped[/]: {report.stopped}")
                    break
        report.seconds = time.monotonic() - began
        return report


# --- presentation ------------------------------------------------------------------------------


def plan_table(plans: Sequence[ServicePlan], order: Sequence[Sequence[ServicePlan]]) -> Table:
    wave_of = {p.key: i for i, wave in enumerate(order, start=1) for p in wave}
    table = Table(title="canarywatch migrate: plan (dry run, nothing changed)")
    for column in (
        "wave",
        "namespace",
        "deployment",
        "replicas",
        "floor",
        "hpa",
        "pdb",
        "scale-down",
        "status",
    ):
        table.add_column(column)
    for p in sorted(plans, key=lambda p: (wave_of.get(p.key, 10**9), p.key)):
        if p.blocked:
            status = "[red]blocked[/]: " + "; ".join(p.blockers)
        elif p.done or p.in_progress:
            status = p.phase
        else:
            status = "ready"
        table.add_row(
            str(wave_of.get(p.key, "-")),
            p.namespace,
            p.name,
            str(p.replicas),
            str(p.floor),
            p.hpa or "-",
            ",".join(p.pdbs) or "-",
            str(p.scale_down),
            status,
        )
    return table


def plan_json(
    plans: Sequence[ServicePlan], order: Sequence[Sequence[ServicePlan]]
) -> dict[str, Any]:
    wave_of = {p.key: i for i, wave in enumerate(order, start=1) for p in wave}
    return {
        "services": len(plans),
        "ready": sum(1 for p in plans if not p.blocked and not p.done),
        "blocked": sum(1 for p in plans if p.blocked),
        "waves": [[p.key for p in wave] for wave in order],
        "plans": [{**p.to_json(), "wave": wave_of.get(p.key)} for p in plans],
    }


def report_table(final: Mapping[str, Any]) -> Table:
    table = Table(title="canarywatch migrate: report")
    table.add_column("outcome")
    table.add_column("services")
    table.add_column("details")
    rolled = final["rolled_back"]
    blocked = final["blocked"]
    table.add_row("migrated", str(len(final["migrated"])), "")
    table.add_row(
        "rolled back",
        str(len(rolled)),
        "; ".join(f"{k}: {v}" for k, v in list(rolled.items())[:10]),
    )
    table.add_row(
        "blocked",
        str(len(blocked)),
        "; ".join(f"{k}: {', '.join(v)}" for k, v in list(blocked.items())[:10]),
    )
    table.add_row("not done", str(len(final["not_done"])), final["stopped"])
    return table


def load_template(path: str) -> dict[str, Any]:
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping")
    return validate_template(doc)


def run_migrate(
    *,
    template: str,
    namespaces: Sequence[str],
    selector: str,
    scale_down: str,
    wave_size: int,
    concurrency: int,
    failure_budget: float,
    health_timeout_s: float,
    canary: Sequence[str],
    dry_run: bool,
    output: str,
    report_path: str | None,
    metrics_port: int,
    kubeconfig: str | None,
) -> int:
    """The `canarywatch migrate` command. Exit 0 when every selected service that was not
    blocked ended migrated or rolled back and no wave stopped the run, 1 otherwise, 2 on a bad
    template."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        template_spec = load_template(template)
    except (OSError, ValueError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 2
    options = MigrateOptions(
        template_spec=template_spec,
        namespaces=tuple(namespaces),
        selector=selector,
        scale_down=ScaleDown(scale_down),
        wave_size=wave_size,
        concurrency=concurrency,
        failure_budget=failure_budget,
        health_timeout_s=health_timeout_s,
        canary=tuple(canary),
    )
    registry = CollectorRegistry()
    metrics = MigrateMetrics(registry)
    if metrics_port:
        start_http_server(metrics_port, registry=registry)
    api_client = migrate_api_client(kubeconfig, concurrency + 8)
    console = Console(stderr=True)
    try:
        migrator = Migrator(KubeMigrationApi(api_client), options, metrics, console=console)
        plans = migrator.plan()
        order = waves(plans, wave_size, options.canary)
        if dry_run:
            if output == "json":
                print(json.dumps(plan_json(plans, order), indent=2))
            else:
                Console(width=200).print(plan_table(plans, order))
            return 0
        feed = ChangeFeed(api_client, selector).start()
        # Ctrl-C / SIGTERM: every service stops at its next step; what was done stays recorded
        # in the cluster, and the next run resumes from there.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: migrator.stop())
        try:
            report = migrator.run(plans, feed)
        finally:
            feed.stop()
        final = report.final(migrator.deployments())
        console.print(report_table(final))
        if report_path:
            Path(report_path).write_text(json.dumps(final, indent=2))
        print(
            f"migrate: services={final['services']} migrated={len(final['migrated'])} "
            f"rolled_back={len(final['rolled_back'])} blocked={len(final['blocked'])} "
            f"not_done={len(final['not_done'])} seconds={final['seconds']}"
        )
        return 1 if final["stopped"] or final["not_done"] else 0
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
