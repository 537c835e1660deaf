"""Evidence rows out of one Fleet and into another: the test continues as if never moved."""

from __future__ import annotations

import numpy as np

from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import EventTimeSettings
from streams.fleet import Fleet


def lines(ns: str, pod_hash: str, n: int, errors: int, t: float) -> list[bytes]:
    return [
        encode_request_line(
            RequestLine(t, ns, f"web-{pod_hash}", pod_hash, 503 if i < errors else 200, 20.0)
        )
        for i in range(n)
    ]


STATES = [RolloutState(f"ns{i}", "web", "c1", "s1", canary_weight=20, epoch="1") for i in range(3)]


def step(fleet: Fleet, t: float) -> list[str]:
    for i, _ in enumerate(STATES):
        bad = 4 if i == 0 else 0  # ns0 is bad, the others healthy
        fleet.count_columns(
            fleet.decode(lines(f"ns{i}", "c1", 20, bad, t) + lines(f"ns{i}", "s1", 80, 0, t)),
            t,
            source=i % 2,
        )
    return [c.decision_id for c in fleet.evaluate(t)[1]]


def test_a_restored_fleet_decides_exactly_as_the_one_that_kept_running() -> None:
    kept, moved = Fleet(), Fleet()
    for s in reversed(STATES):  # other rows in the importer: rows are found by environment
        moved.apply_rollout(s, 0.0)
    for s in STATES:
        kept.apply_rollout(s, 0.0)
    for t in range(1, 4):
        assert step(kept, float(t)) == []
    rows = kept.checkpoint_rows({0, 1})
    assert sorted(rows.tolist()) == [0, 1, 2]
    head, data = kept.export_rows(rows)
    envs = [kept.attribution.states[r].env for r in rows.tolist()]
    target = np.asarray([moved.attribution.row_of_env[e] for e in envs], dtype=np.intp)
    moved.import_rows(target, head, data, source=0)
    assert np.array_equal(moved.engine.cumulative[:, target], kept.engine.cumulative[:, rows])
    assert np.array_equal(moved.windows.window_sum[:, target], kept.windows.window_sum[:, rows])
    a, b = [], []
    for t in range(4, 40):
        a += step(kept, float(t))
        b += step(moved, float(t))
    assert a == b == ["ns0/web@c1#1"]
    r0, m0 = kept.attribution.row_of_env["ns0/web"], moved.attribution.row_of_env["ns0/web"]
    assert np.allclose(kept.engine.test.log_e_ratio[:, r0], moved.engine.test.log_e_ratio[:, m0])


def test_dropping_a_source_forgets_only_its_rows() -> None:
    fleet = Fleet(event_time=EventTimeSettings(enabled=False))
    for s in STATES:
        fleet.apply_rollout(s, 0.0)
    step(fleet, 1.0)
    assert fleet.drop_sources({1}, 2.0) == 1
    assert fleet.row_source.tolist()[:3] == [0, -1, 0]
    assert fleet.engine.cumulative[:, 1].sum() == 0 and fleet.engine.cumulative[:, 0].sum() > 0


def test_no_rows_export_as_an_empty_matrix() -> None:
    fleet = Fleet()
    _head, data = fleet.export_rows(np.zeros(0, dtype=np.intp))
    assert data.shape == (0, fleet.row_width)


def test_open_event_time_slices_move_with_their_rows() -> None:
    event = EventTimeSettings(enabled=True, slice_s=0.5, allowed_lateness_s=2.0)
    kept, moved = Fleet(event_time=event), Fleet(event_time=event)
    for s in reversed(STATES):
        moved.apply_rollout(s, 0.0)
    for s in STATES:
        kept.apply_rollout(s, 0.0)
    for t in range(1, 4):
        assert step(kept, float(t)) == []
    assert kept.slices is not None and kept.slices.open_rows()[:3].all()  # lines in open slices
    rows = kept.checkpoint_rows({0, 1})
    head, data = kept.export_rows(rows)
    assert data.shape[1] == moved.row_width
    envs = [kept.attribution.states[r].env for r in rows.tolist()]
    target = np.asarray([moved.attribution.row_of_env[e] for e in envs], dtype=np.intp)
    moved.import_rows(target, head, data, source=0)
    a, b = [], []
    for t in range(4, 60):
        a += step(kept, float(t))
        b += step(moved, float(t))
    assert a == b == ["ns0/web@c1#1"]
    assert kept.decision_event_times == moved.decision_event_times
    assert np.array_equal(moved.engine.cumulative[:, target], kept.engine.cumulative[:, rows])
