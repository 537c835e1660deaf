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


def test_a_quiet_canary_is_checkpointed_once_its_lines_are_in_the_test_not_every_time() -> None:
    """An open test block (fewer than block_requests requests) changes only with new lines:
    the row is written after the lines and after the pass that takes them in, then not again."""
    fleet = Fleet(event_time=EventTimeSettings(enabled=False))  # a pass takes lines in
    fleet.apply_rollout(STATES[0], 0.0)
    fleet.count_columns(
        fleet.decode(lines("ns0", "c1", 2, 0, 1.0) + lines("ns0", "s1", 8, 0, 1.0)), 1.0, source=0
    )
    assert fleet.checkpoint_rows({0}).tolist() == [0]  # counted lines
    fleet.dirty[:] = False  # what EvidenceStore.checkpoint does once they are written
    assert fleet.checkpoint_rows({0}).tolist() == [0]  # not yet in the test: still pending
    fleet.evaluate(2.0)
    assert fleet.engine.test.block[:2, :, 0].sum() > 0  # an open block holds them
    assert fleet.checkpoint_rows({0}).tolist() == [0]  # the pass moved the test
    fleet.dirty[:] = False
    for t in range(3, 10):
        fleet.evaluate(float(t))
        assert fleet.checkpoint_rows({0}).tolist() == [], t
    fleet.count_columns(fleet.decode(lines("ns0", "c1", 1, 0, 10.0)), 10.0, source=0)
    assert fleet.checkpoint_rows({0}).tolist() == [0]


def test_a_full_block_waiting_for_a_quiet_spell_stays_listed_until_it_closes() -> None:
    """A block with block_requests requests and a recent bad one closes on a later pass
    without new lines: the row is checkpointed until it has."""
    fleet = Fleet(event_time=EventTimeSettings(enabled=False))  # a pass takes lines in
    fleet.apply_rollout(STATES[0], 0.0)
    fleet.count_columns(
        fleet.decode(lines("ns0", "c1", 40, 3, 1.0) + lines("ns0", "s1", 60, 0, 1.0)), 1.0, source=0
    )
    fleet.evaluate(1.0)
    test = fleet.engine.test
    assert (test.block[0, :, 0] + test.block[1, :, 0] >= test.block_requests).any()  # waits
    fleet.dirty[:] = False
    assert fleet.checkpoint_rows({0}).tolist() == [0]
    t = 1.0
    while (test.block[0, :, 0] + test.block[1, :, 0] >= test.block_requests).any():
        t += 1.0
        assert t < 600, "the block never closed"
        fleet.evaluate(t)
    fleet.dirty[:] = False  # written after the pass that closed it
    fleet.evaluate(t + 1.0)
    assert fleet.checkpoint_rows({0}).tolist() == []
