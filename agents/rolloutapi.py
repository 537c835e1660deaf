"""The actuator's Kubernetes side: what it needs from the API server (`RolloutApi`) and the real
one on the kubernetes client (`KubeRolloutApi`), its failures as `KubeError`.

Every call is synchronous (the kubernetes client); the actuator runs them on its own threads.
An `ApiException` or a transport error becomes a `KubeError` with the HTTP status (0: nothing
answered) and the Retry-After the server asked for, which `streams.actuation.RetryPolicy` reads.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast

import urllib3
from kubernetes import client as k8s

from streams.actuation import UNREACHABLE
from streams.rollouts import GROUP, KIND, PLURAL, REVISION_ANNOTATION, VERSION, Rollout

log = logging.getLogger("canarywatch.actuator")

MERGE_PATCH = "application/merge-patch+json"
ABORT_PATCH: Mapping[str, Any] = {"status": {"abort": True}}
PAUSE_PATCH: Mapping[str, Any] = {"spec": {"paused": True}}  # `kubectl argo rollouts pause`
CONFLICT = 409


class KubeError(Exception):
    """An API call that failed: `status` is the HTTP status, or 0 when nothing answered."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status or 'unreachable'}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class RolloutApi(Protocol):
    """What the actuator needs from the API server; every method may raise KubeError."""

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        """The Rollout, or None when it does not exist."""
        ...

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        """Merge-patch `{"status":{"abort":true}}`, with `metadata.resourceVersion` as a
        precondition when given (409 if the Rollout changed); False when it does not exist."""
        ...

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        """The `rollout.argoproj.io/revision` annotation of ReplicaSet `name` ("" without it),
        or None when it does not exist."""
        ...

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        """Merge-patch `{"spec":{"paused":true}}` on the main resource, with the same
        precondition; False when the Rollout does not exist."""
        ...

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Mapping[str, Any]]:
        """The core/v1 Events about the Rollout (by uid when known, else by name), as JSON."""
        ...

    def record_event(self, namespace: str, event: Mapping[str, Any]) -> bool:
        """Create a core/v1 Event; False when one of that name already exists."""
        ...


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@contextlib.contextmanager
def _kube_errors() -> Iterator[None]:
    try:
        yield
    except k8s.ApiException as exc:
        headers = exc.headers or {}
        retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
        raise KubeError(int(exc.status or UNREACHABLE), str(exc.reason), retry_after) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KubeError(UNREACHABLE, f"{type(exc).__name__}: {exc}") from exc


class KubeRolloutApi:
    """RolloutApi on the kubernetes client; `group` is a parameter for tests of other CRDs."""

    def __init__(
        self, api: k8s.ApiClient, *, group: str = GROUP, timeout: tuple[float, float] = (5, 20)
    ) -> None:
        self._objects = k8s.CustomObjectsApi(api)
        self._core = k8s.CoreV1Api(api)
        self._apps = k8s.AppsV1Api(api)
        self._group = group
        self._timeout = timeout

    def get_rollout(self, namespace: str, name: str) -> Rollout | None:
        with _kube_errors():
            return read_rollout(self._objects, self._group, namespace, name, self._timeout)

    def abort_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        body: dict[str, Any] = dict(ABORT_PATCH)
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        args = (self._group, VERSION, namespace, PLURAL, name, body)
        with _kube_errors():
            try:
                self._objects.patch_namespaced_custom_object_status(
                    *args, _content_type=MERGE_PATCH, _request_timeout=self._timeout
                )
                return True
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
            log.info("%s/%s: no status subresource; patching the main resource", namespace, name)
            try:
                self._objects.patch_namespaced_custom_object(
                    *args, _content_type=MERGE_PATCH, _request_timeout=self._timeout
                )
                return True
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return False
                raise

    def replica_set_revision(self, namespace: str, name: str) -> str | None:
        with _kube_errors():
            try:
                rs = self._apps.read_namespaced_replica_set(
                    name, namespace, _request_timeout=self._timeout
                )
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        annotations = (rs.metadata and rs.metadata.annotations) or {}
        return str(annotations.get(REVISION_ANNOTATION, ""))

    def pause_rollout(self, namespace: str, name: str, resource_version: str = "") -> bool:
        body: dict[str, Any] = dict(PAUSE_PATCH)
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        with _kube_errors():
            try:
                self._objects.patch_namespaced_custom_object(
                    self._group,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    body,
                    _content_type=MERGE_PATCH,
                    _request_timeout=self._timeout,
                )
                return True
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return False
                raise

    def rollout_events(self, namespace: str, name: str, uid: str) -> list[Mapping[str, Any]]:
        selector = f"involvedObject.uid={uid}" if uid else f"involvedObject.name={name}"
        with _kube_errors():
            # Raw JSON: the client's model would reject Events with fields it does not expect.
            reply = cast(
                urllib3.BaseHTTPResponse,
                self._core.list_namespaced_event(
                    namespace,
                    field_selector=selector,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
            )
            items = json.loads(reply.data).get("items") or []
        return [
            item
            for item in items
            if isinstance(item, dict)
            and (item.get("involvedObject") or {}).get("kind", KIND) == KIND
        ]

    def record_event(self, namespace: str, event: Mapping[str, Any]) -> bool:
        with _kube_errors():
            try:
                body = k8s.CoreV1Event.from_dict(dict(event))
                assert body is not None
                self._core.create_namespaced_event(namespace, body, _request_timeout=self._timeout)
                return True
            except k8s.ApiException as exc:
                if exc.status == 409:
                    return False
                raise


def read_rollout(
    objects: k8s.CustomObjectsApi,
    group: str,
    namespace: str,
    name: str,
    timeout: tuple[float, float],
) -> Rollout | None:
    """One Rollout, or None when it does not exist (the one GET of actuator and bridge)."""
    try:
        obj = objects.get_namespaced_custom_object(
            group, VERSION, namespace, PLURAL, name, _request_timeout=timeout
        )
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(Rollout, obj)
