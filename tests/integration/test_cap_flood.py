"""A flood of snapshots nobody sends traffic for fills max_canaries; a real bad canary behind it
is still admitted (by its lines) and aborted within a bound, also after a restart with the flood
in the rollout-state changelog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agents.processes import poll_until, scrape
from agents.settings import Settings
from streams.events import RequestLine, RolloutState, encode_request_line, encode_rollout_state
from streams.fleet import FleetLimits
from tests.integration.ingest_support import (
    create_topics,
    metric,
    new_settings,
    producer,
    running,
)

pytestmark = pytest.mark.kafka

CAP = 200
FLOOD = 3_000
ABORT_WITHIN_S = 60.0


async def send_flood(settings: Settings) -> None:
    p = producer(settings, linger_ms=20)
    await p.start()
    try:
        sent = []
        for i in range(FLOOD):
            state = RolloutState(
                f"flood-{i:05d}", "web", f"f{i:07x}", f"g{i:07x}", canary_weight=10
            )
            sent.append(
                await p.send(
                    settings.topics.rollouts,
                    key=state.env.encode(),
                    value=encode_rollout_state(state),
                )
            )
        for delivery in sent:
            await delivery
        real = RolloutState("shop", "web", "bad1", "good1", canary_weight=20)
        await p.send_and_wait(
            settings.topics.rollouts, key=real.env.encode(), value=encode_rollout_state(real)
        )
    finally:
        await p.stop()


async def abort_delay(settings: Settings) -> float:
    """Seconds from the first line of the bad canary to the worker's abort command."""
    port = settings.metrics_port
    before = aborts(port)
    p = producer(settings)
    await p.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < ABORT_WITHIN_S:
            batch = [
                encode_request_line(RequestLine(time.time(), "shop", f"web-{h}-0", h, s, 20.0))
                for h, s in (("bad1", 503), ("bad1", 200), ("good1", 200), ("good1", 200))
            ]
            await p.send_and_wait(settings.topics.requests, key=b"shop", value=b"\n".join(batch))
            now = aborts(port)
            if now > before:
                return time.monotonic() - started
            await asyncio.sleep(0.25)  # the traffic's own pace, not a synchronisation
    finally:
        await p.stop()
    raise AssertionError(f"no abort within {ABORT_WITHIN_S} s")


def aborts(port: int) -> float:
    samples = scrape(port, ("canarywatch_abort_commands_total",))
    return sum(v for (name, _), v in samples.items() if name == "canarywatch_abort_commands_total")


async def test_a_real_canary_behind_a_snapshot_flood_is_aborted(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = new_settings(
        kafka_bootstrap, tmp_path, "capflood", partitions=2, limits=FleetLimits(max_canaries=CAP)
    )
    await create_topics(settings)
    port = settings.metrics_port
    async with running(settings, tmp_path / "worker.log"):
        await send_flood(settings)
        await poll_until(
            lambda: metric(port, "canarywatch_canaries_refused_total") >= FLOOD - CAP + 1,
            120,
            "the flood and the real canary refused at the cap",
        )
        delay = await abort_delay(settings)
        print(f"cap flood: bad canary behind {FLOOD} snapshots aborted after {delay:.1f} s")
        assert metric(port, "canarywatch_canaries_evicted_total") >= 1
    # A restart reads the flood from the changelog again; the canary comes back by its lines.
    started = time.monotonic()
    async with running(settings, tmp_path / "worker2.log"):
        ready_s = time.monotonic() - started
        p = producer(settings)
        await p.start()
        try:
            await p.send_and_wait(
                settings.topics.requests,
                key=b"shop",
                value=encode_request_line(
                    RequestLine(time.time(), "shop", "web-bad1-0", "bad1", 200, 20.0)
                ),
            )
        finally:
            await p.stop()
        await poll_until(
            lambda: metric(port, "canarywatch_request_lines_total", outcome="counted") >= 1,
            30,
            "the real canary's line counted after the restart",
        )
        counted_s = time.monotonic() - started
        print(
            f"cap flood restart: ready after {ready_s:.1f} s, "
            f"real line counted after {counted_s:.1f} s"
        )
