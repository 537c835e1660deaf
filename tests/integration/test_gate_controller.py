"""canarywatch as the real Argo Rollouts controller's analysis: promotion on evidence.

Everything real: the API server, the broker, the controller (namespaced, `NAMESPACE`) with
the ReplicaSet stand-in kubelet, a `canarywatch worker` process, and in-process bridge
(Rollouts -> Kafka), actuator (abort commands -> Rollouts) and gate (verdicts -> HTTP). The
Rollout's steps are `setWeight: 20`, then the canarywatch analysis of deploy/analysis (its
AnalysisTemplate with a 2 s interval), then nothing: completing the analysis step promotes.
Request logs are produced for the canary and stable pod hashes the controller created.

- healthy and busy: the gate says `pass`, the AnalysisRun succeeds, the controller promotes;
- bad: aborted (the streaming abort, or the analysis; whichever is first) and never promoted,
  with the gate saying `abort` for that revision and no measurement ever `pass`;
- quiet: held at the analysis step while the measurements say `inconclusive`;
- canarywatch stopped: the measurements error, the AnalysisRun ends `Error`, and the Rollout
  never promotes (Argo then aborts it: it treats an Error analysis like a Failed one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics
from agents.bridge import Bridge, BridgeMetrics, BridgeOptions, RolloutReader
from agents.gate import Gate, KubeAuthorizer
from agents.kafka_admin import ensure_topics, ensure_verdict_topic
from agents.processes import WorkerProcess, free_port, poll_until
from agents.rolloutapi import KubeRolloutApi
from agents.settings import Settings, Topics
from streams.events import RequestLine, encode_request_line
from streams.rollouts import GROUP, PLURAL, VERSION
from tests.integration.test_actuator import FAST, ensure_namespace, events_about, read_rollout
from tests.integration.test_argo_controller import condition, reconciled
from tests.integration.test_bridge import running as bridge_running
from tests.integration.test_gate import analysis_access
from tests.support.argo import ReplicaSetKubelet, RolloutsController, dump
from tests.support.localkube import REPO_ROOT, LocalKubeAPI

pytestmark = [pytest.mark.kube, pytest.mark.kafka, pytest.mark.argo]

NAMESPACE = "cw-gate"
TEMPLATE = REPO_ROOT / "deploy" / "analysis" / "analysistemplate.yaml"
IMAGE = "registry.example/web:{}"
WITHIN_S = 90.0


@pytest.fixture(scope="module")
def stack(
    kube_api: LocalKubeAPI, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Controller + kubelet for NAMESPACE, the analysis identity's access and token Secret,
    and one worker process; yields the settings everything else shares."""
    ensure_namespace(kube_api, NAMESPACE)
    for obj in analysis_access(NAMESPACE):
        kube_api.apply(obj)
    kube_api.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "canarywatch-analysis-token", "namespace": NAMESPACE},
            "stringData": {"token": kube_api.token("analysis")},
        }
    )
    workdir = tmp_path_factory.mktemp("gate-controller")
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap=kafka_bootstrap,
        app_id=f"gatectl-{run_id}",
        topics=Topics(f"gatectl-{run_id}"),
        partitions=1,
        replication_factor=1,
        metrics_port=free_port(),
        data_dir=workdir / "worker",
        verdict_refresh_s=1.0,
        gate_max_age_s=15.0,
        gate_port=0,
        gate_rate_per_s=50.0,
        gate_burst=50,
    )
    asyncio.run(ensure_topics(settings.bootstrap, settings.topic_partitions()))
    asyncio.run(ensure_verdict_topic(settings))
    worker = WorkerProcess(settings, workdir / "worker.log")
    with kube_api.client("admin") as admin, ReplicaSetKubelet(admin, NAMESPACE):
        controller = RolloutsController(kube_api, NAMESPACE, workdir / "argo")
        try:
            controller.start()
            worker.start()
            asyncio.run(worker.wait_ready())
            yield settings
            controller.check_alive()
        finally:
            worker.stop()
            controller.stop()


@pytest.fixture
def admin(kube_api: LocalKubeAPI, stack: Settings) -> Iterator[k8s.ApiClient]:
    with kube_api.client("admin") as api:
        yield api


