"""The bridge: Argo Rollouts in the cluster become rollout-state snapshots on Kafka.

Two sources of changes, one sink:
- a list + watch of Rollouts (all namespaces, or one watch per selected namespace), resumed from
  the last resourceVersion after a dropped connection and relisted on 410 Gone; the kubernetes
  client is synchronous, so each watch runs in its own thread and hands objects to the event
  loop, waiting until they are published before it moves its resourceVersion on;
- optionally, core/v1 Events as kubernetes-event-exporter's Kafka sink publishes them: an Event
  about a Rollout triggers a GET of that Rollout.
Snapshots (`streams.rollouts.rollout_state`) go to the rollouts topic keyed `namespace/name`,
only when a meaningful field changed (`SnapshotDedupe`), never older over newer, and only once
the controller has reconciled the Rollout's spec (`status.observedGeneration` equal to
`metadata.generation`; until then the spec's release and steps are not the canary's). A deleted
Rollout, or one a relist no longer holds, gets an `ended` snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry, Counter

from agents.deadletter import DeadLetters, Headers, deadletter_counter
from agents.health import Heartbeat, Readiness, ReadyGauge, serve_health
from agents.kafka_admin import ensure_topics
from agents.kubeclient import kube_api_client
from agents.rolloutapi import read_rollout
from agents.settings import Settings
from agents.unreadable import counting, getmany_skipping, skipped_counter
from streams.events import DecodeError, RolloutState, encode_rollout_state, env_key
from streams.rollouts import (
    GROUP,
    PLURAL,
    VERSION,
    Change,
    Rollout,
    SnapshotDedupe,
    decode_exporter_event,
    ended_state,
    resource_version,
    rollout_state,
    spec_observed,
)

log = logging.getLogger("canarywatch.bridge")

GONE = 410


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    namespaces: tuple[str, ...] = ()  # empty: every namespace, one cluster-wide watch
    events_topic: str | None = None  # kubernetes-event-exporter's topic; None: not read
    watch: bool = True  # False: only Rollouts named by exporter events are read
    watch_timeout_s: int = 300  # the server ends each watch after this; it is resumed
    list_page: int = 500
    backoff_s: float = 0.2  # after an error, doubling up to backoff_max_s
    backoff_max_s: float = 5.0


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.skipped_records = skipped_counter(registry)
        self.snapshots = Counter(
            "canarywatch_bridge_snapshots",
            "Rollouts read, by source (list, watch, event) and outcome "
            "(published, unchanged, older, incomplete, unreconciled, ended).",
            ["source", "outcome"],
            registry=registry,
        )
        self.lists = Counter(
            "canarywatch_bridge_lists",
            "Full lists of Rollouts (start, 410 Gone).",
            registry=registry,
        )
        self.watch_restarts = Counter(
            "canarywatch_bridge_watch_restarts",
            "Watches restarted, by reason (closed, expired, error).",
            ["reason"],
            registry=registry,
        )
        self.exporter_events = Counter(
            "canarywatch_bridge_exporter_events",
            "Messages from the event-exporter topic, by outcome (read, ignored, invalid, error).",
            ["outcome"],
            registry=registry,
        )
        self.readiness = Readiness("bridge")
        self.ready = ReadyGauge(
            self.readiness,
            registry,
            "canarywatch_bridge_ready",
            "1 while the bridge is ready: every watch has listed (see /readyz).",
        )
        for reason in ("closed", "expired", "error"):  # at 0, for increase() in alerts
            self.watch_restarts.labels(reason)
        self.deadletters = deadletter_counter(registry)


class RolloutReader:
    """List, watch and get Rollouts with the (synchronous) kubernetes client."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        group: str = GROUP,
        page: int = 500,
        timeout: tuple[float, float] = (5, 30),
    ) -> None:
        self._objects = k8s.CustomObjectsApi(api)
        self._group = group
        self._page = page
        self._timeout = timeout
        self._responses: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()

    def list(self, namespace: str | None) -> tuple[list[Rollout], str]:
        """Every Rollout (of `namespace`, or all), page by page; and the list's resourceVersion."""
        items: list[Rollout] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self._page, "_request_timeout": self._timeout}
            if token:
                kwargs["_continue"] = token
            if namespace is None:
                page = self._objects.list_cluster_custom_object(
                    self._group, VERSION, PLURAL, **kwargs
                )
            else:
                page = self._objects.list_namespaced_custom_object(
                    self._group, VERSION, namespace, PLURAL, **kwargs
                )
            body = cast(dict[str, Any], page)
            items.extend(cast(list[Rollout], body.get("items") or []))
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def get(self, namespace: str, name: str) -> Rollout | None:
        return read_rollout(self._objects, self._group, namespace, name, self._timeout)

    def watch(
        self, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        """Raw watch events from `version` on, until the server ends the watch after
        `timeout_s`. An ERROR event raises ApiException with its code (410: relist)."""
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            "_request_timeout": (self._timeout[0], timeout_s + 30),
        }
        if namespace is None:
            raw = self._objects.list_cluster_custom_object(self._group, VERSION, PLURAL, **kwargs)
        else:
            raw = self._objects.list_namespaced_custom_object(
                self._group, VERSION, namespace, PLURAL, **kwargs
            )
        response = cast(urllib3.BaseHTTPResponse, raw)
        with self._lock:
            self._responses.add(response)
        try:
            for line in _lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise k8s.ApiException(
                        status=int(status.get("code") or 500),
                        reason=f"{status.get('reason')}: {status.get('message')}",
                    )
                yield event
        finally:
            with self._lock:
                self._responses.discard(response)
            response.release_conn()

    def stop(self) -> None:
        """End every watch in progress (from any thread)."""
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The non-empty lines of a streamed (chunked) response, each as soon as it is complete."""
    buffer = b""
    for chunk in response.stream(None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


class _Stopped(Exception):
    pass


class Bridge:
    def __init__(
        self,
        settings: Settings,
        reader: RolloutReader,
        metrics: BridgeMetrics,
        options: BridgeOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.metrics = metrics
        self._on_skip = counting(metrics.skipped_records)
        self.options = options or BridgeOptions()
        self._clock = clock
        self._dedupe = SnapshotDedupe()
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._stopping = threading.Event()
        self._listed: set[str | None] = set()
        self._exporter_ready = False

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-bridge"

    def _deadletters(self) -> DeadLetters:
        producer = self._producer
        assert producer is not None
        topic = self.settings.topics.deadletter

        async def send(key: bytes, value: bytes, headers: Headers) -> object:
            return await producer.send_and_wait(topic, key=key, value=value, headers=headers)

        return DeadLetters(send, self.metrics.deadletters, sizes=self.settings.sizes)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until `stop` is set or the task is cancelled."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            **self.settings.kafka.client_options(),
            acks="all",
            max_request_size=self.settings.producer_max_request_size,
        )
        await producer.start()
        self._producer = producer
        self._stopping.clear()
        loop = asyncio.get_running_loop()
        scopes: Sequence[str | None] = (
            (self.options.namespaces or (None,)) if self.options.watch else ()
        )
        threads = [
            threading.Thread(
                target=self._watch_scope,
                args=(scope, loop),
                name=f"bridge-watch-{scope or 'all'}",
                daemon=True,
            )
            for scope in scopes
        ]
        tasks: list[asyncio.Task[None]] = []
        if self.options.events_topic:
            tasks.append(asyncio.create_task(self._read_exporter_events(self.options.events_topic)))
        self._listed.clear()
        self._exporter_ready = False
        self._update_ready()
        until = stop if stop is not None else asyncio.Event()  # never set: until cancelled
        waiter = asyncio.create_task(_wait(until))
        try:
            for thread in threads:
                thread.start()
            await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    task.result()  # surface a failure of the exporter-event reader
        finally:
            self.metrics.ready.set(0)
            self._stopping.set()
            self.reader.stop()
            for task in [*tasks, waiter]:
                task.cancel()
            await asyncio.gather(*tasks, waiter, return_exceptions=True)
            for thread in threads:
                await asyncio.to_thread(thread.join, 10.0)
            await producer.stop()
            self._producer = None

    # -- list + watch, in a thread per scope -------------------------------------------------

    def _watch_scope(self, namespace: str | None, loop: asyncio.AbstractEventLoop) -> None:
        o = self.options
        version = ""
        delay = o.backoff_s
        while not self._stopping.is_set():
            try:
                if not version:
                    items, listed_at = self.reader.list(namespace)
                    self.metrics.lists.inc()
                    self._submit(loop, self._apply_list(items, namespace))
                    version = listed_at  # only once all of the list is published
                version = self._follow(namespace, version, loop)
                delay = o.backoff_s
            except _Stopped:
                return
            except k8s.ApiException as exc:
                if exc.status == GONE:
                    log.info("watch %s: %s; relisting", namespace or "*", exc.reason)
                    self.metrics.watch_restarts.labels("expired").inc()
                    version = ""
                    continue
                delay = self._pause(namespace, exc, delay)
            except Exception as exc:  # connection lost, Kafka down, ...: resume from version
                delay = self._pause(namespace, exc, delay)

    def _follow(self, namespace: str | None, version: str, loop: asyncio.AbstractEventLoop) -> str:
        """Apply watch events until the server ends the watch; return the last resourceVersion."""
        for event in self.reader.watch(namespace, version, self.options.watch_timeout_s):
            if self._stopping.is_set():
                raise _Stopped
            kind = event.get("type")
            obj = cast(Rollout, event.get("object") or {})
            if kind in ("ADDED", "MODIFIED"):
                self._submit(loop, self._offer(obj, "watch"))
            elif kind == "DELETED":
                self._submit(loop, self._end(obj))
            version = resource_version(obj) or version  # BOOKMARK carries only this
        if self._stopping.is_set():
            raise _Stopped
        self.metrics.watch_restarts.labels("closed").inc()
        return version

    def _pause(self, namespace: str | None, error: Exception, delay: float) -> float:
        if self._stopping.is_set():
            return delay
        log.warning("watch %s: %s; again in %.1fs", namespace or "*", error, delay)
        self.metrics.watch_restarts.labels("error").inc()
        self._stopping.wait(delay)
        return min(delay * 2, self.options.backoff_max_s)

    def _submit(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the event loop and wait for it (so the watch never outruns Kafka)."""
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        while True:
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                if self._stopping.is_set():
                    future.cancel()
                    raise _Stopped from None

    async def _apply_list(self, items: list[Rollout], namespace: str | None) -> None:
        keys = []
        for obj in items:
            meta = obj.get("metadata", {})
            keys.append(env_key(meta.get("namespace", ""), meta.get("name", "")))
        async with self._lock:
            # All at once: a fleet's list is tens of thousands of Rollouts, and waiting for each
            # send's acknowledgement in turn took ~2 ms a Rollout.
            await self._publish([self._judge(obj, "list") for obj in items])
            # Deleted while no watch was open (or during a 410 gap): they end here.
            gone = self._dedupe.retain(keys, namespace)
            await self._publish_ended(gone, "list")
        self._listed.add(namespace)
        self._update_ready()

    def _update_ready(self) -> None:
        """Ready: every watch has listed, and the exporter-event consumer (if any) is
        positioned, so whatever is published from now on will be read."""
        o = self.options
        listed = not o.watch or set(o.namespaces or (None,)) <= self._listed
        exporter = not o.events_topic or self._exporter_ready
        self.metrics.ready.set(1 if listed and exporter else 0)

    async def _end(self, obj: Rollout) -> None:
        """A DELETED watch event: publish the Rollout's `ended` snapshot."""
        meta = obj.get("metadata", {})
        key = env_key(meta.get("namespace", ""), meta.get("name", ""))
        async with self._lock:
            last = self._dedupe.forget(key)
            if last is None:  # never published; its final state, if it has one
                last = rollout_state(obj, self._clock(), self.settings.cluster)
            await self._publish_ended([last] if last is not None else [], "watch")

    async def _publish_ended(self, states: list[RolloutState], source: str) -> None:
        assert self._producer is not None
        now = self._clock()
        ended = [ended_state(state, now) for state in states]
        deliveries = [
            await self._producer.send(
                self.settings.topics.rollouts,
                key=state.namespace.encode(),
                value=encode_rollout_state(state),
            )
            for state in ended
        ]
        await asyncio.gather(*deliveries)
        for state in ended:
            log.info("%s: ended (canary %s)", state.env, state.current_pod_hash)
            self.metrics.snapshots.labels(source, "ended").inc()

    # -- the sink ------------------------------------------------------------------------------

    async def _offer(self, obj: Rollout, source: str) -> None:
        async with self._lock:
            await self._publish([self._judge(obj, source)])

    def _judge(self, obj: Rollout, source: str) -> _Offer | None:
        """The Rollout's snapshot and whether it is new, or None if it has no usable state."""
        state = rollout_state(obj, self._clock(), self.settings.cluster)
        if state is None:
            self.metrics.snapshots.labels(source, "incomplete").inc()
            return None
        if not spec_observed(obj):
            # The controller reconciles it within moments, and that change comes as an event.
            self.metrics.snapshots.labels(source, "unreconciled").inc()
            return None
        version = resource_version(obj)
        return _Offer(state, version, self._dedupe.check(state, version), source)

    async def _publish(self, offers: list[_Offer | None]) -> None:
        """Send the new snapshots, then, once Kafka has them all, remember what was sent."""
        assert self._producer is not None
        deliveries = [
            await self._producer.send(
                self.settings.topics.rollouts,
                key=o.state.namespace.encode(),  # co-partitioned with request logs
                value=encode_rollout_state(o.state),
            )
            for o in offers
            if o is not None and o.change is Change.NEW
        ]
        await asyncio.gather(*deliveries)
        for o in offers:
            if o is None:
                continue
            state = o.state
            if o.change is Change.NEW:
                log.info(
                    "%s: %s canary %s stable %s step %s weight %s%s",
                    state.env,
                    state.phase or "?",
                    state.current_pod_hash,
                    state.stable_hash or "-",
                    state.step_index,
                    state.canary_weight,
                    " aborted" if state.aborted else "",
                )
            if o.change not in (Change.OLDER, Change.UNRECONCILED):
                self._dedupe.record(state, o.version)
            self.metrics.snapshots.labels(o.source, o.change.value).inc()

    # -- kubernetes-event-exporter ---------------------------------------------------------

    async def _read_exporter_events(self, topic: str) -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.bootstrap,
            **self.settings.kafka.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",  # the watch and a GET give the current state anyway
        )
        await consumer.start()
        try:
            while True:
                batch = await getmany_skipping(
                    consumer, self._on_skip, timeout_ms=200, max_records=500
                )
                for tp, records in batch.items():
                    for record in records:
                        await self._on_exporter_event(record.value or b"", record.offset, tp)
                    await consumer.commit({tp: records[-1].offset + 1})
                if not self._exporter_ready and consumer.assignment():
                    for tp in consumer.assignment():
                        await consumer.position(tp)  # resolves "latest" now
                    self._exporter_ready = True
                    self._update_ready()
        finally:
            await consumer.stop()

    async def _on_exporter_event(
        self, raw: bytes, offset: int = -1, source: TopicPartition | None = None
    ) -> None:
        try:
            ref = decode_exporter_event(raw)
        except DecodeError as exc:
            self.metrics.exporter_events.labels("invalid").inc()
            if source is not None:
                await self._deadletters().publish(
                    source.topic, source.partition, [(offset, raw, exc)]
                )
            return
        if ref is None:
            self.metrics.exporter_events.labels("ignored").inc()
            return
        try:
            obj = await asyncio.to_thread(self.reader.get, ref.namespace, ref.name)
        except (k8s.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            # The watch, when on, delivers the change anyway; nothing is retried here.
            self.metrics.exporter_events.labels("error").inc()
            log.warning("%s: could not read the Rollout after an Event: %s", ref.env, exc)
            return
        self.metrics.exporter_events.labels("read").inc()
        if obj is not None:
            await self._offer(obj, "event")


@dataclass(frozen=True, slots=True)
class _Offer:
    """A Rollout's snapshot, judged against what was published before."""

    state: RolloutState
    version: str
    change: Change
    source: str  # list, watch or event


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


def run_bridge(settings: Settings, options: BridgeOptions, *, kubeconfig: str | None = None) -> int:
    """`canarywatch bridge`: metrics on `settings.metrics_port`, until SIGINT/SIGTERM."""
    api_client = kube_api_client(kubeconfig)  # first: a bad kubeconfig serves nothing
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    heartbeat = Heartbeat()
    # /metrics, /healthz and /readyz on one port (deploy/ probes use the last two).
    serve_health(settings.metrics_port, registry, metrics.readiness, heartbeat)
    bridge = Bridge(
        settings,
        RolloutReader(api_client, page=options.list_page),
        metrics,
        options,
    )
    log.info(
        "bridge: rollouts of %s -> %s%s",
        ", ".join(options.namespaces) or "every namespace",
        settings.topics.rollouts,
        f"; exporter events from {options.events_topic}" if options.events_topic else "",
    )

    async def main() -> None:
        await ensure_topics(
            settings.bootstrap,
            {settings.topics.rollouts: settings.partitions, settings.topics.deadletter: 1},
            replication_factor=settings.replication_factor,
            auth=settings.kafka,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        pulse = loop.create_task(heartbeat.run())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await bridge.run(stop)
        pulse.cancel()

    try:
        asyncio.run(main())
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    return 0
