"""The worker's release feed (streams/releasefeed.py) and the release agent's commands."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.releaseagent import release_partition
from streams.actuation import event_message
from streams.events import (
    DecodeError,
    check_decision_id,
    decode_abort_command,
    encode_abort_command,
)
from streams.fleet import Fleet
from streams.release import FleetControl, ReleaseSettings, Triage
from streams.releaseboard import BoardPass, ReleaseBoard
from streams.releasecommands import fanout_command
from streams.releasefeed import (
    SummaryFeed,
    decode_feed_record,
    encode_feed_record,
    keep_own_abort,
    left_cohort,
    state_record,
    summary_record,
)
from streams.simulation import (
    ReleaseFleetSettings,
    plan_release_fleet,
    release_fleet_lines,
    to_messages,
)

FLEET = ReleaseFleetSettings(bad_release_envs=60, healthy_envs=20, bad_customer_envs=1)


def _run(
    rounds: int = 20, step: float = 0.75
) -> tuple[Fleet, SummaryFeed, ReleaseBoard, list[BoardPass]]:
    envs = plan_release_fleet(FLEET, ("rb", "bad:1"), ("rh", "ok:1"), "x")
    fleet = Fleet()
    now = 1_764_000_000.0
    for e in envs:
        fleet.apply_rollout(e.state(now), now)
    lines = release_fleet_lines(envs, FLEET, np.random.default_rng(7), now, rounds * step)
    feed = SummaryFeed(fleet, ReleaseSettings())
    board = ReleaseBoard()
    for e in envs:
        board.apply_state(e.state(now))
    passes = []
    t = now
    for _ in range(rounds + 20):  # event time: the last slices close once idle (EVENT_IDLE_S)
        batch = [line for line in lines if t <= line.ts < t + step]
        t += step
        if batch:
            fleet.count([v for _, v in to_messages(batch, 50)], t)
        for j in range(3):
            fleet.evaluate(t + 0.25 * j)
        for summary in feed.summaries(t):
            assert board.apply_summary(summary)
        passes.append(board.evaluate(t))
    return fleet, feed, board, passes


def test_the_feed_halts_the_bad_release_and_triages_the_customer() -> None:
    _, feed, board, passes = _run()
    verdicts = [v for p in passes for v in p.verdicts]
    assert [v.release for v in verdicts] == ["bad:1"], "one halt, of the bad release"
    assert {env for env, _ in verdicts[0].targets} <= {e for e in board.envs if e.startswith("rb/")}
    triage = {r.env: r.category for p in passes for r in p.triage}
    assert triage["rh/web-0000"] is Triage.ENVIRONMENT
    assert all(c is Triage.RELEASE for env, c in triage.items() if env.startswith("rb/"))
    assert feed.summaries(1e10) == [], "nothing changed: nothing published"


def test_a_new_revision_starts_the_evidence_again() -> None:
    fleet, feed, _, _ = _run(rounds=6)
    row = fleet.attribution.row_of_env["rb/web-0001"]
    assert feed.evidence.loglik[:, :, row].any()
    state = fleet.attribution.states[row]
    assert state is not None
    fleet.apply_rollout(dataclasses.replace(state, current_pod_hash="zz99"), 2e9)
    feed.observe()
    assert not feed.evidence.loglik[:, :, row].any()
    assert not feed.evidence.block[:, row].any()


def test_feed_records_round_trip_and_refuse_garbage() -> None:
    fleet, feed, _, _ = _run(rounds=4)
    envs = plan_release_fleet(FLEET, ("rb", "bad:1"), ("rh", "ok:1"), "x")
    record = state_record(envs[0].state(1.0))
    assert decode_feed_record(encode_feed_record(record)) == record
    assert record.key == b"state|rb/web-0000|bad:1"
    row = fleet.attribution.row_of_env[envs[0].env]
    summary = fleet.attribution.states[row]
    assert summary is not None
    feed._published.clear()
    (first, *_) = feed.summaries(5.0)
    assert decode_feed_record(encode_feed_record(summary_record(first))).summary == first
    for raw in (b"[]", b"{", b'{"kind":"other"}', b'{"kind":"state","state":{"namespace":1}}'):
        with pytest.raises(DecodeError):
            decode_feed_record(raw)


def test_leaving_a_cohort_and_e_bh() -> None:
    envs = plan_release_fleet(FLEET, ("rb", "bad:1"), ("rh", "ok:1"), "x")
    a = envs[0].state(1.0)
    moved = dataclasses.replace(a, release="bad:2", current_pod_hash="n1")
    leave = left_cohort(a, moved)
    assert leave is not None and leave.release == "bad:1" and not leave.canary_in_progress
    assert left_cohort(a, dataclasses.replace(a, observed_at=2.0)) is None
    assert keep_own_abort("bad:1", FleetControl.PER_ENV)
    assert not keep_own_abort("bad:1", FleetControl.EBH)
    assert keep_own_abort("", FleetControl.EBH)
    assert 0 <= release_partition("bad:1", 4) < 4


def test_fanout_commands_use_the_revision_decision_id_and_name_the_release() -> None:
    _, _, _, passes = _run(rounds=8)
    (verdict,) = [v for p in passes for v in p.verdicts]
    envs = {e.env: e for e in plan_release_fleet(FLEET, ("rb", "bad:1"), ("rh", "ok:1"), "x")}
    env, _ = verdict.targets[0]
    command = fanout_command(verdict, envs[env].state(1.0, cluster="eu-1"))
    assert check_decision_id(command.decision_id.encode()) == f"eu-1:{env}@{envs[env].canary_hash}"
    # With the canary's decision epoch (the worker forwards the state with it): the id the
    # worker's own abort of that canary carries, so neither aborts the revision again.
    started = dataclasses.replace(envs[env].state(1.0, cluster="eu-1"), epoch="4711")
    epoch_id = fanout_command(verdict, started).decision_id
    assert epoch_id == f"eu-1:{env}@{envs[env].canary_hash}#4711"
    assert check_decision_id(epoch_id.encode()) == epoch_id
    assert decode_abort_command(encode_abort_command(command)) == command
    text = event_message(command)
    assert "release decision release/bad:1" in text and "triage release" in text
