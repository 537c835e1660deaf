"""Triage Events: the release agent's triage of an abort, on the aborted Rollout.

The worker's own abort goes out at once, without waiting for a triage (the worker does not see
the cohort); the release agent publishes the triage later on `<prefix>.triage` (key: the
environment). This reader (consumer group `<app_id>-triage`, run beside the actuator by
`canarywatch actuator`) records it as a Normal Event `CanarywatchTriage` on the Rollout, named
per (revision, category): a second delivery is a no-op (409). Triage of a canary no longer in
progress at that revision is still recorded: it says why the abort happened. Aborts fanned out
by a release halt carry their triage (`release`) and the release decision in the abort command
itself, so their `CanarywatchAbort` Event already names it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry, Counter

from agents.rolloutapi import KubeError, RolloutApi
from agents.settings import Settings
from streams.actuation import COMPONENT
from streams.events import DecodeError
from streams.releaserecords import TriageRecord, decode_triage
from streams.rollouts import GROUP, KIND, VERSION

log = logging.getLogger("canarywatch.triage")

TRIAGE_EVENT_REASON = "CanarywatchTriage"


def triage_event(record: TriageRecord, uid: str, now: datetime, instance: str) -> dict[str, Any]:
    namespace, _, name = record.env.partition("/")
    digest = hashlib.sha256(
        f"{record.env}@{record.pod_hash}:{record.category.value}".encode()
    ).hexdigest()[:12]
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.canarywatch-triage-{digest}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "namespace": namespace,
            "name": name,
            "uid": uid,
        },
        "type": "Normal",
        "reason": TRIAGE_EVENT_REASON,
        "action": "Triage",
        "message": (
            f"canarywatch triage of the abort of canary {record.pod_hash}: {record.describe()}"
        )[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class TriageNotifier:
    def __init__(
        self, settings: Settings, api: RolloutApi, registry: CollectorRegistry, instance: str
    ) -> None:
        self.settings = settings
        self.api = api
        self.instance = instance
        self.events = Counter(
            "canarywatch_triage_events",
            "Triage Events recorded on Rollouts, by category and outcome.",
            ["category", "outcome"],
            registry=registry,
        )

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-triage"

    async def handle(self, record: TriageRecord) -> str:
        namespace, _, name = record.env.partition("/")
        try:
            rollout = await asyncio.to_thread(self.api.get_rollout, namespace, name)
            if rollout is None:
                outcome = "not_found"
            else:
                uid = str(rollout.get("metadata", {}).get("uid", ""))
                event = triage_event(record, uid, datetime.now(UTC), self.instance)
                created = await asyncio.to_thread(self.api.record_event, namespace, event)
                outcome = "recorded" if created else "exists"
        except KubeError as exc:
            log.error("triage Event for %s: %s", record.env, exc)
            outcome = "failed"
        self.events.labels(record.category.value, outcome).inc()
        if outcome == "recorded":
            log.warning("triage %s", record.describe())
        return outcome

    async def run(self, stop: asyncio.Event | None = None) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.topics.triage,
            bootstrap_servers=s.bootstrap,
            **s.kafka.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.topic_max_message_bytes,
        )
        await consumer.start()
        try:
            while stop is None or not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=200)
                for tp, records in batch.items():
                    for message in records:
                        try:
                            record = decode_triage(message.value or b"")
                        except DecodeError as error:
                            log.warning("triage %s@%d refused: %s", tp, message.offset, error)
                            continue
                        await self.handle(record)
                    if records:
                        # Best effort, like the abort's own Event: a failed one is not retried.
                        await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()
