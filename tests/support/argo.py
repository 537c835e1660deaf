"""The real Argo Rollouts controller, out of cluster, against a LocalKubeAPI.

The controller and its five CRDs come from ``scripts/argo/build.sh`` (built from
github.com/argoproj/argo-rollouts into a cache outside the clone); set
``CANARYWATCH_ROLLOUTS_CONTROLLER`` and ``CANARYWATCH_ROLLOUTS_CRDS`` to use others.

There is no kubelet and no kube-controller-manager: ``ReplicaSetKubelet`` watches ReplicaSets
and writes the status their spec asks for (replicas, ready, available), which is all the
controller needs to move between canary steps. No Pod ever exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from agents.processes import free_port
from tests.support.localkube import REPO_ROOT, LocalKubeAPI, LocalKubeError, _Proc, wait_until

BUILD_SCRIPT = REPO_ROOT / "scripts" / "argo" / "build.sh"
MERGE_PATCH = "application/merge-patch+json"

_ensured: tuple[Path | None, Path] | None = None


def ensure_argo(*, controller: bool = True) -> tuple[Path | None, Path]:
    """(rollouts-controller, CRD directory), built/copied by build.sh when missing.

    With ``controller=False`` only the CRDs are ensured (the binary is None unless already
    known). ``CANARYWATCH_ROLLOUTS_CONTROLLER`` / ``CANARYWATCH_ROLLOUTS_CRDS`` override the
    paths; the result is remembered for the rest of the process."""
    global _ensured
    binary = os.environ.get("CANARYWATCH_ROLLOUTS_CONTROLLER")
    crds = os.environ.get("CANARYWATCH_ROLLOUTS_CRDS")
    if crds and (binary or not controller):
        return (Path(binary) if binary else None), Path(crds)
    if _ensured is not None and (_ensured[0] is not None or not controller):
        return _ensured
    argv = ["bash", str(BUILD_SCRIPT), *([] if controller else ["--crds-only"])]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    if proc.returncode != 0:
        raise LocalKubeError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    built = binary or found.get("ROLLOUTS_CONTROLLER")
    _ensured = (Path(built) if built else None), Path(crds or found["ROLLOUTS_CRDS"])
    return _ensured


def install_argo_crds(kube: LocalKubeAPI) -> list[str]:
    """Apply all five Argo Rollouts CRDs of the pinned module and wait until each is Established."""
    _, crd_dir = ensure_argo(controller=False)
    paths = sorted(crd_dir.glob("*-crd.yaml"))
    if len(paths) != 5:
        raise LocalKubeError(f"expected five CRDs in {crd_dir}, found {[p.name for p in paths]}")
    return [kube.install_crd(path)["metadata"]["name"] for path in paths]


def rollout_crd_path() -> Path:
    return ensure_argo(controller=False)[1] / "rollout-crd.yaml"


NEVER_READY_LABEL = "canarywatch.test/never-ready"  # on a pod template: its pods never get ready


class ReplicaSetKubelet:
    """Marks every ReplicaSet (and, with ``deployments=True``, every Deployment) of `namespace`
    (None: of all namespaces) as running what its spec asks for.

    A watch loop per kind in a thread (list, then watch from the list's resourceVersion; relist
    on 410): each ReplicaSet whose status differs from spec.replicas gets replicas =
    readyReplicas = availableReplicas = fullyLabeledReplicas = spec.replicas and
    observedGeneration, through the status subresource. A ReplicaSet whose pod template carries
    the label ``NEVER_READY_LABEL: "true"`` gets its replicas but none ready or available (a
    service that never becomes healthy). With ``ready_delay_s`` > 0 a ReplicaSet's new pods
    become ready that long after they were asked for (never sooner).

    There is no Deployment controller either: a Deployment creates no ReplicaSet, and its
    status (replicas, updated, ready, available = spec.replicas, observedGeneration, the
    Available condition) is written from its spec, so that availability follows whatever scales
    it (the Argo Rollouts controller's workloadRef scale-down, a migrator)."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str | None,
        *,
        deployments: bool = False,
        ready_delay_s: float = 0.0,
    ) -> None:
        self._apps = k8s.AppsV1Api(api)
        self.namespace = namespace
        self.ready_delay_s = ready_delay_s
        self.marked = 0
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], threading.Timer] = {}
        kinds: list[tuple[str, Any, Any, Any]] = [
            (
                "replicasets",
                self._apps.list_replica_set_for_all_namespaces,
                self._apps.list_namespaced_replica_set,
                self._mark,
            )
        ]
        if deployments:
            kinds.append(
                (
                    "deployments",
                    self._apps.list_deployment_for_all_namespaces,
                    self._apps.list_namespaced_deployment,
                    self._mark_deployment,
                )
            )
        label = namespace or "all"
        self._threads = [
            threading.Thread(
                target=self._run, args=(all_ns, one_ns, mark), name=f"kubelet-{kind}-{label}",
                daemon=True,
            )
            for kind, all_ns, one_ns, mark in kinds
        ]  # fmt: skip

    def start(self) -> ReplicaSetKubelet:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for timer in self._pending.values():
                timer.cancel()
        for thread in self._threads:
            thread.join(15)

    def __enter__(self) -> ReplicaSetKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _list(self, all_ns: Any, one_ns: Any, **kwargs: Any) -> Any:
        if self.namespace is None:
            return all_ns(**kwargs)
        return one_ns(self.namespace, **kwargs)

    def _run(self, all_ns: Any, one_ns: Any, mark: Any) -> None:
        # `at[0]`: the resourceVersion of the last event handled. It must survive an exception
        # in the middle of a watch: resuming from an older one would replay old objects and
        # write their stale statuses back.
        at = [""]
        while not self._stopping.is_set():
            try:
                if not at[0]:
                    listed = self._list(all_ns, one_ns)
                    for obj in listed.items:
                        mark(obj)
                    at[0] = (listed.metadata and listed.metadata.resource_version) or ""
                self._follow(all_ns, one_ns, mark, at)
            except k8s.ApiException as exc:
                if exc.status == 410:
                    at[0] = ""
                    continue
                self.errors.append(str(exc))
                self._stopping.wait(0.2)
            except Exception as exc:  # connection dropped: resume from `at[0]`
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stopping.wait(0.2)

    def _follow(self, all_ns: Any, one_ns: Any, mark: Any, at: list[str]) -> None:
        # Short server-side timeouts: stop() waits for the open watch to end.
        # kubernetes.watch is unannotated; stream() yields {"type", "object", "raw_object"}.
        namespaced = () if self.namespace is None else (self.namespace,)
        events: Iterator[dict[str, Any]] = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
            all_ns if self.namespace is None else one_ns,
            *namespaced,
            resource_version=at[0],
            timeout_seconds=3,
            allow_watch_bookmarks=True,
        )
        for event in events:
            if self._stopping.is_set():
                break
            if event["type"] == "ERROR":
                at[0] = ""  # expired: relist
                return
            raw = event.get("raw_object") or {}
            version = (raw.get("metadata") or {}).get("resourceVersion")
            if event["type"] in ("ADDED", "MODIFIED"):
                mark(event["object"])
            if version:  # a BOOKMARK carries only this (its object is a plain dict)
                at[0] = version

    def _mark(self, rs: k8s.V1ReplicaSet) -> None:
        if rs.spec is None or rs.metadata is None or rs.metadata.name is None:
            return
        want = int(rs.spec.replicas or 0)
        labels = (
            rs.spec.template and rs.spec.template.metadata and rs.spec.template.metadata.labels
        ) or {}
        status = rs.status or k8s.V1ReplicaSetStatus(replicas=0)
        generation = rs.metadata.generation
        now_ready = status.ready_replicas or 0
        ready = 0 if labels.get(NEVER_READY_LABEL) == "true" else want
        key = (rs.metadata.namespace or "", rs.metadata.name)
        if self.ready_delay_s > 0 and ready > now_ready:
            ready = now_ready  # scale-up: the new pods get ready after the delay
            self._later(key, rs)
        now = (
            status.replicas,
            now_ready,
            status.available_replicas or 0,
            status.fully_labeled_replicas or 0,
            status.observed_generation,
        )
        if now == (want, ready, ready, want, generation):
            return
        body = {
            "status": {
                "replicas": want,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "fullyLabeledReplicas": want,
                "observedGeneration": generation,
            }
        }
        self._patch(self._apps.patch_namespaced_replica_set_status, key, body)

    def _later(self, key: tuple[str, str], rs: k8s.V1ReplicaSet) -> None:
        def ready_now() -> None:
            with self._lock:
                self._pending.pop(key, None)
            if self._stopping.is_set():
                return
            try:
                fresh = self._apps.read_namespaced_replica_set(key[1], key[0])
                want = int((fresh.spec and fresh.spec.replicas) or 0)
                labels = (
                    fresh.spec
                    and fresh.spec.template
                    and fresh.spec.template.metadata
                    and fresh.spec.template.metadata.labels
                ) or {}
                ready = 0 if labels.get(NEVER_READY_LABEL) == "true" else want
                body = {"status": {"readyReplicas": ready, "availableReplicas": ready}}
                self._patch(self._apps.patch_namespaced_replica_set_status, key, body)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

        with self._lock:
            if key in self._pending:
                return
            timer = threading.Timer(self.ready_delay_s, ready_now)
            timer.daemon = True
            self._pending[key] = timer
            timer.start()

    def _mark_deployment(self, deployment: k8s.V1Deployment) -> None:
        meta, spec = deployment.metadata, deployment.spec
        if spec is None or meta is None or meta.name is None:
            return
        want = 1 if spec.replicas is None else int(spec.replicas)
        status = deployment.status or k8s.V1DeploymentStatus()
        now = (
            status.replicas or 0,
            status.updated_replicas or 0,
            status.ready_replicas or 0,
            status.available_replicas or 0,
            status.observed_generation,
        )
        if now == (want, want, want, want, meta.generation):
            return
        body = {
            "status": {
                "replicas": want,
                "updatedReplicas": want,
                "readyReplicas": want,
                "availableReplicas": want,
                "unavailableReplicas": None,
                "observedGeneration": meta.generation,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True",
                        "reason": "MinimumReplicasAvailable",
                        "message": "marked by the test kubelet",
                    }
                ],
            }
        }
        key = (meta.namespace or "", meta.name)
        self._patch(self._apps.patch_namespaced_deployment_status, key, body)

    def _patch(self, call: Any, key: tuple[str, str], body: dict[str, Any]) -> None:
        try:
            call(key[1], key[0], body, _content_type=MERGE_PATCH)
            self.marked += 1
        except k8s.ApiException as exc:
            if exc.status not in (404, 409):  # gone, or changed: the watch brings it again
                raise


