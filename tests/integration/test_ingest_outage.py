"""The broker goes away and comes back: the worker keeps running and counting, and its
readiness says so while the broker is away."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.localkafka import LocalKafka, free_ports
from agents.processes import poll_until
from agents.settings import Settings
from tests.integration.ingest_support import (
    counted,
    create_topics,
    line,
    new_settings,
    producer,
    put_canary,
    running,
    wait_metric,
)

pytestmark = pytest.mark.kafka


async def send(settings: Settings, first: int, n: int) -> None:
    p = producer(settings)
    await p.start()
    try:
        for i in range(first, first + n):
            await p.send_and_wait(settings.topics.requests, key=b"shop", value=line(i))
    finally:
        await p.stop()


def readyz(port: int) -> int:
    """HTTP status of the worker's /readyz (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


async def test_the_worker_survives_a_broker_outage(tmp_path: Path) -> None:
    port, controller = free_ports(2)
    kafka = LocalKafka(tmp_path / "kafka", port, controller)
    kafka.start(timeout=120)
    try:
        settings = new_settings(kafka.bootstrap, tmp_path, "outage", partitions=1)
        await create_topics(settings)
        async with running(settings, tmp_path / "worker.log") as worker:
            await put_canary(settings)
            await send(settings, 0, 5)
            await wait_metric(
                settings.metrics_port, "canarywatch_request_lines_total", 5.0, outcome="counted"
            )
            port = settings.metrics_port
            assert readyz(port) == 200
            kafka.stop()
            stopped = time.monotonic()
            await poll_until(lambda: readyz(port) == 503, 30, "/readyz to fail")
            flip_s = time.monotonic() - stopped
            print(f"readiness flipped {flip_s:.1f} s after the broker stopped")
            assert flip_s <= 10.0
            kafka.start(timeout=120)  # the broker was away for several seconds
            await poll_until(lambda: readyz(port) == 200, 120, "/readyz to recover")
            await send(settings, 5, 5)
            await wait_metric(
                settings.metrics_port,
                "canarywatch_request_lines_total",
                10.0,
                within_s=120,
                outcome="counted",
            )
            assert counted(settings.metrics_port) == 10.0
            assert worker.alive
            log = (tmp_path / "worker.log").read_text(errors="replace")
            # aiokafka's own complaints, once per 10 s each, not once per reconnect attempt.
            assert log.count("Unable connect to node") <= 3, log[-3000:]
            # One line when readiness failed, one when it came back: not one per probe.
            assert log.count("not ready: fetch") == 1, log[-3000:]
            assert log.count("fetch recovered after") == 1, log[-3000:]
    finally:
        kafka.stop()
