"""Two clusters: two real kube-apiservers with the same namespace and Rollout name, one actuator
per cluster (`Settings.cluster`), both reading one commands topic.

A command names its cluster; only that cluster's actuator applies it, the other one judges it
`other_cluster` without reading its own API server. Each actuator has its own consumer group
(`<app_id>-actuator-<cluster>`), so neither takes the other's commands away.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics
from agents.rolloutapi import KubeRolloutApi
from streams.events import decision_id_for, encode_abort_command
from tests.integration.test_actuator import (
    FAST,
    command_for,
    count,
    create_rollout,
    create_topics,
    ensure_namespace,
    events_about,
    produce,
    read_rollout,
    running,
    unique_settings,
    wait_committed,
)
from tests.support.argo import install_argo_crds
from tests.support.localkube import LocalKubeAPI
from tests.support.rbac import apply_rbac

pytestmark = [pytest.mark.kube, pytest.mark.kafka]

NAMESPACE = "cw-two-clusters"
NAME = "web"
CANARY, STABLE = "6f7d9c8b5d", "5c9b8d7f6e"
STATUS: dict[str, Any] = {  # as the real controller leaves a canary paused at its first step
    "currentPodHash": CANARY,
    "stableRS": STABLE,
    "currentStepIndex": 1,
    "phase": "Paused",
    "observedGeneration": "1",
}


@pytest.fixture(scope="module")
def second_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubeAPI]:
    """A second etcd + kube-apiserver (its own ports and data dir): another cluster."""
    with LocalKubeAPI(workdir=tmp_path_factory.mktemp("cluster-b")) as kube:
        install_argo_crds(kube)
        apply_rbac(kube)
        yield kube


async def test_a_command_for_one_cluster_is_never_applied_in_the_other(
    kafka_bootstrap: str, tmp_path: Path, kube_api: LocalKubeAPI, second_kube: LocalKubeAPI
) -> None:
    base = unique_settings(kafka_bootstrap, tmp_path, "two-clusters")
    await create_topics(base)
    clusters = {"eu-1": kube_api, "us-2": second_kube}
    assert kube_api.url != second_kube.url
    created = {}
    for kube in clusters.values():
        ensure_namespace(kube, NAMESPACE)
        with kube.client("admin") as admin:
            created[kube.url] = create_rollout(admin, NAMESPACE, NAME, STATUS)

    command = command_for(NAMESPACE, NAME, CANARY)
    commands = [
        dataclasses.replace(
            command, cluster=cluster, decision_id=decision_id_for(NAMESPACE, NAME, CANARY, cluster)
        )
        for cluster in ("eu-1", "", "ap-3")  # ours, unnamed, a third cluster's
    ]
    registries = {cluster: CollectorRegistry() for cluster in clusters}
    clients = {cluster: kube.api_client("actuator") for cluster, kube in clusters.items()}
    actuators = {
        cluster: Actuator(
            dataclasses.replace(base, cluster=cluster),
            KubeRolloutApi(clients[cluster]),
            ActuatorMetrics(registries[cluster]),
            policy=FAST,
        )
        for cluster in clusters
    }
    assert len({a.group_id for a in actuators.values()}) == 2
    tp = TopicPartition(base.topics.commands, 0)
    try:
        async with running(actuators["eu-1"]), running(actuators["us-2"]):
            await produce(
                kafka_bootstrap,
                base.topics.commands,
                [(c.env.encode(), encode_abort_command(c)) for c in commands],
            )
            for act in actuators.values():  # each group reads (and commits) all three
                await wait_committed(kafka_bootstrap, act.group_id, tp, len(commands))
    finally:
        for api in clients.values():
            api.close()  # type: ignore[no-untyped-call]  # ApiClient.close is unannotated

    with kube_api.client("admin") as admin:
        aborted = read_rollout(admin, NAMESPACE, NAME)
        reasons = [e.reason for e in events_about(admin, NAMESPACE, NAME)]
    with second_kube.client("admin") as admin:
        untouched = read_rollout(admin, NAMESPACE, NAME)
        others = events_about(admin, NAMESPACE, NAME)
    assert aborted["status"].get("abort") is True
    assert reasons == ["CanarywatchAbort"]
    assert untouched == created[second_kube.url]  # to the byte: same resourceVersion
    assert others == []

    def outcome(cluster: str, name: str) -> float:
        return count(registries[cluster], "canarywatch_actuator_commands_total", outcome=name)

    assert (outcome("eu-1", "applied"), outcome("eu-1", "other_cluster")) == (1, 2)
    assert (outcome("us-2", "applied"), outcome("us-2", "other_cluster")) == (0, 3)
