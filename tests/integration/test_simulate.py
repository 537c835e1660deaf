"""`canarywatch simulate` on a real broker: it stops cleanly on SIGTERM and SIGINT, and a
machine slower than the asked rate skips simulated time instead of piling up lines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agents.kafka_admin import ensure_topics
from agents.processes import poll_until
from agents.settings import Settings, Topics, settings_to_env
from agents.simulator import catch_up_window
from agents.status import read_verdicts

pytestmark = pytest.mark.kafka


def test_catch_up_is_capped() -> None:
    assert catch_up_window(10.0, 10.1, 1.0) == (10.0, 0.0)
    start, skipped = catch_up_window(10.0, 70.0, 1.0)
    assert (start, skipped) == (69.0, 59.0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_simulate_exits_cleanly_on_a_signal(
    kafka_bootstrap: str, tmp_path: Path, signum: int
) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap=kafka_bootstrap, topics=Topics(f"sim-{run_id}"), partitions=1,
                        data_dir=tmp_path)  # fmt: skip
    await ensure_topics(settings.bootstrap, settings.topic_partitions())
    log = tmp_path / "simulate.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
            [sys.executable, "-m", "agents.cli", "simulate", "--environments", "20",
             "--healthy", "5", "--bad", "1", "--platform", "0", "--seed", "3"],
            env={**os.environ, **settings_to_env(settings)}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            # Running: its rollout states are on the topic (each read in a thread of its own).
            await poll_until(
                lambda: (
                    asyncio.run(read_verdicts(settings.bootstrap, settings.topics.rollouts)).records
                ),
                60,
                "simulate to publish rollout states",
                every_s=0.2,
            )
            process.send_signal(signum)
            code = await poll_until(lambda: process.poll() is not None, 20, "simulate to exit")
            assert code
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, log.read_text()
    text = log.read_text()
    assert "simulate:" in text and "seed 3" in text and "Traceback" not in text, text
