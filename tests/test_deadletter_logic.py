"""Dead letters: sent together, rate-limited per source topic, summarised, counted exactly."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agents.deadletter import (
    DeadLetterLimits,
    DeadLetters,
    Headers,
    deadletter_counter,
    suppressed_counter,
)
from streams.events import DecodeError
from streams.sizes import SizePolicy

Sent = tuple[bytes, bytes, dict[str, bytes]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Producer:
    """Queues records and delivers them only when told: shows nothing waits record by record."""

    def __init__(self) -> None:
        self.queued: list[Sent] = []
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, key: bytes, value: bytes, headers: Headers) -> object:
        self.queued.append((key, value, dict(headers)))
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery

    def deliver(self) -> None:
        for delivery in self.deliveries:
            if not delivery.done():
                delivery.set_result(None)


def setup(limits: DeadLetterLimits) -> tuple[DeadLetters, Producer, Clock, CollectorRegistry]:
    registry = CollectorRegistry()
    producer, clock = Producer(), Clock()
    letters = DeadLetters(
        producer.send,
        deadletter_counter(registry),
        suppressed=suppressed_counter(registry),
        sizes=SizePolicy(4096),
        limits=limits,
        clock=clock,
    )
    return letters, producer, clock, registry


def value(registry: CollectorRegistry, name: str, reason: str) -> float:
    got = registry.get_sample_value(name, {"topic": "logs", "reason": reason})
    return got or 0.0


async def test_records_are_all_queued_before_any_delivery_is_awaited() -> None:
    letters, producer, _, registry = setup(DeadLetterLimits(rate_per_s=1000, burst=1000))
    why = DecodeError("not_json", "x")
    task = asyncio.ensure_future(
        letters.publish("logs", 0, [(o, b"bad%d" % o, why) for o in range(50)])
    )
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(producer.queued) == 50 and not task.done()  # all sent, none delivered yet
    producer.deliver()
    await task
    assert value(registry, "canarywatch_deadletter_messages_total", "not_json") == 50


async def test_past_the_rate_one_summary_per_interval_and_exact_counts() -> None:
    limits = DeadLetterLimits(rate_per_s=1.0, burst=5, summary_every_s=10.0)
    letters, producer, clock, registry = setup(limits)
    producer_deliver = producer.deliver
    why, other = DecodeError("not_json", "x"), DecodeError("missing_field", "y")

    async def publish(refused: list[tuple[int, bytes, DecodeError]]) -> None:
        task = asyncio.ensure_future(letters.publish("logs", 2, refused))
        while not task.done():
            producer_deliver()
            await asyncio.sleep(0)

    await publish([(o, b"a", why) for o in range(100, 190)] + [(190, b"b", other)])
    assert len(producer.queued) == 5  # the burst
    clock.now += 3.0  # three more tokens, and not yet a summary
    await publish([(o, b"a", why) for o in range(200, 210)])
    assert len(producer.queued) == 8
    clock.now += 8.0  # the interval is over: the next call sends the summary
    await publish([(300, b"a", why)])
    summaries = [r for r in producer.queued if r[0] == b"suppressed"]
    assert len(summaries) == 1
    headers = summaries[0][2]
    assert headers["canarywatch.reason"] == b"suppressed"
    assert headers["canarywatch.source-topic"] == b"logs"
    assert headers["canarywatch.suppressed"] == b"93"  # 86 + 1 + 7 + 0 (the last had a token)
    assert headers["canarywatch.reasons"] == b"missing_field=1,not_json=92"
    assert headers["canarywatch.first"] == b"2@105"
    assert headers["canarywatch.last"] == b"2@209"
    # Every refused item counted; the held back ones also as suppressed.
    assert value(registry, "canarywatch_deadletter_messages_total", "not_json") == 101
    assert value(registry, "canarywatch_deadletter_messages_total", "missing_field") == 1
    held = [
        value(registry, "canarywatch_deadletter_suppressed_total", r)
        for r in ("not_json", "missing_field")
    ]
    assert held == [92, 1]
    # A summary still held when stopping goes out with flush(force=True).
    clock.now += 0.1
    await publish([(o, b"a", why) for o in range(400, 420)])
    task = asyncio.ensure_future(letters.flush(force=True))
    while not task.done():
        producer_deliver()
        await asyncio.sleep(0)
    assert [r[2]["canarywatch.suppressed"] for r in producer.queued if r[0] == b"suppressed"] == [
        b"93",
        b"16",  # the bucket had refilled to its burst (5); one token went to offset 300
    ]


async def test_a_flooded_message_is_one_record_and_its_lines_are_counted() -> None:
    letters, producer, _, registry = setup(DeadLetterLimits())
    why = DecodeError("not_json", "x")
    message = b"x\n" * 1000
    task = asyncio.ensure_future(
        letters.publish("logs", 1, [(7, b"x", why)] * 3, [(7, message, {"not_json": 997})])
    )
    while not task.done():
        producer.deliver()
        await asyncio.sleep(0)
    assert len(producer.queued) == 4
    key, kept, headers = producer.queued[-1]
    assert key == b"bad_lines" and kept == message
    assert headers["canarywatch.bad-lines"] == b"997"
    assert headers["canarywatch.source"] == b"logs/1@7"
    assert value(registry, "canarywatch_deadletter_messages_total", "not_json") == 1000
    assert value(registry, "canarywatch_deadletter_suppressed_total", "not_json") == 997


async def test_a_payload_too_large_for_a_dead_letter_is_truncated() -> None:
    letters, producer, _, _ = setup(DeadLetterLimits())
    big = b"y" * 100_000  # the policy's record limit is 32 KiB
    task = asyncio.ensure_future(
        letters.publish("logs", 0, [(1, big, DecodeError("oversized", "too big"))])
    )
    while not task.done():
        producer.deliver()
        await asyncio.sleep(0)
    _, kept, headers = producer.queued[0]
    assert headers["canarywatch.truncated"] == b"1"
    assert headers["canarywatch.original-size"] == b"100000"
    assert big.startswith(kept) and 30_000 < len(kept) < 32768
