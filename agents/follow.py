"""Follow a whole topic from its beginning, without a consumer group (readers of compacted
state: the gate's verdicts, the board's commands), starting again when the broker goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer

from agents.kafka_auth import PLAINTEXT, KafkaAuth

log = logging.getLogger(__name__)

RETRY_S = 1.0


class TopicFollower:
    """Runs `follow(consumer)` on a consumer of every partition of `topic`, read from the
    earliest offset, in a task of its own; a failure starts it again after `RETRY_S`."""

    def __init__(self, bootstrap: str, topic: str, auth: KafkaAuth = PLAINTEXT) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.auth = auth
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"follow {self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def follow(self, consumer: AIOKafkaConsumer) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap,
                **self.auth.client_options(),
                enable_auto_commit=False,
                group_id=None,  # every partition is ours
                auto_offset_reset="earliest",
                metadata_max_age_ms=5000,
            )
            try:
                await consumer.start()
                await self.follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: start again
                log.warning("%s: %s: %s; retrying", self.topic, type(exc).__name__, exc)
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()
