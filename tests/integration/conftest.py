"""Fixtures for integration tests against real local services."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.argo import ensure_argo, install_argo_crds
from tests.support.localkube import LocalKubeAPI, ensure_binaries
from tests.support.rbac import apply_rbac


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build/install kube-apiserver, etcd and (for `argo` tests) the Argo Rollouts controller
    before any test runs, so that a cold build (many minutes) does not count against the
    per-test timeout."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("kube") for item in session.items):
        ensure_binaries()
        started = time.monotonic()
        needs_controller = any(item.get_closest_marker("argo") for item in session.items)
        ensure_argo(controller=needs_controller)
        spent = time.monotonic() - started
        if spent > 30:
            print(f"\nArgo Rollouts controller and CRDs ensured in {spent:.0f} s")


@pytest.fixture(scope="session")
def kube_api() -> Iterator[LocalKubeAPI]:
    """etcd + kube-apiserver with the five Argo Rollouts CRDs and deploy/base RBAC applied."""
    with LocalKubeAPI() as kube:
        install_argo_crds(kube)
        apply_rbac(kube)
        yield kube
