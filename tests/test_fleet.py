"""The pure core end to end: bytes and states in, abort commands with evidence out."""

from __future__ import annotations

import numpy as np

from streams.decisions import Verdict
from streams.events import RequestLine, RolloutState, encode_request_line
from streams.fleet import Fleet
from streams.simulation import FleetSimulator, Scenario, SimulationSettings, plan_fleet, score


def lines(ns: str, pod_hash: str, n: int, errors: int, t: float) -> list[bytes]:
    return [
        encode_request_line(
            RequestLine(t, ns, f"web-{pod_hash}", pod_hash, 503 if i < errors else 200, 20.0)
        )
        for i in range(n)
    ]


def test_bad_canary_is_aborted_once_with_evidence() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1", canary_weight=20), now=0.0)
    for t in range(1, 30):
        report = fleet.count(lines("shop", "c1", 20, 10, t) + lines("shop", "s1", 80, 0, t), t)
        assert report.counted == 100 and not report.invalid
        _, commands = fleet.evaluate(float(t))
        if commands:
            break
    assert len(commands) == 1
    command = commands[0]
    assert command.decision_id == "shop/web@c1"
    assert command.pod_hash == "c1" and command.rollout == "web"
    ev = command.evidence
    assert ev.signal == "errors"
    assert ev.canary_bad > 0 and ev.stable_bad == 0
    assert 0.15 < ev.canary_share < 0.25
    assert ev.statistic >= ev.threshold
    # The same revision is never aborted twice.
    fleet.count(lines("shop", "c1", 20, 20, 40.0), 40.0)
    assert fleet.evaluate(40.0)[1] == []


def test_unknown_hashes_are_unattributed_and_bad_lines_reported() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1"), now=0.0)
    report = fleet.count([*lines("shop", "zzz", 3, 0, 1.0), b"nope", b"{}"], 1.0)
    assert report.counted == 0 and report.unattributed == 3
    assert [(i, err.reason) for i, _, err in report.invalid] == [
        (3, "not_json"),
        (4, "missing_field"),
    ]


def test_failing_stable_is_platform_not_abort() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1", canary_weight=20), now=0.0)
    for t in range(1, 30):
        fleet.count(lines("shop", "c1", 20, 6, t) + lines("shop", "s1", 80, 24, t), t)
        result, commands = fleet.evaluate(float(t))
        assert commands == []
    assert result.verdicts[0, 0] == Verdict.PLATFORM


def test_new_revision_starts_from_zero_evidence() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1"), now=0.0)
    fleet.count(lines("shop", "c1", 10, 5, 1.0), 1.0)
    fleet.evaluate(1.0)
    fleet.apply_rollout(RolloutState("shop", "web", "c2", "s1"), now=2.0)
    result, _ = fleet.evaluate(2.0)
    assert int(result.cumulative[:, 0].sum()) == 0
    assert result.started_at[0] == 2.0


def test_simulated_fleet_scores_perfectly_in_process() -> None:
    settings = SimulationSettings(environments=40, healthy=20, bad=3, platform=2)
    rng = np.random.default_rng(5)
    plans = plan_fleet(settings, rng, start=0.0)
    sim = FleetSimulator(plans, settings, rng)
    fleet = Fleet()
    aborted_at: dict[str, float] = {}
    t = 0.0
    while t < 40.0:
        for state in sim.changed_states(t):
            fleet.apply_rollout(state, t)
        encoded = [encode_request_line(x) for x in sim.requests(t, t + 0.25)]
        fleet.count(encoded, t + 0.25)
        t += 0.25
        for command in fleet.evaluate(t)[1]:
            aborted_at.setdefault(command.env, t)
    card = score(plans, aborted_at)
    assert card.summary() == "true_aborts=3 missed=0 false_aborts=0"
    delays = [o.time_to_abort_s for o in card.outcomes if o.scenario == Scenario.BAD]
    assert all(d is not None and 0 < d < 15 for d in delays), delays


def test_retain_forgets_environments_handed_to_another_worker() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("a", "web", "c1", "s1"), now=0.0)
    fleet.apply_rollout(RolloutState("b", "web", "c2", "s2"), now=0.0)
    fleet.count(lines("a", "c1", 4, 0, 1.0) + lines("b", "c2", 4, 0, 1.0), 1.0)
    fleet.retain({"b/web"})
    assert set(fleet.attribution.row_of_env) == {"b/web"}
    report = fleet.count(lines("a", "c1", 3, 0, 2.0) + lines("b", "c2", 2, 0, 2.0), 2.0)
    assert (report.counted, report.unattributed) == (2, 3)
    row_b = fleet.attribution.row_of_env["b/web"]
    assert int(fleet.windows.window_sum[0, row_b]) == 6  # b's evidence survived


def test_pass_state_says_pass_abort_or_inconclusive_per_canary() -> None:
    """Busy and healthy: pass (both signals shown within tolerance); broken: abort; quiet:
    inconclusive, with an estimate of how long a pass would take at its traffic."""
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("busy", "web", "c1", "s1", canary_weight=20), now=0.0)
    fleet.apply_rollout(RolloutState("bad", "web", "c2", "s2", canary_weight=20), now=0.0)
    fleet.apply_rollout(RolloutState("quiet", "web", "c3", "s3", canary_weight=20), now=0.0)
    verdicts: dict[str, str] = {}
    for t in range(1, 121):
        batch = lines("busy", "c1", 40, 0, t) + lines("busy", "s1", 160, 0, t)
        batch += lines("bad", "c2", 40, 10, t) + lines("bad", "s2", 160, 0, t)
        if t % 30 == 0:
            batch += lines("quiet", "c3", 1, 0, t) + lines("quiet", "s3", 4, 0, t)
        fleet.count(batch, float(t))
        fleet.evaluate(float(t))
        verdicts = {s.namespace: s.verdict for s in fleet.pass_state()}
        if verdicts["busy"] == "pass":
            break
    assert verdicts == {"busy": "pass", "bad": "abort", "quiet": "inconclusive"}, verdicts
    snaps = {s.namespace: s for s in fleet.pass_state()}
    busy = snaps["busy"]
    assert busy.pod_hash == "c1" and all(s.verdict == "pass" for s in busy.signals)
    assert any(
        (s.diff_bound is not None and s.diff_bound <= s.tol_diff)
        or (s.ratio_bound is not None and s.ratio_bound <= s.tol_ratio)
        for s in busy.signals
    )
    quiet = snaps["quiet"]
    assert quiet.eta_s is not None and quiet.eta_s > 3600, quiet
    # A new revision starts again from nothing.
    fleet.apply_rollout(RolloutState("busy", "web", "c9", "s1", canary_weight=20), now=200.0)
    fleet.evaluate(200.0)
    assert {s.namespace: s.verdict for s in fleet.pass_state()}["busy"] == "inconclusive"
