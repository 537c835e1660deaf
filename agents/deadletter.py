"""Dead-letter topic: a refused message is kept, byte for byte, with why and where it came from.

The payload is the original bytes; the reason travels in Kafka headers (as Kafka Connect does),
so a tool can replay the message after the cause is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter

from streams.events import DecodeError

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
SendFn = Callable[[bytes, bytes, Headers], Awaitable[object]]


def deadletter_headers(
    error: DecodeError, topic: str, partition: int, offset: int, size: int
) -> Headers:
    return [
        ("canarywatch.reason", error.reason.encode()),
        ("canarywatch.detail", error.detail[:1024].encode()),
        ("canarywatch.source", f"{topic}/{partition}@{offset}".encode()),
        ("canarywatch.size", str(size).encode()),
    ]


def deadletter_counter(registry: CollectorRegistry) -> Counter:
    """The one dead-letter counter, the same in every component that dead-letters."""
    return Counter(
        "canarywatch_deadletter_messages",
        "Messages sent to the dead-letter topic, by source topic and reason.",
        ["topic", "reason"],
        registry=registry,
    )


class DeadLetters:
    """Sends refused messages and counts them; `send` must complete only once delivered."""

    def __init__(self, send: SendFn, counter: Counter) -> None:
        self._send = send
        self._counter = counter

    async def publish(
        self, topic: str, partition: int, refused: Sequence[tuple[int, bytes, DecodeError]]
    ) -> None:
        """`refused` holds (source offset, payload, error) triples."""
        for offset, payload, error in refused:
            headers = deadletter_headers(error, topic, partition, offset, len(payload))
            await self._send(error.reason.encode(), payload, headers)
            self._counter.labels(topic, error.reason).inc()
            log.warning(
                "dead-lettered a message from %s/%d@%d: %s", topic, partition, offset, error
            )
