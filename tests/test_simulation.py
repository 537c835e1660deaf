"""The simulator's own truth: its plans and traffic are what the scorecard relies on."""

from __future__ import annotations

import math

import numpy as np
import orjson

from streams.events import decode_request_lines
from streams.simulation import (
    FleetSimulator,
    Scenario,
    SimulationSettings,
    plan_fleet,
    score,
    to_messages,
)

SETTINGS = SimulationSettings(environments=50, healthy=20, bad=3, platform=2)


def test_plan_counts_and_faults_on_busy_environments() -> None:
    plans = plan_fleet(SETTINGS, np.random.default_rng(1), start=100.0)
    kinds = [p.scenario for p in plans]
    assert kinds.count(Scenario.BAD) == 3 and kinds.count(Scenario.PLATFORM) == 2
    assert kinds.count(Scenario.HEALTHY) == 20
    for p in plans:
        if p.scenario in (Scenario.BAD, Scenario.PLATFORM):
            assert p.rps >= SETTINGS.min_fault_rps
            assert p.fault_start == p.canary_start + SETTINGS.fault_after_s
        else:
            assert math.isinf(p.fault_start)
    rps = sorted(p.rps for p in plans)
    assert rps[-1] > 5 * rps[len(rps) // 2], "heavy tail: the busiest far above the median"


def test_bad_canary_fails_only_on_canary_pods_after_the_fault() -> None:
    plans = plan_fleet(SETTINGS, np.random.default_rng(2), start=0.0)
    bad = next(p for p in plans if p.scenario == Scenario.BAD)
    sim = FleetSimulator([bad], SETTINGS, np.random.default_rng(3))
    before = sim.requests(bad.canary_start, bad.fault_start - 0.01)
    after = sim.requests(bad.fault_start, bad.fault_start + 30)
    assert sum(x.status >= 500 for x in before) <= 2
    canary_after = [x for x in after if x.pod_hash == bad.canary_hash]
    stable_after = [x for x in after if x.pod_hash == bad.stable_hash]
    assert sum(x.status >= 500 for x in canary_after) > 0.3 * len(canary_after)
    assert sum(x.status >= 500 for x in stable_after) <= 0.01 * len(stable_after) + 2


def test_weights_step_and_states_are_published_on_change() -> None:
    plans = plan_fleet(SETTINGS, np.random.default_rng(4), start=0.0)
    healthy = next(p for p in plans if p.scenario == Scenario.HEALTHY)
    sim = FleetSimulator([healthy], SETTINGS, np.random.default_rng(5))
    assert [s.current_pod_hash for s in sim.changed_states(0.0)] == [healthy.stable_hash]
    assert sim.changed_states(0.0) == []
    (started,) = sim.changed_states(healthy.canary_start)
    assert started.canary_in_progress and started.canary_weight == SETTINGS.weights[0]
    (stepped,) = sim.changed_states(healthy.canary_start + SETTINGS.step_every_s)
    assert stepped.canary_weight == SETTINGS.weights[1]


def test_ndjson_messages_hold_every_line_once() -> None:
    plans = plan_fleet(SETTINGS, np.random.default_rng(6), start=0.0)
    sim = FleetSimulator(plans, SETTINGS, np.random.default_rng(7))
    lines = sim.requests(10.0, 12.0)
    messages = to_messages(lines, 7)
    decoded = [x for _, value in messages for x in decode_request_lines(value)[0]]
    assert sorted(decoded, key=orjson.dumps) == sorted(lines, key=orjson.dumps)
    assert all(key == value.split(b'"namespace":"')[1].split(b'"')[0] for key, value in messages)


def test_scorecard_counts_truth_against_decisions() -> None:
    plans = plan_fleet(SETTINGS, np.random.default_rng(8), start=0.0)
    bad = [p for p in plans if p.scenario == Scenario.BAD]
    healthy = next(p for p in plans if p.scenario == Scenario.HEALTHY)
    seen = {bad[0].env: bad[0].fault_start + 2.0, healthy.env: 5.0}
    card = score(plans, seen)
    assert (card.true_aborts, card.missed, card.false_aborts) == (1, 2, 1)
    (first,) = [o for o in card.outcomes if o.env == bad[0].env]
    assert first.time_to_abort_s == 2.0
