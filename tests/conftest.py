"""Shared pytest fixtures: a real local Kafka broker for tests marked `kafka`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from agents.localkafka import LocalKafka, free_ports

# Hypothesis' per-example deadline (200 ms) measures the machine, not the code: on a shared,
# loaded CI machine it fails examples that pass. Every example still runs.
settings.register_profile("canarywatch", deadline=None)
settings.load_profile("canarywatch")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for the whole session.

    Uses the broker named by $CANARYWATCH_TEST_BOOTSTRAP if set (e.g. one from `make broker`);
    otherwise starts a LocalKafka on two free loopback ports in a temporary dir and stops it
    when the session ends.
    """
    external = os.environ.get("CANARYWATCH_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    port, controller_port = free_ports(2)
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka"), port, controller_port)
    kafka.start(timeout=120)
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()
