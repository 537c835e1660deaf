"""A fleet of Deployments to migrate, on an API server of its own, and what happened to it.

Used by tests/integration/test_migrate.py and bench/migrate.py (``make bench-migrate``):

- ``MigrationCluster``: a fresh LocalKubeAPI (so that the Argo Rollouts controller may run
  cluster-wide without touching other tests' Rollouts) with the five CRDs and deploy/base RBAC,
  the real controller in every namespace and the stand-in kubelet marking ReplicaSets *and*
  Deployments (there is no kube-controller-manager);
- ``fleet`` / ``create_fleet``: Deployments across namespaces, some with an HPA, some with a
  PDB, each with a Service, a few whose pods never become ready (``NEVER_READY_LABEL``);
- ``Recorder``: watches Deployments, ReplicaSets and Rollouts in every namespace from one
  resourceVersion on, and replays every change in etcd's order (resourceVersions are etcd
  revisions, one sequence for all kinds) to check, at each change, that every service's
  available replicas (its Deployment's plus its Rollout's ReplicaSets', each counted as
  min(spec, available)) stay at or above its floor: the Deployment's desired count minus its
  PDB's allowance.
- ``run_migrator`` / ``MigratorProcess``: `canarywatch migrate` as a child process, with the
  migrator ServiceAccount's token, that a test can `kill -9`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from streams.migration import ANN_PHASE, ANN_REPLICAS, availability_floor
from tests.support.argo import (
    NEVER_READY_LABEL,
    ReplicaSetKubelet,
    RolloutsController,
    install_argo_crds,
)
from tests.support.localkube import REPO_ROOT, LocalKubeAPI, wait_until
from tests.support.rbac import apply_rbac

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
# The canary strategy every migrated service gets. A Rollout's first revision skips the steps
# (there is no stable yet); progressDeadlineSeconds makes a never-ready Rollout Degraded soon.
TEMPLATE: dict[str, Any] = {
    "progressDeadlineSeconds": 15,
    "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "30s"}}]}},
}
FLEET_LABEL = "migrate-test/fleet"


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    replicas: int
    hpa: bool
    pdb: dict[str, Any] | None  # the PDB's spec minus its selector
    never_ready: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def floor(self) -> int:
        pdb = {"spec": self.pdb} if self.pdb is not None else None
        return availability_floor(self.replicas, pdb)


def fleet(
    namespaces: int = 20, per_namespace: int = 10, never_ready: int = 6, prefix: str = "mig"
) -> list[Service]:
    """`namespaces` x `per_namespace` services: replicas 1..4, an HPA on every third, a PDB on
    every other (maxUnavailable 1 or minAvailable 50 %), `never_ready` spread evenly."""
    total = namespaces * per_namespace
    failing = (
        {round(i * total / never_ready) + 7 for i in range(never_ready)} if never_ready else set()
    )
    services = []
    for i in range(total):
        pdb: dict[str, Any] | None = None
        if i % 4 == 1:
            pdb = {"maxUnavailable": 1}
        elif i % 4 == 3:
            pdb = {"minAvailable": "50%"}
        services.append(
            Service(
                namespace=f"{prefix}-{i // per_namespace:02d}",
                name=f"svc-{i % per_namespace:02d}",
                replicas=1 + i % 4,
                hpa=i % 3 == 0,
                pdb=pdb,
                never_ready=(i % total) in failing,
            )
        )
    return services


def manifests(svc: Service) -> list[dict[str, Any]]:
    labels = {"app": svc.name, FLEET_LABEL: "yes"}
    pod_labels = {"app": svc.name, **({NEVER_READY_LABEL: "true"} if svc.never_ready else {})}
    meta = {"name": svc.name, "namespace": svc.namespace}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": svc.replicas,
                "selector": {"matchLabels": {"app": svc.name}},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": {"app": svc.name}, "ports": [{"port": 80}]},
        },
    ]
    if svc.hpa:
        objects.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": meta,
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": svc.name,
                    },
                    "minReplicas": svc.replicas,
                    "maxReplicas": 10,
                },
            }
        )
    if svc.pdb is not None:
        objects.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": meta,
                "spec": {"selector": {"matchLabels": {"app": svc.name}}, **svc.pdb},
            }
        )
    return objects


class MigrationCluster:
    """A LocalKubeAPI of its own, the CRDs and RBAC, the cluster-wide controller and kubelet."""

    def __init__(self, workdir: Path, *, ready_delay_s: float = 0.0) -> None:
        self.workdir = workdir
        self.ready_delay_s = ready_delay_s
        self.kube = LocalKubeAPI(workdir=workdir / "kube")
        self.controller: RolloutsController | None = None
        self.kubelet: ReplicaSetKubelet | None = None
        self._admin: k8s.ApiClient | None = None

    @property
    def admin(self) -> k8s.ApiClient:
        assert self._admin is not None
        return self._admin

    def start(self) -> MigrationCluster:
        self.kube.start()
        try:
            install_argo_crds(self.kube)
            apply_rbac(self.kube)
            cfg = self.kube.configuration("admin")
            cfg.connection_pool_maxsize = 16
            self._admin = k8s.ApiClient(cfg)
            self.kubelet = ReplicaSetKubelet(
                self.admin, None, deployments=True, ready_delay_s=self.ready_delay_s
            ).start()
            self.controller = RolloutsController(
                self.kube,
                None,
                self.workdir / "argo",
                ("--qps=400", "--burst=800", "--rollout-threads=20"),
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        if self.kubelet is not None:
            self.kubelet.stop()
        if self._admin is not None:
            self._admin.close()  # type: ignore[no-untyped-call]
        self.kube.stop()

    def __enter__(self) -> MigrationCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_fleet(self, services: Sequence[Service], timeout: float = 120.0) -> None:
        """Namespaces, Deployments (marked available by the kubelet), Services, HPAs, PDBs."""
        for ns in sorted({s.namespace for s in services}):
            self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        objects = [obj for svc in services for obj in manifests(svc)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self.kube.apply, objects))
        apps = k8s.AppsV1Api(self.admin)

        wanted = {s.key for s in services}

        def all_available() -> bool:
            listed = apps.list_deployment_for_all_namespaces(label_selector=f"{FLEET_LABEL}=yes")
            mine = [
                d
                for d in listed.items
                if d.metadata and f"{d.metadata.namespace}/{d.metadata.name}" in wanted
            ]
            return len(mine) == len(wanted) and all(
                d.spec is not None and (d.status and d.status.available_replicas) == d.spec.replicas
                for d in mine
            )

        wait_until(all_available, timeout=timeout, what="every Deployment of the fleet available")

    def write_kubeconfig(self, identity: str = "migrator") -> Path:
        return self.kube.write_kubeconfig(self.workdir / f"kubeconfig-{identity}", identity)

    def deployments(self) -> dict[str, dict[str, Any]]:
        resp = k8s.AppsV1Api(self.admin).list_deployment_for_all_namespaces(
            label_selector=f"{FLEET_LABEL}=yes", _preload_content=False
        )
        items = json.loads(cast(urllib3.BaseHTTPResponse, resp).data)["items"]
        return {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in items}

    def rollouts(self) -> dict[str, dict[str, Any]]:
        listed = cast(
            dict[str, Any],
            k8s.CustomObjectsApi(self.admin).list_cluster_custom_object(GROUP, VERSION, PLURAL),
        )
        return {f"{r['metadata']['namespace']}/{r['metadata']['name']}": r for r in listed["items"]}

    def hpas(self) -> dict[str, dict[str, Any]]:
        resp = k8s.AutoscalingV2Api(self.admin).list_horizontal_pod_autoscaler_for_all_namespaces(
            _preload_content=False
        )
        items = json.loads(cast(urllib3.BaseHTTPResponse, resp).data)["items"]
        return {f"{h['metadata']['namespace']}/{h['metadata']['name']}": h for h in items}


# --- the availability invariant, at every watched change --------------------------------------


@dataclass
class Findings:
    changes: int = 0
    unavailable_moments: int = 0
    early_scale_downs: int = 0  # a Deployment scaled below what its Rollout could take over
    rollouts_created: dict[str, int] = field(default_factory=dict)
    scale_downs: dict[str, int] = field(default_factory=dict)  # spec.replicas decreases
    examples: list[str] = field(default_factory=list)

    @property
    def duplicate_rollouts(self) -> int:
        return sum(n - 1 for n in self.rollouts_created.values() if n > 1)


class Recorder:
    """Watches Deployments, ReplicaSets and Rollouts cluster-wide from one resourceVersion and
    keeps every change; `findings` replays them in etcd's order."""

    def __init__(self, admin: k8s.ApiClient) -> None:
        self._apps = k8s.AppsV1Api(admin)
        self._objects = k8s.CustomObjectsApi(admin)
        self._lock = threading.Lock()
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []
        self._initial: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Recorder:
        sources: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
            ("Deployment", self._apps.list_deployment_for_all_namespaces, ()),
            ("ReplicaSet", self._apps.list_replica_set_for_all_namespaces, ()),
            ("Rollout", self._objects.list_cluster_custom_object, (GROUP, VERSION, PLURAL)),
        ]
        for kind, fn, args in sources:
            resp = fn(*args, _preload_content=False)
            listed = json.loads(cast(urllib3.BaseHTTPResponse, resp).data)
            for obj in listed.get("items") or []:
                self._initial.append((kind, obj))
            version = listed["metadata"]["resourceVersion"]
            thread = threading.Thread(
                target=self._follow, args=(kind, fn, args, version), daemon=True, name=f"rec-{kind}"
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(15)

    def _follow(
        self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...], version: str
    ) -> None:
        while not self._stopping.is_set():
            try:
                stream: Iterator[dict[str, Any]] = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
                    fn,
                    *args,
                    resource_version=version,
                    timeout_seconds=2,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    raw = event.get("raw_object") or {}
                    if event.get("type") == "ERROR":
                        self.errors.append(f"{kind}: {raw}")  # a gap: the replay is not complete
                        return
                    version = raw.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        with self._lock:
                            self._events.append((int(version), kind, event["type"], raw))
                    if self._stopping.is_set():
                        return
            except k8s.ApiException as exc:
                self.errors.append(f"{kind}: {exc.status} {exc.reason}")
                if exc.status == 410:
                    return
            except Exception as exc:  # a dropped connection: resume from `version`
                if self._stopping.is_set():
                    return
                self.errors.append(f"{kind}: {type(exc).__name__}")

    def newest(self) -> int:
        with self._lock:
            return max((e[0] for e in self._events), default=0)

    def findings(self, services: Sequence[Service]) -> Findings:
        floors = {s.key: s.floor for s in services}
        wanted = {s.key: s.replicas for s in services}
        deployments: dict[str, tuple[int, int]] = {}  # key -> (spec, available)
        replica_sets: dict[str, tuple[str, int]] = {}  # ns/rs -> (service key, min(spec, avail))
        out = Findings()

        def apply(kind: str, kind_event: str, obj: dict[str, Any]) -> str:
            meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            if kind == "Deployment":
                want = 1 if spec.get("replicas") is None else int(spec["replicas"])
                if kind_event == "DELETED":
                    deployments.pop(key, None)
                    return key
                before = deployments.get(key, (want, 0))[0]
                deployments[key] = (want, min(want, int(status.get("availableReplicas") or 0)))
                if want < before:
                    out.scale_downs[key] = out.scale_downs.get(key, 0) + 1
                if key in wanted and want < before and want + rollout_available(key) < wanted[key]:
                    out.early_scale_downs += 1
                    out.examples.append(f"early scale-down {key}: {before}->{want}")
                return key
            if kind == "ReplicaSet":
                owners = [
                    o for o in meta.get("ownerReferences") or [] if o.get("kind") == "Rollout"
                ]
                if not owners:
                    return ""
                service = f"{meta.get('namespace')}/{owners[0]['name']}"
                if kind_event == "DELETED":
                    replica_sets.pop(key, None)
                else:
                    want = int(spec.get("replicas") or 0)
                    got = int(status.get("availableReplicas") or 0)
                    replica_sets[key] = (service, min(want, got))
                return service
            if kind == "Rollout" and kind_event == "ADDED":
                out.rollouts_created[key] = out.rollouts_created.get(key, 0) + 1
            return ""

        def rollout_available(service: str) -> int:
            return sum(n for s, n in replica_sets.values() if s == service)

        for kind, obj in self._initial:
            apply(kind, "ADDED", obj)
        with self._lock:
            events = sorted(self._events, key=lambda e: e[0])
        seen: set[tuple[int, str]] = set()
        for version, kind, kind_event, obj in events:
            if (version, kind) in seen:
                continue
            seen.add((version, kind))
            service = apply(kind, kind_event, obj)
            out.changes += 1
            if service not in floors:
                continue
            total = deployments.get(service, (0, 0))[1] + rollout_available(service)
            if total < floors[service]:
                out.unavailable_moments += 1
                if len(out.examples) < 20:
                    out.examples.append(
                        f"rv {version} {kind} {service}: {total} available"
                        f" < floor {floors[service]}"
                    )
        return out


