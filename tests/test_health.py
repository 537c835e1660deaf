"""/healthz, /readyz and /metrics of agents.health, over real HTTP on a loopback port."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agents.health import Heartbeat, Readiness, serve_health
from agents.processes import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_freshness_condition_must_be_renewed() -> None:
    clock = FakeClock()
    readiness = Readiness("worker", clock=clock)
    readiness.require("fetch", within_s=5.0)
    assert readiness.check() == (False, {"fetch": "not yet"})
    readiness.mark("fetch")
    assert readiness.check() == (True, {})
    clock.now += 4.9
    assert readiness.check()[0]
    clock.now += 0.2
    ready, failing = readiness.check()
    assert not ready and failing["fetch"] == "last success 5.1 s ago"
    readiness.mark("fetch")
    assert readiness.check()[0]


def test_a_failure_is_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    readiness = Readiness("worker", clock=clock)
    readiness.mark("broker")
    with caplog.at_level(logging.WARNING, logger="canarywatch.health"):
        for _ in range(100):
            readiness.fail("broker", "connection refused")
        clock.now += 12.0
        readiness.mark("broker")
        readiness.mark("broker")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "worker: not ready: broker: connection refused",
        "worker: broker recovered after 12.0 s",
    ]


def test_endpoints_answer_over_http() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    readiness = Readiness("worker", clock=clock)
    readiness.ready_gauge(registry, "canarywatch_test_ready", "1 when ready.")
    readiness.require("partitions")
    heartbeat = Heartbeat(clock=clock)
    port = free_port()
    server = serve_health(port, registry, readiness, heartbeat, addr="127.0.0.1")
    try:
        assert get(port, "/healthz")[0] == 200
        status, body = get(port, "/readyz")
        assert status == 503
        assert orjson.loads(body) == {"ready": False, "failing": {"partitions": "not yet"}}
        assert b"canarywatch_test_ready 0.0" in get(port, "/metrics")[1]
        readiness.mark("partitions")
        assert get(port, "/readyz") == (200, b'{"ready":true,"failing":{}}')
        assert b"canarywatch_test_ready 1.0" in get(port, "/metrics")[1]
        clock.now += 31.0  # the loop has not beaten for 31 s
        assert get(port, "/healthz")[0] == 503
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            serve_health(port, CollectorRegistry(), Readiness("worker"), addr="127.0.0.1")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err


def test_a_probe_is_read_when_checked_and_its_episodes_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    readiness = Readiness("worker", clock=clock)
    problem: list[str | None] = [None]
    readiness.probe("fetch", lambda: problem[0])
    assert readiness.check() == (True, {})
    with caplog.at_level(logging.WARNING, logger="canarywatch.health"):
        problem[0] = "no fetch answered for 6 s"
        for _ in range(5):
            assert readiness.check() == (False, {"fetch": "no fetch answered for 6 s"})
        clock.now += 30.0
        problem[0] = None
        assert readiness.check() == (True, {})
    assert [r.getMessage() for r in caplog.records] == [
        "worker: not ready: fetch: no fetch answered for 6 s",
        "worker: fetch recovered after 30.0 s",
    ]