class RolloutsController:
    """`rollouts-controller` out of cluster, in namespaced mode: it reconciles only the Rollouts
    of `namespace` (the namespace of its kubeconfig's context), so the other tests' hand-made
    Rollout statuses are left alone. With `namespace=None` it reconciles every namespace (give
    it an API server of its own). `extra_args` go to the controller (e.g. `--qps=200`)."""

    def __init__(
        self,
        kube: LocalKubeAPI,
        namespace: str | None,
        workdir: Path,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.workdir = workdir
        self.extra_args = extra_args
        self.metrics_port = 0
        self.healthz_port = 0
        self._proc: _Proc | None = None

    def start(self, timeout: float = 120.0) -> RolloutsController:
        binary, _ = ensure_argo()
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.kube.kubeconfig("admin")
        if self.namespace is not None:
            config["contexts"][0]["context"]["namespace"] = self.namespace
        kubeconfig = self.workdir / "kubeconfig-controller"
        kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        kubeconfig.chmod(0o600)
        self.metrics_port, self.healthz_port = free_port(), free_port()
        self._proc = _Proc(
            "rollouts-controller",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                *(["--namespaced"] if self.namespace is not None else []),
                "--leader-elect=false",
                f"--metricsPort={self.metrics_port}",
                f"--healthzPort={self.healthz_port}",
                "--loglevel=info",
                *self.extra_args,
            ],
            self.workdir / "rollouts-controller.log",
            10.0,
        )
        self._proc.start()
        wait_until(self._healthy, timeout=timeout, what="rollouts-controller /healthz")
        return self

    def _healthy(self) -> bool | None:
        assert self._proc is not None
        self._proc.check_alive()
        try:
            url = f"http://127.0.0.1:{self.healthz_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as reply:
                return True if reply.status == 200 else None
        except OSError:
            return None

    def check_alive(self) -> None:
        assert self._proc is not None
        self._proc.check_alive()

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.tail(lines) if self._proc else "<not started>"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def __enter__(self) -> RolloutsController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dump(obj: Any) -> str:
    """Compact JSON of an object for assertion messages."""
    return json.dumps(obj, default=str)[:4000]