# --- the pieces in process ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def components(
    kube_api: LocalKubeAPI, settings: Settings, *, gate: bool = True, actuator: bool = False
) -> AsyncIterator[Gate | None]:
    """Bridge (always), gate and actuator (if asked), each with its own identity."""
    async with contextlib.AsyncExitStack() as stack:
        bridge_api = stack.enter_context(kube_api.client("bridge"))
        registry = CollectorRegistry()
        bridge = Bridge(
            settings,
            RolloutReader(bridge_api, timeout=(2, 10)),
            BridgeMetrics(registry),
            BridgeOptions((NAMESPACE,)),
        )
        await stack.enter_async_context(bridge_running(bridge, registry))
        server = None
        if gate:
            gate_api = stack.enter_context(kube_api.client("gate"))
            server = Gate(settings, KubeAuthorizer(gate_api), host="127.0.0.1")
            await stack.enter_async_context(server)
            ready = server.store.caught_up
            await poll_until(ready.is_set, 30, "the gate to read the verdict topic")
        if actuator:
            act_api = stack.enter_context(kube_api.client("actuator"))
            act = Actuator(
                settings,
                KubeRolloutApi(act_api),
                ActuatorMetrics(CollectorRegistry()),
                policy=FAST,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(act.run(stop))

            async def stop_actuator() -> None:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 30)

            stack.push_async_callback(stop_actuator)
        yield server


@contextlib.asynccontextmanager
async def traffic(
    settings: Settings,
    canary: str,
    stable: str,
    *,
    per_s: float,
    canary_errors: float,
    stable_errors: float = 0.001,
    share: float = 0.2,
) -> AsyncIterator[None]:
    """Request-log lines for the two pod hashes, `per_s` a second, until the block ends."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5, acks=1)
    await producer.start()
    stop = asyncio.Event()
    rng = random.Random(17)

    async def play() -> None:
        carry = 0.0
        while not stop.is_set():
            carry += per_s * 0.1
            n, carry = int(carry), carry - int(carry)
            now = time.time()
            lines = []
            for _ in range(n):
                is_canary = rng.random() < share
                rate = canary_errors if is_canary else stable_errors
                pod_hash = canary if is_canary else stable
                status = 503 if rng.random() < rate else 200
                lines.append(
                    encode_request_line(
                        RequestLine(now, NAMESPACE, f"web-{pod_hash}", pod_hash, status, 20.0)
                    )
                )
            for i in range(0, len(lines), 200):
                await producer.send(
                    settings.topics.requests,
                    key=NAMESPACE.encode(),
                    value=b"\n".join(lines[i : i + 200]),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    task = asyncio.create_task(play())
    try:
        yield
    finally:
        stop.set()
        await task
        await producer.stop()


# --- the Rollout, its AnalysisTemplate and AnalysisRuns --------------------------------------


def analysis_template(name: str, gate_url: str, consecutive_errors: int = 4) -> dict[str, Any]:
    """deploy/analysis's AnalysisTemplate, renamed, for this gate, measuring every 2 s."""
    template: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    template["metadata"] = {"name": name, "namespace": NAMESPACE}
    for arg in template["spec"]["args"]:
        if arg["name"] == "gate-url":
            arg["value"] = gate_url
    metric = template["spec"]["metrics"][0]
    metric["interval"] = "2s"
    metric["consecutiveErrorLimit"] = consecutive_errors
    return template


def rollout_manifest(name: str, template: str, version: str) -> dict[str, Any]:
    args = [
        {"name": "namespace", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "rollout", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
    ]
    steps = [
        {"setWeight": 20},
        {"analysis": {"templates": [{"templateName": template}], "args": args}},
    ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 5,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": IMAGE.format(version)}]},
            },
            "strategy": {"canary": {"steps": steps}},
        },
    }


async def wait_for(
    admin: k8s.ApiClient, name: str, what: str, check: Any, within_s: float = WITHIN_S
) -> dict[str, Any]:
    def probe() -> dict[str, Any]:
        obj = read_rollout(admin, NAMESPACE, name)
        return obj if check(obj) else {}

    try:
        return await poll_until(probe, within_s, f"{name}: {what}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last: {dump(read_rollout(admin, NAMESPACE, name))}") from None


