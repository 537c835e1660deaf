"""Kafka SASL on a real broker: the local Kafka with a SASL_PLAINTEXT listener (PLAIN, JAAS
users in its properties) and canarywatch's clients configured by CANARYWATCH_* variables.

Topic creation (admin), a producer, `read_verdicts` (consumer) and `canarywatch status` in a
new process all go through the SASL listener only; a wrong password is refused by the broker
(so the settings are what lets them in); the password shows up in no output.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka.errors import KafkaError

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports
from agents.settings import Settings, settings_from_env, settings_to_env
from agents.simulator import producer_for
from agents.status import read_verdicts
from streams.promotion import INCONCLUSIVE, SignalPass, VerdictSnapshot

pytestmark = [pytest.mark.kafka]

USER, PASSWORD = "canary", "s3cret-pw-9f2c"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    port, controller, sasl = free_ports(3)
    kafka = LocalKafka(
        tmp_path_factory.mktemp("kafka-sasl"), port, controller, sasl_port=sasl,
        sasl_users={USER: PASSWORD},
    )  # fmt: skip
    kafka.start(timeout=120)
    try:
        yield kafka
    finally:
        kafka.stop()


def sasl_settings(broker: LocalKafka, password: str = PASSWORD) -> Settings:
    return settings_from_env(
        {
            "CANARYWATCH_BOOTSTRAP": f"127.0.0.1:{broker.sasl_port}",
            "CANARYWATCH_TOPIC_PREFIX": f"sasl-{uuid.uuid4().hex[:8]}",
            "CANARYWATCH_PARTITIONS": "1",
            "CANARYWATCH_REPLICATION_FACTOR": "1",
            "CANARYWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CANARYWATCH_SASL_MECHANISM": "PLAIN",
            "CANARYWATCH_SASL_USERNAME": USER,
            "CANARYWATCH_SASL_PASSWORD": password,
        }
    )


def snapshot(ns: str) -> VerdictSnapshot:
    signals = tuple(
        SignalPass(name, INCONCLUSIVE, None, None, 1.5, 0.005, 3, 0, 12, 0, 0.1, 4.6)
        for name in ("errors", "latency")
    )
    return VerdictSnapshot(
        ns, "web", "c1", INCONCLUSIVE, time.time(), 5.0, 0.01, signals, release="web:2"
    )


async def test_every_client_kind_works_through_sasl_and_a_wrong_password_is_refused(
    sasl_broker: LocalKafka, tmp_path: Path
) -> None:
    settings = sasl_settings(sasl_broker)
    topic = settings.topics.verdicts
    await ensure_topics(
        settings.bootstrap, {topic: 1}, {"cleanup.policy": "compact"}, auth=settings.kafka
    )
    producer = producer_for(settings.bootstrap, settings.kafka)
    await producer.start()
    try:
        for ns in ("sasl-a", "sasl-b"):
            s = snapshot(ns)
            await producer.send_and_wait(topic, key=s.env.encode(), value=s.encode())
    finally:
        await producer.stop()
    read = await read_verdicts(settings.bootstrap, topic, auth=settings.kafka)
    assert sorted(read.raw) == ["sasl-a/web", "sasl-b/web"]

    # `canarywatch status` in a new process, configured only by the environment.
    env = {**os.environ, **settings_to_env(settings)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agents.cli", "status", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    items = orjson.loads(done.stdout)["items"]
    assert sorted(i["namespace"] for i in items) == ["sasl-a", "sasl-b"]
    assert PASSWORD not in done.stdout + done.stderr

    # The broker does check: the same reader with a wrong password is refused.
    wrong = sasl_settings(sasl_broker, password="not-the-password")
    with pytest.raises(KafkaError):
        await read_verdicts(wrong.bootstrap, topic, auth=wrong.kafka, timeout_s=20)
    # And without SASL settings the SASL listener gives a plaintext client nothing.
    with pytest.raises((KafkaError, TimeoutError, asyncio.TimeoutError)):
        await asyncio.wait_for(read_verdicts(settings.bootstrap, topic, timeout_s=10), 30)


def test_a_bad_setting_beside_the_sasl_ones_names_it_and_never_the_password(
    sasl_broker: LocalKafka,
) -> None:
    settings = sasl_settings(sasl_broker)
    env = {**os.environ, **settings_to_env(settings), "CANARYWATCH_GATE_PORT": "notaport"}
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "gate"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "CANARYWATCH_GATE_PORT='notaport'" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
