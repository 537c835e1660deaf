"""Health that tells the truth: `/healthz`, `/readyz` and `/metrics` on one port, per component.

- `/healthz`: the process answers and its event loop has beaten within `loop_stall_s`
  (a `Heartbeat` task renews it); cheap, no metrics rendered.
- `/readyz`: every condition the component declared holds. A condition is either a state
  (`mark`/`fail`: partitions assigned, evidence restored) or a freshness (`require(..., within_s)`
  renewed by `mark` on every success: a fetch from the broker). A condition that flips is logged
  once when it fails and once when it recovers, with how long the episode lasted; 503 with the
  reasons while not ready.
- `/metrics`: prometheus-client's exposition of the registry, with `canarywatch_<component>ready`
  computed from the same conditions at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger("canarywatch.health")

Clock = Callable[[], float]


@dataclass(slots=True)
class _Condition:
    within_s: float | None  # None: a state; else it must be renewed this often
    met_at: float | None = None  # last time it was marked, None when never or failed
    why: str = "not yet"
    failing_since: float | None = None  # start of the failure episode, after it once held


class Readiness:
    """Named conditions a component needs to be ready; thread-safe (read by the HTTP thread)."""

    def __init__(self, component: str, *, clock: Clock = time.monotonic) -> None:
        self.component = component
        self._clock = clock
        self._lock = threading.Lock()
        self._conditions: dict[str, _Condition] = {}
        self._probes: dict[str, Callable[[], str | None]] = {}
        self._probe_failing_since: dict[str, float] = {}
        self._probe_held: set[str] = set()

    def require(self, name: str, within_s: float | None = None) -> None:
        """Declare a condition; it does not hold until `mark`ed."""
        with self._lock:
            self._conditions.setdefault(name, _Condition(within_s))

    def mark(self, name: str) -> None:
        """The condition holds now (a freshness condition: renewed now)."""
        now = self._clock()
        with self._lock:
            condition = self._conditions.setdefault(name, _Condition(None))
            if condition.failing_since is not None:
                log.warning(
                    "%s: %s recovered after %.1f s",
                    self.component,
                    name,
                    now - condition.failing_since,
                )
            condition.met_at = now
            condition.failing_since = None
            condition.why = ""

    def fail(self, name: str, why: str) -> None:
        """The condition does not hold; logged once per episode."""
        now = self._clock()
        with self._lock:
            condition = self._conditions.setdefault(name, _Condition(None))
            if condition.failing_since is None and condition.met_at is not None:
                log.warning("%s: not ready: %s: %s", self.component, name, why)
                condition.failing_since = now
            condition.met_at = None
            condition.why = why

    def probe(self, name: str, problem: Callable[[], str | None]) -> None:
        """A condition computed when checked: `problem()` says why it fails, None when it holds.
        Called from the HTTP thread: it must only read."""
        with self._lock:
            self._probes[name] = problem

    def check(self) -> tuple[bool, dict[str, str]]:
        """(ready, failing conditions with why)."""
        now = self._clock()
        failing: dict[str, str] = {}
        for name, problem in list(self._probes.items()):
            try:
                why = problem()
            except Exception as error:  # a probe that breaks says so, it does not crash a scrape
                why = f"probe failed: {error}"
            self._episode(name, why, now)
            if why is not None:
                failing[name] = why
        with self._lock:
            for name, condition in self._conditions.items():
                if condition.met_at is None:
                    failing[name] = condition.why
                elif condition.within_s is not None and now - condition.met_at > condition.within_s:
                    failing[name] = f"last success {now - condition.met_at:.1f} s ago"
                    if condition.failing_since is None:  # a stale success starts an episode
                        condition.failing_since = condition.met_at + condition.within_s
                        log.warning("%s: not ready: %s: %s", self.component, name, failing[name])
        return not failing, failing

    def _episode(self, name: str, why: str | None, now: float) -> None:
        """Log a probe's failure once when it starts and once when it ends (not before it
        first held: starting up is not an episode)."""
        with self._lock:
            since = self._probe_failing_since.get(name)
            if why is None:
                self._probe_held.add(name)
            if why is not None and since is None and name in self._probe_held:
                self._probe_failing_since[name] = now
                log.warning("%s: not ready: %s: %s", self.component, name, why)
            elif why is None and since is not None:
                del self._probe_failing_since[name]
                log.warning("%s: %s recovered after %.1f s", self.component, name, now - since)

    def ready_gauge(self, registry: CollectorRegistry, name: str, documentation: str) -> Gauge:
        """A gauge computed from the conditions at scrape time."""
        gauge = Gauge(name, documentation, registry=registry)
        gauge.set_function(lambda: 1.0 if self.check()[0] else 0.0)
        return gauge


class ReadyGauge:
    """`canarywatch_<component>ready`: 1 when every readiness condition holds.

    `set(1)` / `set(0)` mark the component's own `started` condition (what the gauge alone meant
    before readiness had conditions), so a component sets it as it did a plain Gauge.
    """

    def __init__(
        self,
        readiness: Readiness,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        *,
        condition: str = "started",
    ) -> None:
        self.readiness = readiness
        self._condition = condition
        readiness.require(condition)
        readiness.ready_gauge(registry, name, documentation)

    def set(self, value: float) -> None:
        if value:
            self.readiness.mark(self._condition)
        else:
            self.readiness.fail(self._condition, "stopped")


class Heartbeat:
    """The event loop's pulse: a task marks `beat` every `every_s`; `/healthz` reads its age."""

    def __init__(self, *, every_s: float = 1.0, clock: Clock = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self.beat_at = clock()

    async def run(self) -> None:
        while True:
            self.beat_at = self._clock()
            await asyncio.sleep(self.every_s)  # the pulse's own period

    def age(self) -> float:
        return self._clock() - self.beat_at


def _json(status: str, body: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
    payload = orjson.dumps(body)
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


def health_app(
    registry: CollectorRegistry,
    readiness: Readiness,
    heartbeat: Heartbeat | None = None,
    *,
    loop_stall_s: float = 30.0,
    metrics: Callable[..., Iterable[bytes]] | None = None,
) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: `/healthz`, `/readyz`, everything else is `/metrics` (`metrics`, a WSGI
    app; prometheus-client's for the registry by default)."""
    metrics = metrics or make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            age = heartbeat.age() if heartbeat is not None else 0.0
            if age > loop_stall_s:
                return _json(
                    "503 Service Unavailable", {"alive": False, "loop_stall_s": age}, start
                )
            return _json("200 OK", {"alive": True}, start)
        if path == "/readyz":
            ready, failing = readiness.check()
            status = "200 OK" if ready else "503 Service Unavailable"
            return _json(status, {"ready": ready, "failing": failing}, start)
        result: Iterable[bytes] = metrics(environ, start)
        return result

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


def serve_health(
    port: int,
    registry: CollectorRegistry,
    readiness: Readiness,
    heartbeat: Heartbeat | None = None,
    *,
    addr: str = "0.0.0.0",
    metrics: Callable[..., Iterable[bytes]] | None = None,
) -> ThreadingWSGIServer:
    """Serve in a daemon thread; a port in use is one clear line and exit code 2."""
    try:
        server = make_server(
            addr,
            port,
            health_app(registry, readiness, heartbeat, metrics=metrics),
            ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as error:
        print(
            f"canarywatch {readiness.component}: cannot listen on {addr}:{port} "
            f"(CANARYWATCH_METRICS_PORT): {error.strerror or error}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
