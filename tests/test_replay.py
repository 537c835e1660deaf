"""`canarywatch replay` on NDJSON files written from a simulated fleet (streams/simulation.py):
the same decisions the streaming worker makes, in the records' own time, as fast as it goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from streams.events import encode_request_line, encode_rollout_state
from streams.replay import classify, replay
from streams.simulation import (
    EnvPlan,
    FleetSimulator,
    Scenario,
    SimulationSettings,
    plan_fleet,
    score,
)

FLEET = SimulationSettings(environments=30, healthy=12, bad=3, platform=2)
START = 1_764_000_000.0


def record_fleet(
    tmp: Path, seconds: float = 40.0, seed: int = 7
) -> tuple[Path, Path, list[EnvPlan]]:
    rng = np.random.default_rng(seed)
    plans = plan_fleet(FLEET, rng, START)
    sim = FleetSimulator(plans, FLEET, rng)
    requests, rollouts = tmp / "requests.ndjson", tmp / "rollouts.ndjson"
    t = START
    with requests.open("wb") as req, rollouts.open("wb") as roll:
        while t < START + seconds:
            for state in sim.changed_states(t):
                roll.write(encode_rollout_state(state) + b"\n")
            for line in sim.requests(t, t + 0.5):
                req.write(encode_request_line(line) + b"\n")
            t += 0.5
    return requests, rollouts, plans


def test_replay_of_a_recorded_fleet_aborts_exactly_the_bad_canaries(tmp_path: Path) -> None:
    requests, rollouts, plans = record_fleet(tmp_path)
    # Files in any order: records are sorted by their own time.
    lines = rollouts.read_bytes().splitlines() + requests.read_bytes().splitlines()
    records = [r for r in map(classify, lines) if r is not None]
    result = replay(records)
    card = score(plans, result.aborted_at())
    assert card.summary() == "true_aborts=3 missed=0 false_aborts=0", result.lines()
    for outcome in card.outcomes:
        if outcome.scenario == Scenario.BAD:
            # Event time: a decision waits for the watermark, ALLOWED_LATENESS_S (2 s) + a slice.
            assert outcome.time_to_abort_s is not None and 0 < outcome.time_to_abort_s < 17.5
    assert result.requests == len(requests.read_bytes().splitlines())
    assert {result.final[o.env] for o in card.outcomes if o.scenario == Scenario.BAD} == {"abort"}


def test_replay_command_prints_and_plots_the_decisions(tmp_path: Path) -> None:
    requests, rollouts, plans = record_fleet(tmp_path, seconds=30.0)
    plot = tmp_path / "replay.png"
    env = {**os.environ, "CANARYWATCH_TOPIC_PREFIX": "unused"}
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "replay", str(requests), str(rollouts), "-o", "json",
         "--plot", str(plot)],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    out = json.loads(done.stdout)
    bad = {p.env for p in plans if p.scenario == Scenario.BAD}
    assert {a["env"] for a in out["aborts"]} == bad, out["aborts"]
    assert all("statistic" in a["detail"] for a in out["aborts"])
    assert plot.stat().st_size > 10_000
    text = subprocess.run(
        [sys.executable, "-m", "agents.cli", "replay", str(requests), str(rollouts)],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "ABORT command" in text and f"replay: {len(bad)} aborts" in text, text
