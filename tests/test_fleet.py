"""The pure core end to end: bytes and states in, abort commands with evidence out."""

from __future__ import annotations

import numpy as np

from streams.decisions import Verdict
from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import EventTimeSettings
from streams.fleet import Fleet, FleetLimits
from streams.simulation import FleetSimulator, Scenario, SimulationSettings, plan_fleet, score
from streams.windows import CANARY_REQUESTS, STABLE_REQUESTS

PROCESSING_TIME = EventTimeSettings(enabled=False)


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
    # Bad requests every second: no quiet gap, so slices close at max_slice_s (2 s), and each
    # counts once (a burst could look like this): seconds, not one.
    for t in range(1, 60):
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
    fleet = Fleet(limits=FleetLimits(hold_s=0.0))
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
    # Bad requests without a quiet gap: slices of max_slice_s (2 s), each counted once (a
    # burst could look like this); still within 15 s of the fault.
    assert all(d is not None and 0 < d < 15 for d in delays), delays


def test_unattributed_lines_wait_for_their_canary_within_the_hold() -> None:
    # Processing time: the window counts the lines as they are counted.
    fleet = Fleet(limits=FleetLimits(hold_s=5.0, hold_lines=100), event_time=PROCESSING_TIME)
    early = fleet.count(lines("shop", "c1", 4, 2, 1.0) + lines("shop", "s1", 6, 0, 1.0), 1.0)
    assert (early.counted, early.unattributed, early.held) == (0, 0, 10)
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1"), now=2.0)
    released = fleet.release_held(2.5)
    assert (released.counted, released.unattributed, released.held) == (10, 0, 0)
    row = fleet.attribution.row_of_env["shop/web"]
    assert fleet.counted_rows[row]
    assert int(fleet.windows.window_sum[CANARY_REQUESTS, row]) == 4
    assert int(fleet.windows.window_sum[STABLE_REQUESTS, row]) == 6


def test_held_lines_are_looked_up_again_at_the_next_count() -> None:
    fleet = Fleet(limits=FleetLimits(hold_s=5.0, hold_lines=100))
    fleet.count(lines("shop", "c1", 3, 0, 1.0), 1.0)
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1"), now=1.5)
    report = fleet.count(lines("shop", "s1", 2, 0, 2.0), 2.0)
    assert (report.counted, report.unattributed, report.held) == (5, 0, 0)


def test_the_hold_expires_after_hold_s_and_never_exceeds_hold_lines() -> None:
    fleet = Fleet(limits=FleetLimits(hold_s=5.0, hold_lines=10))
    first = fleet.count(lines("shop", "zz", 8, 0, 1.0), 1.0)
    assert (first.unattributed, first.held) == (0, 8)
    second = fleet.count(lines("shop", "zz", 5, 0, 2.0), 2.0)  # room for 2 of 5
    assert (second.unattributed, second.held) == (3, 10)
    assert fleet.held_lines == 10
    at_6 = fleet.count([], 6.0)  # 5 s after the first batch: still held
    assert (at_6.unattributed, at_6.held) == (0, 10)
    at_6_5 = fleet.count([], 6.5)  # the first batch expired, the second not yet
    assert (at_6_5.unattributed, at_6_5.held) == (8, 2)
    fleet.apply_rollout(RolloutState("shop", "web", "zz", "s1"), now=6.9)
    late = fleet.release_held(6.9)  # the second batch is still in its hold: counted
    assert (late.counted, late.unattributed, late.held) == (2, 0, 0)


def test_no_hold_counts_unattributed_at_once() -> None:
    fleet = Fleet(limits=FleetLimits(hold_s=0.0))
    report = fleet.count(lines("shop", "zz", 3, 0, 1.0), 1.0)
    assert (report.unattributed, report.held) == (3, 0)


def test_canaries_over_the_cap_are_refused_and_counted() -> None:
    fleet = Fleet(limits=FleetLimits(max_canaries=2))
    assert fleet.apply_rollout(RolloutState("a", "web", "c1", "s1"), now=0.0)
    assert fleet.apply_rollout(RolloutState("b", "web", "c2", "s2"), now=0.0)
    assert not fleet.apply_rollout(RolloutState("c", "web", "c3", "s3"), now=0.0)
    assert fleet.refused_canaries == 1
    assert set(fleet.attribution.row_of_env) == {"a/web", "b/web"}
    # A tracked canary may still move on (a new revision takes its row again).
    assert fleet.apply_rollout(RolloutState("a", "web", "c9", "s1"), now=1.0)
    # Once one ends there is room, and the next snapshot of the refused canary is tracked.
    assert fleet.apply_rollout(RolloutState("b", "web", "c2", "c2"), now=2.0)
    assert fleet.apply_rollout(RolloutState("c", "web", "c3", "s3"), now=2.0)
    assert set(fleet.attribution.row_of_env) == {"a/web", "c/web"}
    assert fleet.refused_canaries == 1


