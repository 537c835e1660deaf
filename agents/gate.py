"""The promotion gate: a Rollout's current canary verdict over HTTP, for Argo's `web` provider.

`GET /v1/verdict/{namespace}/{rollout}?podHash=<hash>` answers JSON (`{"verdict": "pass" |
"abort" | "inconclusive", "evidence": [...], "bound": {...}, ...}`) from the snapshots the
workers publish to the compacted `<prefix>.verdicts` topic (agents/verdicts.py): the gate reads
the whole topic, so it answers for every environment whichever worker holds its evidence.

- Authenticated: `Authorization: Bearer <token>`; the token is checked with a TokenReview
  against the API server, then a SubjectAccessReview asks whether that user may `get` the
  Rollout (`rollouts.argoproj.io`, that namespace and name). 401 without a valid token, 403 for a
  Rollout the caller may not see. Answers are cached for `auth_cache_s`.
- Rate-limited per caller (a token bucket per token digest, before any API call): 429.
- Never a stale "pass": a snapshot older than `max_age_s` (its worker stopped) or a gate that
  has not yet read the topic to its end answers 503, so the analysis errors rather than
  promotes. A snapshot of another revision than `podHash` answers `inconclusive`.
- A quiet, inconclusive environment whose release passed at the pooled level (the release
  agent's `release:<name>` records on the same topic, streams/pooledpass.py) answers `pass`
  with reason "pass (release): ..." unless its own evidence argues against it (`AdoptionRule`);
  a release record older than `max_age_s` is ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry, Counter, generate_latest

from agents.follow import TopicFollower
from agents.kafka_auth import PLAINTEXT, KafkaAuth
from agents.kubeclient import kube_api_client
from agents.settings import Settings
from streams.pooledpass import KEY_PREFIX, AdoptionRule, ReleasePass, adopt
from streams.promotion import INCONCLUSIVE, VerdictSnapshot

log = logging.getLogger("canarywatch.gate")


# --- verdicts from the topic ----------------------------------------------------------------


class VerdictStore(TopicFollower):
    """The latest snapshot per env, read from the whole compacted topic (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str, auth: KafkaAuth = PLAINTEXT) -> None:
        super().__init__(bootstrap, topic, auth)
        self.snapshots: dict[str, VerdictSnapshot] = {}
        # Releases' pooled passes (key `release:<name>`, from the release agent).
        self.release_passes: dict[str, ReleasePass] = {}
        self.caught_up = asyncio.Event()
        self.received = 0

    async def follow(self, consumer: AIOKafkaConsumer) -> None:
        pending: dict[TopicPartition, int] | None = None
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for record in records:
                    self._apply(record.key, record.value)
            if self.caught_up.is_set():
                continue
            assigned = consumer.assignment()
            if not assigned:
                continue  # the topic does not exist yet: nothing to answer from
            if pending is None:
                pending = await consumer.end_offsets(list(assigned))
            # Caught up once every partition's position reached its end offset at the start.
            positions = [await consumer.position(tp) for tp in pending]
            if all(at >= end for at, end in zip(positions, pending.values(), strict=True)):
                self.caught_up.set()

    def _apply_release(self, release: str, value: bytes | None) -> None:
        if not value:
            self.release_passes.pop(release, None)
            return
        try:
            self.release_passes[release] = ReleasePass.decode(value)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("release pass for %s: unreadable (%s)", release, exc)

    def verdict(
        self, env: str, now: float, rule: AdoptionRule | None = None
    ) -> VerdictSnapshot | None:
        """The env's snapshot, with its release's pooled pass lent to it where it may be."""
        snapshot = self.snapshots.get(env)
        if snapshot is None or not snapshot.release:
            return snapshot
        return adopt(snapshot, self.release_passes.get(snapshot.release), now, rule)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        env = key.decode(errors="replace")
        if env.startswith(KEY_PREFIX):
            self._apply_release(env[len(KEY_PREFIX) :], value)
            return
        if not value:
            self.snapshots.pop(env, None)
            return
        try:
            self.snapshots[env] = VerdictSnapshot.decode(value)
            self.received += 1
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("verdict for %s: unreadable (%s)", env, exc)


# --- who may ask ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