async def canary_at_analysis(
    admin: k8s.ApiClient, gate_url: str, consecutive_errors: int = 4, name: str | None = None
) -> tuple[str, str, str]:
    """A Rollout (`name`, default a fresh one) with the canarywatch analysis step, Healthy at
    v1, then at v2 with the controller running the analysis step (index 1); its name, canary
    and stable hashes."""
    name = name or f"web-{uuid.uuid4().hex[:8]}"
    objects = k8s.CustomObjectsApi(admin)
    template = analysis_template(f"canarywatch-{name}", gate_url, consecutive_errors)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "analysistemplates", template
    )
    objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, rollout_manifest(name, f"canarywatch-{name}", "1.0.0")
    )
    healthy = await wait_for(
        admin,
        name,
        "Healthy at v1",
        lambda o: (
            reconciled(o)
            and o.get("status", {}).get("phase") == "Healthy"
            and o["status"].get("stableRS") == o["status"].get("currentPodHash")
        ),
    )
    stable = healthy["status"]["stableRS"]
    patch = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "app", "image": IMAGE.format("2.0.0")}]}}
        }
    }
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, patch, _content_type="application/merge-patch+json"
    )
    at_step = await wait_for(
        admin,
        name,
        "v2 at the analysis step",
        lambda o: (
            reconciled(o)
            and o["status"].get("currentPodHash") not in (None, stable)
            and o["status"].get("currentStepIndex") == 1
        ),
    )
    return name, at_step["status"]["currentPodHash"], stable


def analysis_runs(admin: k8s.ApiClient, canary: str) -> list[dict[str, Any]]:
    listed = k8s.CustomObjectsApi(admin).list_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        "analysisruns",
        label_selector=f"rollouts-pod-template-hash={canary}",
    )
    items: list[dict[str, Any]] = cast(dict[str, Any], listed)["items"]
    return items


