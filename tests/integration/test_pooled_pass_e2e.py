"""The release-level pass on a real broker: summaries -> release agent -> `release:<name>` on
the verdicts topic -> the gate's store lends the pass to a quiet, inconclusive environment."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from agents.gate import VerdictStore
from agents.processes import free_port, poll_until, release_agent_process
from agents.releaseagent import release_partition
from agents.releases import ensure_release_topics
from agents.settings import Settings, Topics
from streams.pooledpass import KEY_PREFIX
from streams.promotion import INCONCLUSIVE, PASS
from streams.releasefeed import FeedRecord, encode_feed_record
from tests.test_pooledpass import healthy_summaries, quiet_snapshot

pytestmark = [pytest.mark.kafka]


async def test_a_quiet_environment_of_a_passed_release_answers_pass_from_the_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:6]
    settings = Settings(
        bootstrap=kafka_bootstrap,
        app_id=f"pp-e2e-{run_id}",
        topics=Topics(f"pp-e2e-{run_id}"),
        partitions=2,
        replication_factor=1,
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
        release_evaluate_every_s=0.5,
    )
    await ensure_release_topics(settings)  # the summaries, releases, triage and verdicts topics
    release = f"registry.example/shop:8.0.0-{run_id}"
    partition = release_partition(release, settings.partitions)
    now = time.time()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    agent = release_agent_process(settings, tmp_path / "release-agent.log")
    agent.start()
    await agent.wait_ready()
    store = VerdictStore(settings.bootstrap, settings.topics.verdicts)
    await store.start()
    try:
        for state, summary in healthy_summaries(40, release=release, at=now):
            for feed in (
                FeedRecord("state", release, state=state),
                FeedRecord("summary", release, summary=summary),
            ):
                await producer.send_and_wait(
                    settings.topics.summaries,
                    key=state.env.encode(),
                    value=encode_feed_record(feed),
                    partition=partition,
                )
        # The quiet environment's own snapshot, as its worker publishes it: inconclusive.
        quiet = quiet_snapshot(release=release, at=time.time())
        await producer.send_and_wait(
            settings.topics.verdicts, key=quiet.env.encode(), value=quiet.encode()
        )

        def passed() -> bool:  # both signals (a first record may carry one)
            got = store.release_passes.get(release)
            return got is not None and all(s.passed for s in got.signals)

        await poll_until(passed, 90, "the release's pass on both signals")
        record = store.release_passes[release]
        # It may pass before all 40 are in; the 1-nat cap needs at least ~6 environments.
        assert record.environments >= 6, record
        await poll_until(lambda: quiet.env in store.snapshots, 30, "the quiet snapshot")
        answer = store.verdict(quiet.env, time.time())
        assert answer is not None and answer.verdict == PASS, answer
        assert answer.reason.startswith(f"pass (release): errors: release {release}")
        # Its own evidence near an abort: it stays inconclusive, the objection said.
        near = quiet_snapshot(release=release, at=time.time(), abort_statistic=4.0)
        await producer.send_and_wait(
            settings.topics.verdicts, key=near.env.encode(), value=near.encode()
        )
        await poll_until(
            lambda: store.snapshots[quiet.env].signals[0].abort_statistic == 4.0,
            30,
            "the updated snapshot",
        )
        answer = store.verdict(quiet.env, time.time())
        assert answer is not None and answer.verdict == INCONCLUSIVE
        assert "own abort statistic" in answer.extra["release_pass"]
        # The record is keyed apart from every environment's.
        assert (KEY_PREFIX + release) not in store.snapshots
    finally:
        agent.stop()
        await store.stop()
        await producer.stop()