class Authorizer(Protocol):
    async def authenticate(self, token: str) -> Caller | None: ...

    async def may_get(self, caller: Caller, namespace: str, rollout: str) -> bool: ...


class KubeAuthorizer:
    """TokenReview, then SubjectAccessReview (`get` on the Rollout), against the API server.
    Its own identity needs `create` on tokenreviews and subjectaccessreviews
    (system:auth-delegator)."""

    def __init__(self, api: k8s.ApiClient, *, cache_s: float = 30.0) -> None:
        self._authn = k8s.AuthenticationV1Api(api)
        self._authz = k8s.AuthorizationV1Api(api)
        self.cache_s = cache_s
        self._tokens: dict[str, tuple[float, Caller | None]] = {}
        self._access: dict[tuple[str, str, str], tuple[float, bool]] = {}

    async def authenticate(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(digest)
        now = time.monotonic()
        if cached and now - cached[0] < self.cache_s:
            return cached[1]
        review = await asyncio.to_thread(
            self._authn.create_token_review,
            k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token)),
        )
        status = review.status
        caller = None
        if status is not None and status.authenticated and status.user is not None:
            user = status.user
            caller = Caller(
                user=user.username or "",
                groups=tuple(user.groups or ()),
                uid=user.uid or "",
                extra={k: list(v) for k, v in (user.extra or {}).items()},
            )
        self._tokens[digest] = (now, caller)
        return caller

    async def may_get(self, caller: Caller, namespace: str, rollout: str) -> bool:
        key = (caller.user, namespace, rollout)
        cached = self._access.get(key)
        now = time.monotonic()
        if cached and now - cached[0] < self.cache_s:
            return cached[1]
        review = k8s.V1SubjectAccessReview(
            spec=k8s.V1SubjectAccessReviewSpec(
                user=caller.user,
                groups=list(caller.groups),
                uid=caller.uid or None,
                extra=caller.extra or None,
                resource_attributes=k8s.V1ResourceAttributes(
                    group="argoproj.io",
                    resource="rollouts",
                    verb="get",
                    namespace=namespace,
                    name=rollout,
                ),
            )
        )
        answer = await asyncio.to_thread(self._authz.create_subject_access_review, review)
        allowed = bool(answer.status and answer.status.allowed)
        self._access[key] = (now, allowed)
        return allowed


class TokenBuckets:
    """Per-caller token buckets: `rate` requests per second, bursts of `burst`."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when allowed; else the seconds until a request would be."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # forget idle callers
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return (1.0 - tokens) / self.rate


# --- the answer -----------------------------------------------------------------------------


def answer(snapshot: VerdictSnapshot | None, pod_hash: str, now: float) -> dict[str, Any]:
    """The JSON the web provider reads (`jsonPath: "{$.verdict}"`)."""
    if snapshot is None:
        return {
            "verdict": INCONCLUSIVE,
            "reason": "canarywatch holds no evidence for this Rollout's canary yet",
            "podHash": pod_hash,
        }
    body: dict[str, Any] = {
        "verdict": snapshot.verdict,
        "reason": snapshot.reason,
        "namespace": snapshot.namespace,
        "rollout": snapshot.rollout,
        "podHash": snapshot.pod_hash,
        "release": snapshot.release,
        "beta": snapshot.beta,
        "decidedAt": snapshot.decided_at,
        "ageSeconds": round(max(0.0, now - snapshot.decided_at), 3),
        "sinceCanaryStartSeconds": snapshot.since_canary_start_s,
        "etaSeconds": snapshot.eta_s,
        "bound": {
            s.signal: {
                "ratio": s.ratio_bound,
                "difference": s.diff_bound,
                "tolRatio": s.tol_ratio,
                "tolDifference": s.tol_diff,
            }
            for s in snapshot.signals
        },
        "evidence": [
            {
                "signal": s.signal,
                "verdict": s.verdict,
                "canaryRequests": s.canary_requests,
                "canaryBad": s.canary_bad,
                "stableRequests": s.stable_requests,
                "stableBad": s.stable_bad,
                "abortStatistic": s.abort_statistic,
                "abortThreshold": s.abort_threshold,
            }
            for s in snapshot.signals
        ],
    }
    if pod_hash and pod_hash != snapshot.pod_hash:
        body["verdict"] = INCONCLUSIVE
        body["reason"] = (
            f"canarywatch's evidence is for revision {snapshot.pod_hash}, not {pod_hash}"
        )
    return body


class GateMetrics:
    """`canarywatch_gate_answers_total{status,verdict}` on the gate's own `/metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.answers = Counter(
            "canarywatch_gate_answers_total",
            "Gate answers by HTTP status and, for 200, the verdict",
            ["status", "verdict"],
            registry=self.registry,
        )

    def count(self, status: int, verdict: str = "") -> None:
        self.answers.labels(str(status), verdict).inc()


