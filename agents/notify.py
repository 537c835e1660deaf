"""`canarywatch notify`: aborts, release halts and platform verdicts to a webhook.

Follows the commands topic (each abort once, with its evidence), the verdicts topic (an env
whose verdict turns `platform`: stable fails too, so no abort is sent) and, when it exists,
`<prefix>.releases` (a release halted: see `on_release`; the topic is another component's, read
as JSON `{"release": ..., "halted": true, ...}`), all from their current ends. Each notice is
posted as Slack-compatible or plain JSON (streams/notify.py), with a link to `explain` under a
configurable base URL (the board's, `canarywatch ui`); retried with exponential backoff on
connection errors, 429 and 5xx; rate-limited by a token bucket (notices wait their turn in a
bounded queue; when it is full the oldest are dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from agents.settings import Settings
from streams.events import DecodeError, decode_abort_command
from streams.notify import (
    Notice,
    TokenBucket,
    abort_notice,
    backoff_s,
    payload,
    platform_notice,
    release_halt_notice,
)
from streams.promotion import VerdictSnapshot

log = logging.getLogger("canarywatch.notify")


@dataclass(frozen=True, slots=True)
class NotifyOptions:
    url: str
    format: str = "slack"  # slack | json
    explain_base_url: str = ""
    rate_per_s: float = 1.0
    burst: int = 5
    attempts: int = 6
    backoff_base_s: float = 0.5
    queue_max: int = 1000
    timeout_s: float = 10.0


class Webhook:
    """Posts notices in order, paced and retried."""

    def __init__(self, options: NotifyOptions, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.clock = clock
        self.bucket = TokenBucket(options.rate_per_s, options.burst)
        self.queue: deque[Notice] = deque()
        self.wake = asyncio.Event()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._seen: set[str] = set()

    def submit(self, notice: Notice) -> bool:
        """Queue a notice once per (kind, env, revision); False when it was a repeat."""
        if notice.key() in self._seen:
            return False
        self._seen.add(notice.key())
        if len(self.queue) >= self.options.queue_max:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(notice)
        self.wake.set()
        return True

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                wait = self.bucket.wait_s(self.clock())
                if wait > 0:
                    await asyncio.sleep(wait)  # the rate limit's pacing
                    continue
                notice = self.queue.popleft()
                if await self.post(session, notice):
                    self.sent += 1
                else:
                    self.failed += 1

    async def post(self, session: aiohttp.ClientSession, notice: Notice) -> bool:
        body = json.dumps(payload(notice, self.options.format)).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(1, self.options.attempts + 1):
            try:
                async with session.post(self.options.url, data=body, headers=headers) as reply:
                    if reply.status < 300:
                        return True
                    retry = reply.status == 429 or reply.status >= 500
                    log.warning(
                        "webhook %s for %s (attempt %d)", reply.status, notice.key(), attempt
                    )
                    if not retry:
                        return False
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("webhook: %s for %s (attempt %d)", exc, notice.key(), attempt)
            if attempt < self.options.attempts:
                await asyncio.sleep(backoff_s(attempt, self.options.backoff_base_s))
        return False


class Notifier:
    """The topics followed, the webhook fed."""

    def __init__(self, settings: Settings, options: NotifyOptions) -> None:
        self.settings = settings
        self.options = options
        self.webhook = Webhook(options)
        self.releases_topic = f"{settings.topics.prefix}.releases"
        self._tasks: list[asyncio.Task[None]] = []
        self.following = asyncio.Event()  # set once every topic's end is pinned

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            **self.settings.kafka.client_options(),
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="latest",
            metadata_max_age_ms=5000,
        )
        await consumer.start()
        topics = await consumer.topics()
        wanted = [self.settings.topics.commands, self.settings.topics.verdicts]
        if self.releases_topic in topics:
            wanted.append(self.releases_topic)
        consumer.subscribe(wanted)
        self._consumer = consumer
        self._tasks = [
            asyncio.create_task(self.webhook.run(), name="webhook"),
            asyncio.create_task(self._follow(consumer), name="notify-follow"),
        ]

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            if not self.following.is_set() and consumer.assignment():
                for tp in consumer.assignment():
                    await consumer.position(tp)  # pin the end: only what comes from now on
                self.following.set()
            for tp, records in batches.items():
                for record in records:
                    self.on_record(tp.topic, record.value or b"")

    def on_record(self, topic: str, value: bytes) -> None:
        base = self.options.explain_base_url
        t = self.settings.topics
        if topic == t.commands:
            with contextlib.suppress(DecodeError):
                self.webhook.submit(abort_notice(decode_abort_command(value), base))
        elif topic == t.verdicts and value:
            try:
                snapshot = VerdictSnapshot.decode(value)
            except (ValueError, TypeError, KeyError):
                return
            if snapshot.verdict != "abort" and "platform" in snapshot.extra.get("decision", []):
                self.webhook.submit(platform_notice(snapshot, base))
        elif topic == self.releases_topic:
            self.on_release(value)

    def on_release(self, value: bytes) -> None:
        """The release-halt hook: `{"release": ..., "halted": true, "reason": ...}`."""
        try:
            data: dict[str, Any] = json.loads(value)
        except ValueError:
            return
        if data.get("halted") and data.get("release"):
            notice = release_halt_notice(str(data["release"]), data, self.options.explain_base_url)
            self.webhook.submit(notice)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._consumer.stop()

    async def __aenter__(self) -> Notifier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def run_notify(settings: Settings, options: NotifyOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def serve() -> None:
        async with Notifier(settings, options):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
