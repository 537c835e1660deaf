"""The Kubernetes side of `canarywatch migrate`: the API calls and the change feed.

- `KubeMigrationApi`: the Kubernetes calls (synchronous kubernetes client, raw JSON dicts);
- `ChangeFeed`: watches of Deployments, Rollouts and HPAs in threads; a service waiting for the
  controller is woken by a change to one of its objects instead of polling the API server.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

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
