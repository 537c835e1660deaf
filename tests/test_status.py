"""`canarywatch status` / `explain` logic (streams/status.py) on snapshots of a real Fleet."""

from __future__ import annotations

import json

from streams.events import RolloutState
from streams.fleet import Fleet
from streams.promotion import VerdictSnapshot
from streams.status import explain, history, row_of, status_items, status_rows, status_rows_json
from tests.test_fleet import lines


def judged_fleet() -> Fleet:
    """busy (passes), bad (aborts), quiet (inconclusive), platform (stable fails too)."""
    fleet = Fleet()
    for ns, c, s in (("busy", "c1", "s1"), ("bad", "c2", "s2"), ("quiet", "c3", "s3"),
                     ("plat", "c4", "s4")):  # fmt: skip
        fleet.apply_rollout(
            RolloutState(ns, "web", c, s, step_index=1, canary_weight=20, release=f"{ns}:2"), 0.0
        )
    for t in range(1, 121):
        batch = lines("busy", "c1", 40, 0, t) + lines("busy", "s1", 160, 0, t)
        batch += lines("bad", "c2", 40, 10, t) + lines("bad", "s2", 160, 0, t)
        batch += lines("plat", "c4", 10, 4, t) + lines("plat", "s4", 40, 16, t)
        if t % 30 == 0:
            batch += lines("quiet", "c3", 1, 0, t) + lines("quiet", "s3", 4, 0, t)
        fleet.count(batch, float(t))
        fleet.evaluate(float(t))
        if {s.namespace: s.verdict for s in fleet.pass_state()}["busy"] == "pass":
            break
    return fleet


def test_rows_are_sorted_by_urgency_and_filtered() -> None:
    fleet = judged_fleet()
    snaps = fleet.pass_state()
    now = snaps[0].decided_at
    rows = status_rows(snaps, now)
    assert [r.namespace for r in rows] == ["bad", "plat", "quiet", "busy"], rows
    assert [r.verdict for r in rows] == ["abort", "platform", "inconclusive", "pass"]
    assert rows[0].step == 1 and rows[0].weight == 20 and rows[0].release == "bad:2"
    assert status_rows(snaps, now, verdicts=("pass",))[0].namespace == "busy"
    assert [r.namespace for r in status_rows(snaps, now, namespaces=("quiet", "bad"))] == [
        "bad",
        "quiet",
    ]
    assert [r.namespace for r in status_rows(snaps, now, releases=("plat",))] == ["plat"]
    # A worker that stopped reporting: stale, right after the aborts.
    assert status_rows(snaps, now + 60, verdicts=("stale",))[0].verdict == "stale"
    json.dumps([r.to_json() for r in rows], allow_nan=False)


def test_snapshot_codec_round_trips_and_ignores_unknown_fields() -> None:
    snap = judged_fleet().pass_state()[0]
    assert VerdictSnapshot.decode(snap.encode()) == snap
    data = json.loads(snap.encode())
    data["future_field"] = 1
    data["signals"][0]["future_signal_field"] = 2
    assert VerdictSnapshot.decode(json.dumps(data).encode()) == snap
    # An older writer's snapshot (no `extra`) still makes a row.
    del data["extra"]
    row = row_of(VerdictSnapshot.decode(json.dumps(data).encode()), snap.decided_at)
    assert row.step is None and row.verdict == snap.verdict


def test_explain_says_why_and_what_would_change_it() -> None:
    snaps = {s.namespace: s for s in judged_fleet().pass_state()}
    now = snaps["busy"].decided_at
    text = "\n".join(explain(snaps["quiet"], now))
    assert "INCONCLUSIVE" in text and "An abort needs >= " in text
    assert "more canary errors (5xx)" in text and "without slow requests" in text
    assert "passes in about" in text
    assert "Aborted:" in "\n".join(explain(snaps["bad"], now))
    assert "Platform:" in "\n".join(explain(snaps["plat"], now))
    assert "Passed:" in "\n".join(explain(snaps["busy"], now))


def test_history_keeps_the_latest_revision_in_time_order() -> None:
    fleet = judged_fleet()
    snap = {s.namespace: s for s in fleet.pass_state()}["bad"]
    older = VerdictSnapshot(**{**snap.to_json(), "signals": snap.signals, "decided_at": 1.0,
                               "since_canary_start_s": 1.0})  # fmt: skip
    other = VerdictSnapshot(**{**snap.to_json(), "signals": snap.signals, "pod_hash": "old",
                               "decided_at": 0.5})  # fmt: skip
    h = history([snap, other, older])
    assert h.t == [1.0, snap.since_canary_start_s] and h.verdicts[-1] == "abort"
    assert h.statistic[0][-1] >= h.threshold


def test_the_json_path_equals_the_rows_to_json_and_skips_what_it_cannot_read() -> None:
    fleet = judged_fleet()
    snaps = fleet.pass_state()
    items = [json.loads(s.encode()) for s in snaps]
    items.append({"namespace": "broken"})  # not a snapshot: left out by both
    now = snaps[0].decided_at
    for at, filters in (
        (now, {}),
        (now + 60, {}),  # stale
        (now, {"verdicts": ("pass", "abort")}),
        (now, {"namespaces": ("plat", "quiet")}),
        (now, {"releases": ("bad",)}),
    ):
        rows = status_rows_json(items, at, **filters)
        assert status_items(items, at, **filters) == [r.to_json() for r in rows]
        assert rows == status_rows(snaps, at, **filters)
    assert len(status_items(items, now)) == len(snaps) == 4