def build_app(
    store: VerdictStore,
    authorizer: Authorizer,
    buckets: TokenBuckets,
    *,
    max_age_s: float,
    clock: Callable[[], float] = time.time,
    metrics: GateMetrics | None = None,
) -> web.Application:
    metrics = metrics or GateMetrics()

    def refuse(status: int, reason: str, **headers: str) -> web.Response:
        metrics.count(status)
        return web.json_response({"error": reason}, status=status, headers=headers or None)

    async def verdict(request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        rollout = request.match_info["rollout"]
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return refuse(401, "a bearer token is required", **{"WWW-Authenticate": "Bearer"})
        wait = buckets.take(hashlib.sha256(token.encode()).hexdigest())
        if wait > 0:
            return refuse(429, "too many requests", **{"Retry-After": str(max(1, round(wait)))})
        try:
            caller = await authorizer.authenticate(token)
            if caller is None:
                return refuse(401, "the token is not valid", **{"WWW-Authenticate": "Bearer"})
            if not await authorizer.may_get(caller, namespace, rollout):
                return refuse(403, f"{caller.user} may not get rollout {namespace}/{rollout}")
        except k8s.ApiException as exc:
            log.warning("auth review failed: %s", exc)
            return refuse(503, "the API server could not review the caller")
        except Exception as exc:  # API server unreachable
            log.warning("auth review failed: %s: %s", type(exc).__name__, exc)
            return refuse(503, "the API server could not review the caller")
        if not store.caught_up.is_set():
            return refuse(503, "the gate has not read the verdict topic yet")
        now = clock()
        snapshot = store.verdict(f"{namespace}/{rollout}", now, AdoptionRule(max_age_s=max_age_s))
        if snapshot is not None and now - snapshot.decided_at > max_age_s:
            return refuse(
                503,
                f"the latest verdict is {now - snapshot.decided_at:.0f} s old: is the worker "
                "holding this Rollout running?",
            )
        body = answer(snapshot, request.query.get("podHash", ""), now)
        metrics.count(200, body["verdict"])
        return web.json_response(body)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")  # the loop answers

    async def readyz(request: web.Request) -> web.Response:
        if store.caught_up.is_set():
            return web.Response(text="ok")
        return web.Response(status=503, text="catching up with the verdicts topic")

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/v1/verdict/{namespace}/{rollout}", verdict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app


class Gate:
    """The gate server: verdict store + HTTP app on `port`."""

    def __init__(
        self,
        settings: Settings,
        authorizer: Authorizer,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = VerdictStore(settings.bootstrap, settings.topics.verdicts, settings.kafka)
        self.metrics = GateMetrics()
        self.app = build_app(
            self.store,
            authorizer,
            TokenBuckets(settings.gate_rate_per_s, settings.gate_burst),
            max_age_s=settings.gate_max_age_s,
            clock=clock,
            metrics=self.metrics,
        )
        self.host = host
        self.port = settings.gate_port if port is None else port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        await self.store.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port: the one the kernel chose
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.store.stop()

    async def __aenter__(self) -> Gate:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: Settings, api: k8s.ApiClient, stop: Awaitable[object]) -> None:
    async with Gate(settings, KubeAuthorizer(api)):
        await stop


def run_gate(settings: Settings, kubeconfig: str | None = None) -> int:
    """`canarywatch gate`: until SIGINT/SIGTERM."""
    import signal

    api = kube_api_client(kubeconfig)  # a KubeconfigError is the CLI's one line, exit 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        log.info("gate on :%d, verdicts from %s", settings.gate_port, settings.topics.verdicts)
        await serve(settings, api, stopping.wait())

    asyncio.run(main())
    return 0
