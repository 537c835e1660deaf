"""The Kubernetes API client every component builds (actuator, bridge, gate), and its one error.

A kubeconfig that is missing, unreadable or invalid is a `KubeconfigError` with one line of
text: the CLI prints it and exits 2 (no traceback), whichever command asked. The kubernetes
package is imported only when a client is built: the CLI imports this module for the error,
and `canarywatch status` must not pay for that import.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from kubernetes import client as k8s


class KubeconfigError(Exception):
    """The API client could not be built: the kubeconfig is missing, unreadable or invalid."""


def kube_api_client(kubeconfig: str | None = None, *, connections: int = 0) -> k8s.ApiClient:
    """A client from `kubeconfig`, else the in-cluster ServiceAccount, else ~/.kube/config;
    `connections` kept open at most (0: the client's default, 5 per CPU)."""
    import yaml
    from kubernetes import config as k8s_config

    where = kubeconfig or "in-cluster or ~/.kube/config"
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise KubeconfigError(f"cannot load kubeconfig {kubeconfig}: no such file")
    try:
        return _client(kubeconfig, connections)
    except (k8s_config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # YAML errors span lines
        raise KubeconfigError(f"cannot load kubeconfig {where}: {reason}") from None


def _client(kubeconfig: str | None, connections: int) -> k8s.ApiClient:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    if connections:
        configuration.connection_pool_maxsize = connections
    # kubernetes.config is untyped; the client it returns is a typed k8s.ApiClient.
    if kubeconfig:
        return cast(
            k8s.ApiClient,
            k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            ),
        )
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        return cast(
            k8s.ApiClient,
            k8s_config.new_client_from_config(client_configuration=configuration),  # type: ignore[no-untyped-call]
        )
    return k8s.ApiClient(configuration)
