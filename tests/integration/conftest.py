"""Fixtures for integration tests against real local services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.localkube import LocalKubeAPI, ensure_binaries
from tests.support.rbac import apply_rbac


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build/install kube-apiserver and etcd before any `kube` test runs, so that a cold build
    (many minutes) does not count against the per-test timeout."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("kube") for item in session.items):
        ensure_binaries()


@pytest.fixture(scope="session")
def kube_api() -> Iterator[LocalKubeAPI]:
    """etcd + kube-apiserver with the Argo Rollouts CRD and deploy/base RBAC applied."""
    with LocalKubeAPI() as kube:
        kube.install_crd()
        apply_rbac(kube)
        yield kube