# --- the migrator as a child process ---------------------------------------------------------


class MigratorProcess:
    """`canarywatch migrate` in a child process (stdout and stderr to `log`)."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.argv = [sys.executable, "-m", "agents.cli", "migrate", *argv]
        self.log = log
        self._out: IO[bytes] | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> MigratorProcess:
        self._out = self.log.open("ab")
        env = {**os.environ, "COLUMNS": "160"}
        self.popen = subprocess.Popen(
            self.argv, stdout=self._out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
        )
        return self

    def kill9(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)
        self._close()

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        finally:
            self._close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(30)
        self._close()

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def migrator_argv(
    kubeconfig: Path, template: Path, report: Path, services: Sequence[Service], **options: Any
) -> list[str]:
    argv = [
        f"--kubeconfig={kubeconfig}",
        f"--template={template}",
        f"--selector={FLEET_LABEL}=yes",
        f"--report={report}",
    ]
    argv += [f"--namespace={ns}" for ns in sorted({s.namespace for s in services})]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return argv


def write_template(path: Path) -> Path:
    path.write_text(yaml.safe_dump(TEMPLATE, sort_keys=False))
    return path


def phases(deployments: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        k: (d["metadata"].get("annotations") or {}).get(ANN_PHASE, "")
        for k, d in deployments.items()
    }


def started(deployments: dict[str, dict[str, Any]]) -> int:
    return sum(
        1 for d in deployments.values() if ANN_REPLICAS in (d["metadata"].get("annotations") or {})
    )


def by_outcome(deployments: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for key, phase in phases(deployments).items():
        found[phase or "pending"].append(key)
    return dict(found)


# --- the whole scenario: migrate, kill -9 mid-wave, resume ---------------------------------------


@dataclass
class ScenarioResult:
    services: list[Service]
    exit_codes: list[int]
    killed_at_started: int  # Deployments the first migrator had started when it was killed
    killed_in_progress: int  # of them, in the middle of their migration
    seconds: float
    findings: Findings
    deployments: dict[str, dict[str, Any]]
    rollouts: dict[str, dict[str, Any]]
    hpas: dict[str, dict[str, Any]]
    report: dict[str, Any]
    recorder_errors: list[str]
    log: Path

    def outcome(self, phase: str) -> list[str]:
        """This scenario's services (not other runs' in the same cluster) in `phase`."""
        keys = {s.key for s in self.services}
        return sorted(k for k in by_outcome(self.deployments).get(phase, []) if k in keys)

    @property
    def services_per_min(self) -> float:
        return len(self.services) / self.seconds * 60.0 if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"migrate: services={len(self.services)} migrated={len(self.outcome('migrated'))} "
            f"rolled_back={len(self.outcome('rolled-back'))} "
            f"unavailable_moments={self.findings.unavailable_moments} "
            f"resumed_duplicates={self.findings.duplicate_rollouts} "
            f"services_per_min={self.services_per_min:.0f}"
        )


def run_scenario(
    cluster: MigrationCluster,
    services: Sequence[Service],
    workdir: Path,
    *,
    kill_at: int | None,
    timeout: float = 600.0,
    **options: Any,
) -> ScenarioResult:
    """Migrate `services` with `canarywatch migrate` (as the migrator ServiceAccount); when
    `kill_at` is given, `kill -9` the migrator once that many Deployments were started and
    some are mid-migration, and start it again. Returns what the cluster and the recorder saw."""
    import time

    cluster.create_fleet(services)
    kubeconfig = cluster.write_kubeconfig("migrator")
    template = write_template(workdir / "rollout-template.yaml")
    report = workdir / "report.json"
    log = workdir / "migrate.log"
    argv = migrator_argv(kubeconfig, template, report, services, **options)
    recorder = Recorder(cluster.admin).start()
    codes: list[int] = []
    at_kill = in_progress = 0
    began = time.monotonic()
    try:
        first = MigratorProcess(argv, log).start()
        try:
            if kill_at is not None:

                def mid_wave() -> tuple[int, int] | None:
                    assert first.popen is not None
                    if first.popen.poll() is not None:
                        tail = log.read_text(errors="replace")[-3000:]
                        raise AssertionError(f"the migrator ended before the kill:\n{tail}")
                    deps = cluster.deployments()
                    moving = sum(
                        1 for p in phases(deps).values() if p in ("migrating", "rolling-back")
                    )
                    n = started(deps)
                    return (n, moving) if n >= kill_at and moving >= 3 else None

                at_kill, in_progress = wait_until(mid_wave, timeout=timeout, what="mid-wave")
                first.kill9()
                codes.append(-9)
                second = MigratorProcess(argv, log).start()
                try:
                    codes.append(second.wait(timeout))
                finally:
                    second.stop()
            else:
                codes.append(first.wait(timeout))
        finally:
            first.stop()
        seconds = time.monotonic() - began
        # Let the recorder catch up with the last changes before replaying them.
        wait_until(lambda: recorder_caught_up(cluster, recorder), timeout=30, what="recorder")
    finally:
        recorder.stop()
    return ScenarioResult(
        services=list(services),
        exit_codes=codes,
        killed_at_started=at_kill,
        killed_in_progress=in_progress,
        seconds=seconds,
        findings=recorder.findings(services),
        deployments=cluster.deployments(),
        rollouts=cluster.rollouts(),
        hpas=cluster.hpas(),
        report=json.loads(report.read_text()) if report.exists() else {},
        recorder_errors=list(recorder.errors),
        log=log,
    )


def recorder_caught_up(cluster: MigrationCluster, recorder: Recorder) -> bool:
    """True once the recorder has seen a change at least as new as the latest Deployment's."""
    latest = max(int(d["metadata"]["resourceVersion"]) for d in cluster.deployments().values())
    return recorder.newest() >= latest
