"""Dead-letter topic: a refused message is kept, byte for byte, with why and where it came from.

The payload is the original bytes; the reason travels in Kafka headers (as Kafka Connect does),
so a tool can replay the message after the cause is fixed. A payload larger than a dead-letter
record may hold keeps a prefix, with `canarywatch.truncated`, `.original-size` and `.sha256`
headers (streams/sizes.py).

Bounded: the records of one call are sent together and their deliveries awaited together; a
token bucket per source topic limits the records a second, and what it holds back is counted
and reported in one summary record per interval (reason `suppressed`). Every refused item is
counted in `canarywatch_deadletter_messages_total` whether or not it got a record of its own;
`canarywatch_deadletter_suppressed_total` counts those that did not. Logging is one line per
interval and source topic.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from streams.events import DecodeError
from streams.sizes import SizePolicy

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# Sends one record. It may complete once delivered, or once queued and return an awaitable of
# the delivery: those are awaited together at the end of `publish`.
SendFn = Callable[[bytes, bytes, Headers], Awaitable[object]]
Refused = tuple[int, bytes, DecodeError]  # (source offset, payload, why)
# (source offset, the whole message, reason -> bad lines of it without records of their own)
Flooded = tuple[int, bytes, Mapping[str, int]]

SUPPRESSED = "suppressed"
BAD_LINES = "bad_lines"


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
        "Refused messages and lines, by source topic and reason (each counted, whether it got "
        "a dead-letter record of its own or was summarised).",
        ["topic", "reason"],
        registry=registry,
    )


def suppressed_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "canarywatch_deadletter_suppressed",
        "Refused items without a dead-letter record of their own (rate limit, or bad lines "
        "past the per-message cap), by source topic and reason.",
        ["topic", "reason"],
        registry=registry,
    )


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    rate_per_s: float = 100.0  # records a second per source topic
    burst: int = 500
    summary_every_s: float = 10.0  # also the logging interval


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float

    def take(self, now: float, limits: DeadLetterLimits) -> bool:
        self.tokens = min(float(limits.burst), self.tokens + (now - self.at) * limits.rate_per_s)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Held:
    """What the bucket held back from one source topic since the last summary."""

    count: int = 0
    reasons: Tally[str] = field(default_factory=Tally)
    first: str = ""
    last: str = ""
    since: float = 0.0

    def add(self, reason: str, source: str, n: int, now: float) -> None:
        if not self.count:
            self.first, self.since = source, now
        self.count += n
        self.reasons[reason] += n
        self.last = source


@dataclass(slots=True)
class _LogWindow:
    records: int = 0
    suppressed: int = 0
    reasons: Tally[str] = field(default_factory=Tally)
    logged_at: float = float("-inf")


def _reasons(tally: Mapping[str, int]) -> bytes:
    return ",".join(f"{r}={n}" for r, n in sorted(tally.items())).encode()


class DeadLetters:
    """Sends refused messages and counts them."""

    def __init__(
        self,
        send: SendFn,
        counter: Counter,
        *,
        suppressed: Counter | None = None,
        sizes: SizePolicy | None = None,
        limits: DeadLetterLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._counter = counter
        self._suppressed = suppressed
        self.sizes = sizes or SizePolicy()
        self.limits = limits or DeadLetterLimits()
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._held: dict[str, _Held] = {}
        self._log: dict[str, _LogWindow] = {}

    async def publish(
        self,
        topic: str,
        partition: int,
        refused: Sequence[Refused],
        flooded: Sequence[Flooded] = (),
    ) -> None:
        """Dead-letter `refused` items (and `flooded` messages, each one record for its bad
        lines that have none of their own) from `topic`/`partition`; returns once delivered."""
        now = self._clock()
        deliveries: list[Awaitable[object]] = []
        window = self._log.setdefault(topic, _LogWindow())
        for offset, payload, error in refused:
            self._counter.labels(topic, error.reason).inc()
            headers = deadletter_headers(error, topic, partition, offset, len(payload))
            await self._admit(
                topic, error.reason, offset, partition, payload, headers, now, deliveries, window
            )
        for offset, payload, reasons in flooded:
            total = sum(reasons.values())
            for reason, n in reasons.items():
                self._counter.labels(topic, reason).inc(n)
                if self._suppressed is not None:
                    self._suppressed.labels(topic, reason).inc(n)
            error = DecodeError(BAD_LINES, f"{total} more bad lines: {_reasons(reasons).decode()}")
            headers = deadletter_headers(error, topic, partition, offset, len(payload))
            headers.append(("canarywatch.bad-lines", str(total).encode()))
            await self._admit(
                topic, BAD_LINES, offset, partition, payload, headers, now, deliveries, window
            )
        await self._summarise(topic, now, deliveries, force=False)
        await self._await(deliveries)
        self._maybe_log(topic, now, window)

    async def flush(self, *, force: bool = False) -> None:
        """Send the summaries that are due (all of them with `force`)."""
        now = self._clock()
        deliveries: list[Awaitable[object]] = []
        for topic in list(self._held):
            await self._summarise(topic, now, deliveries, force=force)
        await self._await(deliveries)
        for topic, window in self._log.items():
            self._maybe_log(topic, now, window, force=force)

    async def _admit(
        self,
        topic: str,
        reason: str,
        offset: int,
        partition: int,
        payload: bytes,
        headers: Headers,
        now: float,
        deliveries: list[Awaitable[object]],
        window: _LogWindow,
    ) -> None:
        bucket = self._buckets.setdefault(topic, _Bucket(float(self.limits.burst), now))
        window.reasons[reason] += 1
        if not bucket.take(now, self.limits):
            self._held.setdefault(topic, _Held()).add(reason, f"{partition}@{offset}", 1, now)
            if self._suppressed is not None and reason != BAD_LINES:
                self._suppressed.labels(topic, reason).inc()
            window.suppressed += 1
            return
        key = reason.encode()
        value, fitted = self.sizes.fit_deadletter(key, payload, headers)
        await self._queue(key, value, fitted, deliveries)
        window.records += 1

    async def _summarise(
        self, topic: str, now: float, deliveries: list[Awaitable[object]], *, force: bool
    ) -> None:
        held = self._held.get(topic)
        if held is None or not held.count:
            return
        if not force and now - held.since < self.limits.summary_every_s:
            return
        headers: Headers = [
            ("canarywatch.reason", SUPPRESSED.encode()),
            ("canarywatch.source-topic", topic.encode()),
            ("canarywatch.suppressed", str(held.count).encode()),
            ("canarywatch.reasons", _reasons(held.reasons)),
            ("canarywatch.first", held.first.encode()),
            ("canarywatch.last", held.last.encode()),
        ]
        del self._held[topic]
        await self._queue(SUPPRESSED.encode(), b"", headers, deliveries)

    async def _queue(
        self, key: bytes, value: bytes, headers: Headers, deliveries: list[Awaitable[object]]
    ) -> None:
        result = await self._send(key, value, headers)
        if inspect.isawaitable(result):
            deliveries.append(result)

    @staticmethod
    async def _await(deliveries: list[Awaitable[object]]) -> None:
        if deliveries:
            await asyncio.gather(*deliveries)

    def _maybe_log(
        self, topic: str, now: float, window: _LogWindow, *, force: bool = False
    ) -> None:
        if not window.reasons:
            return
        if not force and now - window.logged_at < self.limits.summary_every_s:
            return
        log.warning(
            "dead-lettered from %s: %d records, %d held back by the rate limit (%s)",
            topic,
            window.records,
            window.suppressed,
            _reasons(window.reasons).decode(),
        )
        window.records = window.suppressed = 0
        window.reasons.clear()
        window.logged_at = now
