"""Render the RBAC objects of deploy/base and apply them to a LocalKubeAPI.

The ServiceAccounts of deploy/base are bound by their user names
(``system:serviceaccount:<namespace>:<name>``); LocalKubeAPI's static-token identities
``worker``, ``actuator`` and ``bridge`` authenticate as exactly those users, so the bindings
apply to the tokens unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.localkube import REPO_ROOT, LocalKubeAPI, service_account_identity

DEPLOY_BASE = REPO_ROOT / "deploy" / "base"
RBAC_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
)
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def load_kustomization(base: Path = DEPLOY_BASE) -> tuple[str | None, list[dict[str, Any]]]:
    """(namespace, objects) of a Kustomize directory: its resource files, its bases (an
    overlay's `../../base`, namespace applied), and its `$patch: delete` patches; nothing
    generated, other patches (they change Deployments, not RBAC) left out."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    namespace = kustomization.get("namespace")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (base / resource).resolve()
        if path.is_dir():
            objects.extend(render_rbac(path))
            continue
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load(patch["patch"])
        if isinstance(body, dict) and body.get("$patch") == "delete":
            gone = (body["kind"], body["metadata"]["name"])
            kept = [o for o in objects if (o.get("kind"), o["metadata"]["name"]) != gone]
            if len(kept) == len(objects):
                raise ValueError(f"{base}: the patch deletes {gone}, which is not there")
            objects = kept
    return namespace, objects


def render_rbac(base: Path = DEPLOY_BASE) -> list[dict[str, Any]]:
    """The Namespace, ServiceAccounts and (Cluster)Roles/Bindings of ``base``, with the
    kustomization namespace applied as ``kustomize build`` would (namespaced objects, and
    ServiceAccount subjects that have none)."""
    namespace, objects = load_kustomization(base)
    rendered = []
    for obj in objects:
        kind = obj.get("kind")
        if kind not in RBAC_KINDS:
            continue
        if namespace and kind not in _CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace
        if namespace and kind in ("ClusterRoleBinding", "RoleBinding"):
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject.setdefault("namespace", namespace)
        if kind == "Namespace" and namespace:
            obj["metadata"]["name"] = namespace
        rendered.append(obj)
    order = {k: i for i, k in enumerate(RBAC_KINDS)}
    rendered.sort(key=lambda o: order[o["kind"]])
    return rendered


def service_account_users(base: Path = DEPLOY_BASE) -> dict[str, str]:
    """ServiceAccount name -> the user name its token authenticates as."""
    return {
        obj["metadata"]["name"]: service_account_identity(
            obj["metadata"]["namespace"], obj["metadata"]["name"]
        ).user
        for obj in render_rbac(base)
        if obj["kind"] == "ServiceAccount"
    }


def apply_rbac(kube: LocalKubeAPI, base: Path = DEPLOY_BASE) -> list[dict[str, Any]]:
    """Apply the RBAC objects of ``base`` as admin; return what the server stored.

    Fails if a ServiceAccount of the base has no token identity in ``kube``."""
    objects = render_rbac(base)
    users = {ident.user for ident in kube.identities.values()}
    missing = sorted(u for u in service_account_users(base).values() if u not in users)
    if missing:
        raise ValueError(f"no LocalKubeAPI token identity for ServiceAccount users {missing}")
    return [kube.apply(obj) for obj in objects]


def identity_for_service_account(kube: LocalKubeAPI, name: str) -> str:
    """The LocalKubeAPI identity key whose token authenticates as ServiceAccount ``name``."""
    user = service_account_users()[name]
    for key, ident in kube.identities.items():
        if ident.user == user:
            return key
    raise KeyError(name)