def test_a_canary_with_traffic_takes_the_place_of_an_idle_one_at_the_cap() -> None:
    fleet = Fleet(limits=FleetLimits(max_canaries=3))
    fleet.apply_rollout(RolloutState("real", "web", "c0", "s0", canary_weight=20), now=0.0)
    assert fleet.count(lines("real", "c0", 5, 0, 1.0), 1.0).counted == 5
    # A flood of snapshots nobody sends traffic for fills the cap, then a real canary comes.
    for i in range(10):
        fleet.apply_rollout(RolloutState(f"flood-{i}", "web", f"f{i}", f"g{i}"), now=1.0)
    assert not fleet.apply_rollout(RolloutState("late", "web", "c9", "s9"), now=1.0)
    assert "late/web" not in fleet.attribution.row_of_env
    # A waiting canary whose rollout ended is not admitted by late lines.
    fleet.apply_rollout(RolloutState("flood-9", "web", "f9", "f9"), now=1.0)
    assert fleet.count(lines("flood-9", "f9", 1, 0, 1.0), 1.0).counted == 0
    assert fleet.evicted_canaries == 0
    # Its first lines admit it in place of the oldest idle canary, and they count.
    report = fleet.count(lines("late", "c9", 4, 0, 2.0) + lines("late", "s9", 6, 0, 2.0), 2.0)
    assert (report.counted, report.unattributed) == (10, 0)
    assert fleet.evicted_canaries == 1
    assert set(fleet.attribution.row_of_env) == {"real/web", "late/web", "flood-1/web"}
    # The evicted one waits in turn: its own lines would bring it back, in place of flood-1.
    assert fleet.count(lines("flood-0", "f0", 1, 0, 3.0), 3.0).counted == 1
    assert set(fleet.attribution.row_of_env) == {"real/web", "late/web", "flood-0/web"}
    # Canaries that count lines are never evicted: with none idle, the cap holds.
    assert fleet.count(lines("flood-8", "f8", 2, 0, 4.0), 4.0).counted == 0
    assert fleet.evicted_canaries == 2


def test_lines_held_before_a_refused_canarys_snapshot_admit_it_when_it_comes() -> None:
    # After a restart the view may read the canary's snapshot only after its first lines.
    fleet = Fleet(limits=FleetLimits(max_canaries=2, hold_s=5.0))
    for i in range(2):
        fleet.apply_rollout(RolloutState(f"flood-{i}", "web", f"f{i}", f"g{i}"), now=0.0)
    held = fleet.count(lines("late", "c9", 3, 0, 1.0), 1.0)
    assert (held.counted, held.held) == (0, 3)
    assert not fleet.apply_rollout(RolloutState("late", "web", "c9", "s9"), now=1.5)
    report = fleet.count(lines("late", "c9", 1, 0, 2.0), 2.0)
    assert (report.counted, report.unattributed, report.held) == (4, 0, 0)
    assert "late/web" in fleet.attribution.row_of_env


def test_a_real_canary_read_before_many_refused_ones_is_still_admitted_by_its_lines() -> None:
    # A restart reads the changelog's partitions interleaved: the real canary's snapshot may
    # come early, followed by many more refused than the cap. It must still be waiting.
    fleet = Fleet(limits=FleetLimits(max_canaries=2, max_waiting=100))
    for i in range(2):
        fleet.apply_rollout(RolloutState(f"flood-{i}", "web", f"f{i}", f"g{i}"), now=0.0)
    assert not fleet.apply_rollout(RolloutState("real", "web", "c9", "s9"), now=0.0)
    for i in range(2, 50):  # 48 refused after it: far more than the cap
        fleet.apply_rollout(RolloutState(f"flood-{i}", "web", f"f{i}", f"g{i}"), now=0.0)
    assert fleet.count(lines("real", "c9", 3, 0, 1.0), 1.0).counted == 3
    # The bound still holds: past max_waiting the oldest waiting canary is forgotten.
    small = Fleet(limits=FleetLimits(max_canaries=1, max_waiting=2))
    for name in ("a", "b", "c", "d"):
        small.apply_rollout(RolloutState(name, "web", f"c{name}", f"s{name}"), now=0.0)
    assert small.count(lines("b", "cb", 1, 0, 1.0), 1.0).counted == 0
    assert small.count(lines("d", "cd", 1, 0, 1.0), 1.0).counted == 1


