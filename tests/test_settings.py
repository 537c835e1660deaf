"""Settings round-trip to a child process's environment; topic layout is checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.settings import Settings, Topics, settings_from_env, settings_to_env
from agents.worker import check_copartitioned


def test_settings_survive_the_trip_through_the_environment() -> None:
    settings = Settings(
        bootstrap="127.0.0.1:1234",
        app_id="x",
        topics=Topics("t1"),
        partitions=6,
        metrics_port=9999,
        evaluate_every_s=0.5,
        max_message_bytes=1000,
        data_dir=Path("/tmp/x"),
        ingest_start_file=Path("/tmp/go"),
    )
    back = settings_from_env(settings_to_env(settings))
    assert back == settings


def test_request_log_and_rollout_topics_must_be_copartitioned() -> None:
    topics = Topics("cw")
    check_copartitioned(topics, {topics.requests: 4, topics.rollouts: 4})
    with pytest.raises(SystemExit, match="must match"):
        check_copartitioned(topics, {topics.requests: 8, topics.rollouts: 4})
