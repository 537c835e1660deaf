"""The gate on a real API server and a real broker: who may ask, how often, and when it refuses.

Verdict snapshots go to the compacted verdict topic as a worker publishes them; the gate reads
the topic and reviews every caller with TokenReview + SubjectAccessReview against the API
server, with its own least-privilege identity (deploy/base: system:auth-delegator only). The
caller is deploy/analysis/analysis-access.yaml's identity, applied to `NAMESPACE`: it may `get`
the Rollouts of that namespace and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agents.gate import Gate, KubeAuthorizer
from agents.kafka_admin import ensure_topics
from agents.processes import poll_until
from agents.settings import Settings
from streams.promotion import SignalPass, VerdictSnapshot
from tests.integration.test_actuator import ensure_namespace, produce, unique_settings
from tests.support.localkube import REPO_ROOT, LocalKubeAPI

pytestmark = [pytest.mark.kube, pytest.mark.kafka]

NAMESPACE = "cw-gate"
ACCESS = REPO_ROOT / "deploy" / "analysis" / "analysis-access.yaml"


def analysis_access(namespace: str) -> list[dict[str, Any]]:
    """deploy/analysis/analysis-access.yaml for `namespace`: the Role and RoleBinding (the
    ServiceAccount's token is a static token of the test API server)."""
    out = []
    for obj in yaml.safe_load_all(ACCESS.read_text()):
        if obj["kind"] not in ("Role", "RoleBinding"):
            continue
        obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects") or []:
            subject["namespace"] = namespace
        out.append(obj)
    return out


@pytest.fixture(scope="module")
def access(kube_api: LocalKubeAPI) -> Iterator[None]:
    ensure_namespace(kube_api, NAMESPACE)
    ensure_namespace(kube_api, "cw-gate-other")
    for obj in analysis_access(NAMESPACE):
        kube_api.apply(obj)
    yield


def snapshot(namespace: str, rollout: str, verdict: str, at: float, pod_hash: str = "c1") -> bytes:
    signal = SignalPass("errors", verdict, 1.25, 0.001, 1.5, 0.005, 4000, 3, 16000, 15, 0.1, 5.3)
    return VerdictSnapshot(
        namespace, rollout, pod_hash, verdict, at, 60.0, 0.01, (signal,), None
    ).encode()


async def start_gate(
    kube_api: LocalKubeAPI, settings: Settings, snapshots: int = 0
) -> AsyncIterator[str]:
    """The gate with its own identity; once it has read `snapshots` verdicts, its URL."""
    with kube_api.client("gate") as api:
        gate = Gate(settings, KubeAuthorizer(api, cache_s=5.0), host="127.0.0.1")
        async with gate:
            if snapshots:
                await poll_until(
                    lambda: gate.store.caught_up.is_set() and gate.store.received >= snapshots,
                    30,
                    "the gate to read the verdict topic",
                )
            yield f"http://127.0.0.1:{gate.port}"


async def get(
    session: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.get(url, headers=headers) as reply:
        return reply.status, await reply.json()


async def test_only_callers_who_may_get_the_rollout_are_answered_and_at_a_limited_rate(
    kafka_bootstrap: str, kube_api: LocalKubeAPI, tmp_path: Path, access: None
) -> None:
    settings = unique_settings(kafka_bootstrap, tmp_path, "gate").with_overrides(
        gate_port=0, gate_rate_per_s=0.5, gate_burst=6, gate_max_age_s=30.0
    )
    await ensure_topics(settings.bootstrap, {settings.topics.verdicts: 1})
    now = time.time()
    await produce(
        kafka_bootstrap,
        settings.topics.verdicts,
        [
            (b"cw-gate/web", snapshot(NAMESPACE, "web", "inconclusive", now - 5)),
            (b"cw-gate/web", snapshot(NAMESPACE, "web", "pass", now)),  # the latest wins
            (b"cw-gate-other/web", snapshot("cw-gate-other", "web", "pass", now)),
            (b"cw-gate/old", snapshot(NAMESPACE, "old", "pass", now - 120)),
        ],
    )
    analysis = kube_api.token("analysis")
    async for base in start_gate(kube_api, settings, snapshots=4):
        async with aiohttp.ClientSession() as session:
            status, body = await get(
                session, f"{base}/v1/verdict/{NAMESPACE}/web?podHash=c1", analysis
            )
            assert (status, body["verdict"]) == (200, "pass"), body
            assert body["bound"]["errors"] == {
                "ratio": 1.25,
                "difference": 0.001,
                "tolRatio": 1.5,
                "tolDifference": 0.005,
            }
            assert body["evidence"][0]["canaryRequests"] == 4000
            # Another revision than the one the evidence is for: inconclusive, never its pass.
            status, body = await get(
                session, f"{base}/v1/verdict/{NAMESPACE}/web?podHash=c2", analysis
            )
            assert (status, body["verdict"]) == (200, "inconclusive"), body
            # A Rollout in a namespace the caller may not see: 403, though a verdict exists.
            status, body = await get(session, f"{base}/v1/verdict/cw-gate-other/web", analysis)
            assert status == 403, body
            assert "canarywatch-analysis" in body["error"]
            # A stale verdict (its worker stopped): 503, so the analysis errors.
            status, body = await get(session, f"{base}/v1/verdict/{NAMESPACE}/old", analysis)
            assert status == 503, body
            # No token, a token the API server does not know, an identity without rights.
            status, _ = await get(session, f"{base}/v1/verdict/{NAMESPACE}/web", None)
            assert status == 401
            status, _ = await get(session, f"{base}/v1/verdict/{NAMESPACE}/web", "not-a-token")
            assert status == 401
            status, _ = await get(
                session, f"{base}/v1/verdict/{NAMESPACE}/web", kube_api.token("nobody")
            )
            assert status == 403
            # The caller's burst is spent: 429 with Retry-After; another caller is unaffected.
            statuses = []
            for _ in range(6):
                async with session.get(
                    f"{base}/v1/verdict/{NAMESPACE}/web",
                    headers={"Authorization": f"Bearer {analysis}"},
                ) as reply:
                    statuses.append(reply.status)
                    if reply.status == 429:
                        assert int(reply.headers["Retry-After"]) >= 1
            assert statuses[-1] == 429 and 429 in statuses, statuses
            status, _ = await get(
                session, f"{base}/v1/verdict/{NAMESPACE}/web", kube_api.token("admin")
            )
            assert status == 200
            async with session.get(f"{base}/metrics") as reply:
                exposition = await reply.text()
            for status_code in ("401", "403", "429", "503"):
                assert f'status="{status_code}"' in exposition, exposition
            assert 'canarywatch_gate_answers_total{status="200",verdict="pass"}' in exposition


async def test_a_gate_that_has_not_read_the_topic_refuses(
    kafka_bootstrap: str, kube_api: LocalKubeAPI, tmp_path: Path, access: None
) -> None:
    """No verdict topic yet (no worker ever ran): 503, never a default answer."""
    settings = unique_settings(kafka_bootstrap, tmp_path, "gate").with_overrides(gate_port=0)
    async for base in start_gate(kube_api, settings):
        async with aiohttp.ClientSession() as session:
            status, body = await get(
                session, f"{base}/v1/verdict/{NAMESPACE}/web", kube_api.token("analysis")
            )
            assert status == 503, body