def test_the_cap_is_deterministic_for_the_same_snapshots() -> None:
    states = [RolloutState(f"ns-{i}", "web", f"c{i}", f"s{i}") for i in range(50)]
    tracked = []
    for _ in range(2):
        fleet = Fleet(limits=FleetLimits(max_canaries=20))
        for state in states:
            fleet.apply_rollout(state, 0.0)
        tracked.append(sorted(fleet.attribution.row_of_env))
        assert fleet.refused_canaries == 30
    assert tracked[0] == tracked[1] == sorted(s.env for s in states[:20])


def test_only_rows_with_counted_lines_are_marked() -> None:
    fleet = Fleet()
    fleet.apply_rollout(RolloutState("a", "web", "c1", "s1"), now=0.0)
    fleet.apply_rollout(RolloutState("b", "web", "c2", "s2"), now=0.0)
    fleet.count(lines("a", "c1", 2, 0, 1.0), 1.0)
    marked = {fleet.attribution.states[r].env for r in np.flatnonzero(fleet.counted_rows)}  # type: ignore[union-attr]
    assert marked == {"a/web"}
    fleet.apply_rollout(RolloutState("a", "web", "c3", "s1"), now=2.0)  # a new revision
    assert not fleet.counted_rows.any()


def test_forget_stops_attribution_and_drops_the_evidence() -> None:
    fleet = Fleet(limits=FleetLimits(hold_s=0.0))
    fleet.apply_rollout(RolloutState("a", "web", "c1", "s1"), now=0.0)
    fleet.count(lines("a", "c1", 4, 0, 1.0), 1.0)
    fleet.forget("a/web")
    fleet.forget("never/seen")
    assert fleet.attribution.row_of_env == {}
    assert not fleet.counted_rows.any() and int(fleet.windows.window_sum.sum()) == 0
    assert fleet.count(lines("a", "c1", 2, 0, 2.0), 2.0).unattributed == 2


def test_a_canary_step_starts_a_latency_grace_and_shared_breakage_requests_a_hold() -> None:
    fleet = Fleet(event_time=PROCESSING_TIME)  # passes at t + 100: processing time
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1", canary_weight=20), now=0.0)
    row = fleet.attribution.row_of_env["shop/web"]
    assert fleet.engine.grace_until[row] == fleet.settings.latency_grace_s
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1", canary_weight=40), now=100.0)
    assert fleet.engine.grace_until[row] == 100.0 + fleet.settings.latency_grace_s
    # Stable healthy for a while, then both arms fail: HOLD, one pause request, no abort.
    holds = []
    for t in range(1, 60):
        errors = (0, 0) if t < 30 else (4, 12)
        fleet.count(
            lines("shop", "c1", 40, errors[0], t) + lines("shop", "s1", 60, errors[1], t), t
        )
        result, commands = fleet.evaluate(float(t) + 100.0)
        assert commands == []
        holds.extend(fleet.hold_requests)
    assert result.verdicts[0, row] == Verdict.HOLD
    assert [h.decision_id for h in holds] == ["shop/web@c1"]
    assert holds[0].reason == "SharedBreakageSuspected"


def test_a_named_cluster_is_in_the_command_and_its_decision_id() -> None:
    fleet = Fleet()
    state = RolloutState("shop", "web", "c1", "s1", canary_weight=20, cluster="eu-1")
    fleet.apply_rollout(state, now=0.0)
    commands = []
    for t in range(1, 30):
        fleet.count(lines("shop", "c1", 20, 10, t) + lines("shop", "s1", 80, 0, t), t)
        if commands := fleet.evaluate(float(t))[1]:
            break
    (command,) = commands
    assert (command.cluster, command.decision_id) == ("eu-1", "eu-1:shop/web@c1")


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
    # The bounds computed for many rows at once are those of each row alone.
    rows = fleet.verdict_codes()[0].tolist()
    alone = [fleet.verdict_of(row, fleet.last_pass).encode() for row in rows]  # type: ignore[arg-type]
    assert [s.encode() for s in fleet.pass_state(rows)] == alone
    # A new revision starts again from nothing.
    fleet.apply_rollout(RolloutState("busy", "web", "c9", "s1", canary_weight=20), now=200.0)
    fleet.evaluate(200.0)
    assert {s.namespace: s.verdict for s in fleet.pass_state()}["busy"] == "inconclusive"