def measurements(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    results = run.get("status", {}).get("metricResults") or []
    return [m for r in results for m in r.get("measurements") or []]


def verdicts(run: Mapping[str, Any]) -> list[str | None]:
    """The measured `$.verdict` of each measurement (the web provider stores it as JSON)."""
    return [json.loads(m["value"]) if "value" in m else None for m in measurements(run)]


def promoted(obj: Mapping[str, Any], canary: str) -> bool:
    status = obj.get("status", {})
    return bool(status.get("stableRS") == canary and status.get("phase") == "Healthy")


async def gate_verdict(gate: Gate, name: str, canary: str, token: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{gate.port}/v1/verdict/{NAMESPACE}/{name}?podHash={canary}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as reply,
    ):
        assert reply.status == 200, await reply.text()
        body: dict[str, Any] = await reply.json()
        return body


# --- tests ----------------------------------------------------------------------------------


async def test_a_healthy_busy_canary_is_promoted_by_the_controller_after_canarywatch_says_pass(
    kube_api: LocalKubeAPI, stack: Settings, admin: k8s.ApiClient
) -> None:
    async with components(kube_api, stack) as gate:
        assert gate is not None
        name, canary, stable = await canary_at_analysis(admin, f"http://127.0.0.1:{gate.port}")
        started = time.monotonic()
        async with traffic(stack, canary, stable, per_s=1500, canary_errors=0.001):
            after = await wait_for(
                admin, name, "promoted by the controller", lambda o: promoted(o, canary)
            )
        took = time.monotonic() - started
    runs = analysis_runs(admin, canary)
    assert len(runs) == 1, dump(runs)
    run = runs[0]
    assert run["status"]["phase"] == "Successful", dump(run["status"])
    values = verdicts(run)
    assert values[-1] == "pass" and set(values) <= {"pass", "inconclusive"}, dump(measurements(run))
    result = run["status"]["metricResults"][0]
    print(f"\nanalysis step -> promoted in {took:.1f} s; AnalysisRun {run['metadata']['name']}:")
    print(f"  metricResults[0]: phase {result['phase']}, measurements {values}")
    print(f"  last measurement: {dump(measurements(run)[-1])}")
    assert after["status"]["stableRS"] == canary


async def test_a_bad_canary_is_aborted_and_the_gate_and_the_streaming_abort_agree(
    kube_api: LocalKubeAPI, stack: Settings, admin: k8s.ApiClient
) -> None:
    async with components(kube_api, stack, actuator=True) as gate:
        assert gate is not None
        name, canary, stable = await canary_at_analysis(admin, f"http://127.0.0.1:{gate.port}")
        async with traffic(stack, canary, stable, per_s=1000, canary_errors=0.2):
            after = await wait_for(
                admin,
                name,
                "aborted",
                lambda o: (
                    o.get("status", {}).get("abort") is True
                    and condition(o, "Progressing").get("reason") == "RolloutAborted"
                ),
            )
            body = await poll_until(
                lambda: asyncio.run(gate_verdict(gate, name, canary, kube_api.token("analysis"))),
                30,
                "the gate's verdict",
            )
    assert body["verdict"] == "abort", body
    assert after["status"].get("stableRS") == stable, dump(after["status"])
    runs = analysis_runs(admin, canary)
    values = [v for run in runs for v in verdicts(run)]
    assert "pass" not in values, values
    reasons = {e.reason for e in events_about(admin, NAMESPACE, name)}
    by_stream = "CanarywatchAbort" in reasons
    by_analysis = any(run["status"].get("phase") == "Failed" for run in runs)
    assert by_stream or by_analysis, (reasons, dump(runs))
    print(
        f"\nbad canary aborted by {'the streaming abort' if by_stream else 'the analysis'};"
        f" gate: {body['verdict']} ({body['evidence'][0]}); measurements {values}"
    )


async def test_a_quiet_canary_is_held_at_the_analysis_step_while_inconclusive(
    kube_api: LocalKubeAPI, stack: Settings, admin: k8s.ApiClient
) -> None:
    async with components(kube_api, stack) as gate:
        assert gate is not None
        name, canary, stable = await canary_at_analysis(admin, f"http://127.0.0.1:{gate.port}")
        async with traffic(stack, canary, stable, per_s=2, canary_errors=0.001):

            def inconclusive_measurements() -> list[dict[str, Any]]:
                runs = analysis_runs(admin, canary)
                found = [m for run in runs for m in measurements(run)]
                values = [v for run in runs for v in verdicts(run)]
                return found if values.count("inconclusive") >= 4 else []

            found = await poll_until(
                inconclusive_measurements, WITHIN_S, "4 inconclusive measurements"
            )
            body = await gate_verdict(gate, name, canary, kube_api.token("analysis"))
    assert {json.loads(m["value"]) for m in found} == {"inconclusive"}, found
    assert {m.get("phase") for m in found} == {"Inconclusive"}, found
    run = analysis_runs(admin, canary)[0]
    assert run["status"]["phase"] == "Running", dump(run["status"])
    obj = read_rollout(admin, NAMESPACE, name)
    assert obj["status"]["currentStepIndex"] == 1 and obj["status"]["stableRS"] == stable
    assert body["verdict"] == "inconclusive", body
    assert body["etaSeconds"] is None or body["etaSeconds"] > 60, body
    print(
        f"\nquiet canary held at the analysis step: {len(found)} inconclusive measurements;"
        f" gate says a pass would take ~{body['etaSeconds']} s at this traffic"
    )


async def test_with_canarywatch_stopped_the_analysis_errors_and_the_rollout_never_promotes(
    kube_api: LocalKubeAPI, stack: Settings, admin: k8s.ApiClient
) -> None:
    async with components(kube_api, stack) as gate:
        assert gate is not None
        url = f"http://127.0.0.1:{gate.port}"
        # Stopped before the analysis step starts: nothing answers at the gate's address.
    name, canary, stable = await canary_at_analysis(admin, url, consecutive_errors=2)

    def ended() -> dict[str, Any]:
        runs = analysis_runs(admin, canary)
        return runs[0] if runs and runs[0].get("status", {}).get("phase") == "Error" else {}

    run = await poll_until(ended, WITHIN_S, "the AnalysisRun to end in Error")
    errors = [m for m in measurements(run) if m.get("phase") == "Error"]
    assert len(errors) >= 3, dump(run["status"])  # consecutiveErrorLimit 2: the third ends it
    after = await wait_for(
        admin,
        name,
        "aborted after the Error analysis",
        lambda o: o.get("status", {}).get("abort") is True,
    )
    assert after["status"]["stableRS"] == stable, dump(after["status"])
    print(
        f"\ncanarywatch down: {len(errors)} measurement errors, AnalysisRun"
        f" {run['status']['phase']} ({run['status'].get('message')}); Rollout:"
        f" {condition(after, 'Progressing').get('message')}"
    )
    print(f"  error measurement: {dump(errors[-1])}")
