"""A flood of bad lines is dead-lettered in bounded time and memory, counted exactly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agents.processes import poll_until
from agents.settings import Settings
from tests.integration.ingest_support import (
    counted,
    create_topics,
    line,
    metric,
    new_settings,
    producer,
    put_canary,
    read_deadletters,
    rss_bytes,
    running,
)

pytestmark = pytest.mark.kafka

FLOOD_LINES = 524_000  # b"x\n" each: a 1 MB message
PER_MESSAGE = 20  # bad lines of one message with a dead letter of their own
BAD_MESSAGES = 2_000
MAX_DELAY_S = 5.0


async def good_line_delay(settings: Settings, before: bytes | None, expect: float) -> float:
    """Seconds from sending a good line (after `before`, if given) until it is counted."""
    p = producer(settings)
    await p.start()
    try:
        if before is not None:
            await p.send_and_wait(settings.topics.requests, key=b"shop", value=before)
        started = time.monotonic()
        await p.send_and_wait(settings.topics.requests, key=b"shop", value=line(0))
    finally:
        await p.stop()
    port = settings.metrics_port
    await poll_until(lambda: counted(port) == expect, 60, f"{expect} counted", every_s=0.01)
    return time.monotonic() - started


async def test_a_flood_of_bad_lines_does_not_stall_counting(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = new_settings(
        kafka_bootstrap,
        tmp_path,
        "flood",
        partitions=1,  # the good line is behind the flood
        deadletter_rate_per_s=10.0,
        deadletter_burst=50,
        deadletter_summary_every_s=1.0,
        deadletter_lines_per_message=PER_MESSAGE,
    )
    await create_topics(settings)
    topic, port = settings.topics.requests, settings.metrics_port
    flood = b"x\n" * FLOOD_LINES
    assert len(flood) <= settings.max_message_bytes
    async with running(settings, tmp_path / "worker.log") as worker:
        await put_canary(settings)
        baseline = await good_line_delay(settings, None, 1.0)
        rss_before = rss_bytes(worker.pid)
        delay = await good_line_delay(settings, flood, 2.0)
        rss_growth = rss_bytes(worker.pid) - rss_before
        print(
            f"flood: good line counted {delay:.3f}s after it was sent behind {FLOOD_LINES} bad "
            f"lines (alone: {baseline:.3f}s); worker RSS +{rss_growth / 2**20:.0f} MiB"
        )
        assert delay <= MAX_DELAY_S
        assert rss_growth < 256 << 20
        assert (
            metric(port, "canarywatch_deadletter_messages_total", topic=topic, reason="not_json")
            == FLOOD_LINES
        )
        assert (
            metric(port, "canarywatch_deadletter_suppressed_total", topic=topic, reason="not_json")
            == FLOOD_LINES - PER_MESSAGE
        )
        assert metric(port, "canarywatch_request_lines_total", outcome="invalid") == FLOOD_LINES

        # Past the rate limit: 2,000 bad messages, held back but counted, then summarised.
        p = producer(settings, linger_ms=5)
        await p.start()
        try:
            sent = [
                await p.send(topic, key=b"edge", value=b"GET /%d" % i) for i in range(BAD_MESSAGES)
            ]
            for delivery in sent:
                await delivery
        finally:
            await p.stop()
        delay_after_many = await good_line_delay(settings, None, 3.0)
        total = FLOOD_LINES + BAD_MESSAGES
        await poll_until(
            lambda: (
                metric(
                    port, "canarywatch_deadletter_messages_total", topic=topic, reason="not_json"
                )
                == total
            ),
            30,
            "every bad line counted",
        )
        suppressed = metric(
            port, "canarywatch_deadletter_suppressed_total", topic=topic, reason="not_json"
        )
        assert FLOOD_LINES - PER_MESSAGE < suppressed < total
        print(
            f"flood: a good line behind {BAD_MESSAGES} bad messages counted after "
            f"{delay_after_many:.3f}s"
        )

    # The worker stopped: its last summary went out. Records + summaries + tallies add up.
    letters = await read_deadletters(settings, 1, within_s=10)
    by_reason: dict[bytes, list[dict[str, bytes]]] = {}
    for letter in letters:
        headers = dict(letter.headers)
        by_reason.setdefault(headers["canarywatch.reason"], []).append(headers)
    own = len(by_reason[b"not_json"])
    summarised = sum(int(h["canarywatch.suppressed"]) for h in by_reason[b"suppressed"])
    assert [h["canarywatch.bad-lines"] for h in by_reason[b"bad_lines"]] == [
        str(FLOOD_LINES - PER_MESSAGE).encode()
    ]
    carrier = next(x for x in letters if dict(x.headers)["canarywatch.reason"] == b"bad_lines")
    assert carrier.value == flood  # the flooded message is kept whole
    assert own + summarised + (FLOOD_LINES - PER_MESSAGE) == total
    assert own < 50 + 10 * 30  # the burst and the rate, not one record a bad line
