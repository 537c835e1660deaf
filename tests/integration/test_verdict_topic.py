"""The compacted verdicts topic is created so that the log cleaner can compact it."""

from __future__ import annotations

import uuid

import pytest

from agents.kafka_admin import ensure_verdict_topic
from agents.settings import Settings, Topics
from tests.integration.test_ingest_sizes import topic_config

pytestmark = [pytest.mark.kafka]


async def test_the_verdicts_topic_is_compacted_with_segments_that_roll(
    kafka_bootstrap: str,
) -> None:
    settings = Settings(
        bootstrap=kafka_bootstrap,
        topics=Topics(f"vt-{uuid.uuid4().hex[:8]}"),
        partitions=1,
        replication_factor=1,
    )
    await ensure_verdict_topic(settings)
    topic = settings.topics.verdicts
    assert await topic_config(settings, topic, "cleanup.policy") == "compact"
    # `status` reads the whole topic: a segment that never rolls is never compacted.
    assert await topic_config(settings, topic, "segment.ms") == "60000"
    assert await topic_config(settings, topic, "min.compaction.lag.ms") == "60000"
