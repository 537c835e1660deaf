"""End to end on the real broker: simulated fleet -> worker process -> abort commands."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from agents.demo import run_demo
from agents.processes import free_port
from agents.settings import Settings, Topics
from streams.simulation import Scenario, SimulationSettings

pytestmark = pytest.mark.kafka

FLEET = SimulationSettings(environments=40, healthy=20, bad=3, platform=2)


@pytest.mark.parametrize("lines_per_message", [1, 50], ids=["one-line", "ndjson"])
async def test_each_bad_canary_gets_one_abort_within_15s(
    kafka_bootstrap: str, tmp_path: Path, lines_per_message: int
) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        replication_factor=1,
        bootstrap=kafka_bootstrap,
        app_id=f"e2e-{run_id}",
        topics=Topics(f"e2e-{run_id}"),
        metrics_port=free_port(),
        data_dir=tmp_path / "worker",
    )
    result = await run_demo(
        settings,
        FLEET,
        # Faults start 7-13 s in; the sliced test needs ~9-14 s: leave every fault 27 s to show.
        duration=40.0,
        seed=20261126,
        lines_per_message=lines_per_message,
        work_dir=tmp_path,
        out=lambda _: None,
    )

    per_env = Counter(command.env for _, command in result.commands)
    bad = {o.env for o in result.scorecard.outcomes if o.scenario == Scenario.BAD}
    assert len(bad) == 3
    assert set(per_env) == bad, "only bad canaries are aborted"
    assert all(count == 1 for count in per_env.values()), per_env
    for outcome in result.scorecard.outcomes:
        if outcome.scenario == Scenario.BAD:
            assert outcome.time_to_abort_s is not None
            # Event time, on top of the 15 s: the demo's lateness (1 s), a slice (0.5 s), and up
            # to its idle time (1 s) while a partition of quiet canaries holds the watermark.
            assert 0 < outcome.time_to_abort_s <= 17.5, outcome
    for _, command in result.commands:
        evidence = command.evidence
        assert evidence.canary_bad > 0 and evidence.canary_requests >= evidence.canary_bad
        assert evidence.statistic >= evidence.threshold
    assert result.scorecard.summary() == "true_aborts=3 missed=0 false_aborts=0"
