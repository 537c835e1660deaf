"""Event time: the same recorded traffic gives the same decisions live and drained as a backlog."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import FUTURE, LATE, EventTimeSettings, SliceRing
from streams.fleet import Fleet

SLICE_S = 0.5
EVENT = EventTimeSettings(enabled=True, slice_s=SLICE_S, allowed_lateness_s=2.0, clock_skew_s=30.0)
START = 1_000_000.0  # epoch seconds of the recording's start
SECONDS = 300


def rollouts() -> list[RolloutState]:
    """shop-a and shop-d bad canaries (d starts at 200 s), shop-b a platform incident at
    100-130 s on both arms, shop-c healthy."""
    return [
        RolloutState(ns, "web", f"c-{ns}", f"s-{ns}", canary_weight=20, observed_at=START + at)
        for ns, at in (("shop-a", 0.0), ("shop-b", 0.0), ("shop-c", 0.0), ("shop-d", 200.0))
    ]


def recording(seed: int = 7) -> list[tuple[float, bytes]]:
    """(arrival time, line) in arrival order: 50 requests/s per environment, 20 % canary,
    delays up to 1.5 s, 1 % delayed 5 s (late), a few stamped far in the future."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, bytes]] = []
    for second in range(SECONDS):
        for ns in ("shop-a", "shop-b", "shop-c", "shop-d"):
            if ns == "shop-d" and second < 200:
                continue
            n = 50
            ts = START + second + rng.random(n)
            canary = rng.random(n) < 0.2
            rate = np.where(canary & (ns in ("shop-a", "shop-d")), 0.08, 0.005)
            if ns == "shop-b" and 100 <= second < 130:
                rate = np.full(n, 0.4)
            bad = rng.random(n) < rate
            delay = rng.random(n) * 1.5 + np.where(rng.random(n) < 0.01, 5.0, 0.0)
            for i in range(n):
                pod_hash = f"c-{ns}" if canary[i] else f"s-{ns}"
                stamp = float(ts[i]) + (1e6 if rng.random() < 0.001 else 0.0)
                line = RequestLine(
                    stamp, ns, f"web-{pod_hash}", pod_hash, 503 if bad[i] else 200, 20
                )
                out.append((float(ts[i] + delay[i]), encode_request_line(line)))
    out.sort(key=lambda pair: pair[0])
    return out


PARTITION = {"shop-a": 0, "shop-b": 1, "shop-c": 0, "shop-d": 1}


def partition_of(line: bytes) -> int:
    return next(p for ns, p in PARTITION.items() if f'"{ns}"'.encode() in line)


def count_by_partition(fleet: Fleet, lines: list[bytes], now: float) -> None:
    """Count as the worker does: each partition's lines of a fetch, partition by partition."""
    for p in (0, 1):
        mine = [line for line in lines if partition_of(line) == p]
        if mine:
            fleet.count_columns(fleet.decode(mine), now, p)


def decisions(fleet: Fleet, commands: list[str]) -> dict[str, float]:
    return {d: fleet.decision_event_times[d] for d in commands}


def run_live(traffic: list[tuple[float, bytes]]) -> tuple[Fleet, dict[str, float]]:
    """Read at its own pace: a fetch of what arrived in each 0.25 s, then a pass."""
    fleet = Fleet(event_time=EVENT)
    pending = list(rollouts())
    aborted: list[str] = []
    i = 0
    for step in range(1, SECONDS * 4 + 80):
        now = START + step * 0.25
        while pending and pending[0].observed_at <= now:
            fleet.apply_rollout(pending.pop(0), now)
        batch = []
        while i < len(traffic) and traffic[i][0] < now:
            batch.append(traffic[i][1])
            i += 1
        count_by_partition(fleet, batch, now)
        aborted += [c.decision_id for c in fleet.evaluate(now)[1]]
    return fleet, decisions(fleet, aborted)


def run_backlog(
    traffic: list[tuple[float, bytes]], one_partition_first: bool = False
) -> tuple[Fleet, dict[str, float]]:
    """The worker was down: every snapshot, then the whole log in one batch (or partition 0's
    whole log and a pass, then partition 1's), then a pass."""
    # Partition 1 may lag partition 0 by the whole recording.
    fleet = Fleet(event_time=replace(EVENT, max_partition_lag_s=SECONDS + 60.0))
    now = START + SECONDS + 600.0
    for state in rollouts():
        fleet.apply_rollout(state, now)
    lines = [line for _, line in traffic]
    aborted: list[str] = []
    if one_partition_first:
        fleet.assign_sources({0, 1}, now)
        for p in (0, 1):
            mine = [line for line in lines if partition_of(line) == p]
            fleet.count_columns(fleet.decode(mine), now, p)
            aborted += [c.decision_id for c in fleet.evaluate(now)[1]]
    else:
        count_by_partition(fleet, lines, now)
    aborted += [c.decision_id for c in fleet.evaluate(now)[1]]
    aborted += [c.decision_id for c in fleet.evaluate(now + 60.0)[1]]  # idle: all closed
    return fleet, decisions(fleet, aborted)


def test_backlog_gives_the_same_decisions_as_live() -> None:
    traffic = recording()
    live_fleet, live = run_live(traffic)
    backlog_fleet, backlog = run_backlog(traffic)
    assert set(live) == {"shop-a/web@c-shop-a", "shop-d/web@c-shop-d"}
    assert set(backlog) == set(live)
    for decision_id, at in live.items():
        assert abs(backlog[decision_id] - at) <= SLICE_S, decision_id
    # shop-d was aborted on its own evidence, after its canary started.
    assert live["shop-d/web@c-shop-d"] > START + 200.0
    # The same lines were refused, for the same reasons, and some of each.
    assert live_fleet.outside_event_time == backlog_fleet.outside_event_time
    assert live_fleet.outside_event_time[LATE] > 0 and live_fleet.outside_event_time[FUTURE] > 0
    np.testing.assert_array_equal(live_fleet.engine.cumulative, backlog_fleet.engine.cumulative)
    # Partition 0 drained to its end, and a pass, before partition 1 is read: partition 1's
    # watermark (assigned, no line yet) holds the slices open; one watermark per worker would
    # have closed them and dropped partition 1's lines as late.
    serial_fleet, serial = run_backlog(traffic, one_partition_first=True)
    assert serial == backlog
    assert serial_fleet.outside_event_time == live_fleet.outside_event_time


def test_processing_time_backlog_bends_the_test() -> None:
    """The wrong variant (today's processing-time blocks) does not give the live decisions on a
    backlog: the property above can fail."""
    traffic = recording()
    fleet = Fleet(event_time=EventTimeSettings(enabled=False))
    now = START + SECONDS + 600.0
    for state in rollouts():
        fleet.apply_rollout(state, now)
    fleet.count([line for _, line in traffic], now)
    aborted = {c.decision_id for c in fleet.evaluate(now)[1]}
    assert aborted != {"shop-a/web@c-shop-a", "shop-d/web@c-shop-d"}


def ring_add(ring: SliceRing, ts: list[float], now: float, source: int = 0, row: int = 0) -> int:
    n = len(ts)
    rows = np.full(n, row, dtype=np.intp)
    arms = np.zeros(n, dtype=np.intp)
    no = np.zeros(n, dtype=np.bool_)
    return ring.add(rows, arms, no, no, np.asarray(ts), now, source)


def closed(ring: SliceRing, now: float) -> list[tuple[int, int]]:
    """(slice, requests) of the slices closed at `now`."""
    return [(k, int(c[0].sum() + c[3].sum())) for k, _, c in ring.take_closed(now).groups()]


SKEW = 1e9  # the ring tests' clocks start at 0: no line is `future` unless said


def test_watermark_closes_slices_in_order_and_drops_late_and_future() -> None:
    ring = SliceRing(2, EventTimeSettings(slice_s=1.0, allowed_lateness_s=2.0))
    assert ring_add(ring, [10.2, 11.5, 10.9], 12.0) == 3
    assert closed(ring, 12.0) == []  # watermark 9.5: nothing closed yet
    assert ring_add(ring, [13.1], 13.2) == 1
    assert closed(ring, 13.2) == [(10, 2)]  # watermark 11.1: slice 10 closes
    assert ring_add(ring, [10.5, 11.0], 13.3) == 1  # 10.5 is late: slice 10 closed
    assert ring.dropped == {LATE: 1, FUTURE: 0}
    assert ring_add(ring, [100.0], 14.0) == 0  # 86 s ahead of the clock
    assert ring.dropped[FUTURE] == 1
    assert ring_add(ring, [500.0], 600.0) == 1
    assert closed(ring, 600.0) == [(11, 2), (13, 1)]  # empty slices are not handed over
    assert closed(ring, 700.0) == [(500, 1)]  # idle: every open slice closes


def test_each_partition_has_its_own_watermark_and_an_idle_one_holds_nothing() -> None:
    ring = SliceRing(
        2, EventTimeSettings(slice_s=1.0, allowed_lateness_s=2.0, idle_s=10.0, clock_skew_s=SKEW)
    )
    ring_add(ring, [100.0, 101.0, 130.0], 0.0, source=0, row=0)  # partition 0 runs ahead
    ring_add(ring, [100.5], 0.0, source=1, row=1)  # partition 1 lags: it holds slice 100 open
    assert closed(ring, 1.0) == []
    # Partition 1's next lines are not late (its own watermark), though partition 0's is 128.
    assert ring_add(ring, [100.2, 104.0], 2.0, source=1, row=1) == 2
    assert ring.dropped[LATE] == 0
    assert closed(ring, 2.0) == [(100, 3), (101, 1)]  # the lowest watermark, partition 1's: 102
    # Partition 1 goes quiet: after idle_s it holds nothing, partition 0's watermark closes.
    ring_add(ring, [131.0], 12.0, source=0)
    assert closed(ring, 12.5) == [(104, 1)]  # partition 0's watermark is 129
    assert ring_add(ring, [105.0], 13.0, source=1, row=1) == 0  # back, but its slice closed
    assert ring.dropped[LATE] == 1
    # A partition that moved to another worker no longer holds slices either.
    ring_add(ring, [140.0], 30.0, source=0)
    ring_add(ring, [131.5], 30.0, source=2)
    assert closed(ring, 30.0) == []
    ring.drop_sources({2})
    assert closed(ring, 30.0) == [(130, 1), (131, 2)]
    # An assigned partition that has delivered nothing yet holds the slices until it is idle.
    ring.assign({0, 3}, 30.0)
    assert set(ring.max_ts) == {0, 3}  # partition 1, no longer assigned, is forgotten
    ring_add(ring, [150.0], 31.0, source=0)
    assert closed(ring, 31.0) == []
    assert closed(ring, 40.5) == [(140, 1)]  # partition 3 idle: partition 0's watermark 148


def test_the_slowest_partition_holds_slices_at_most_max_partition_lag_s() -> None:
    settings = EventTimeSettings(
        slice_s=1.0, allowed_lateness_s=2.0, max_partition_lag_s=10.0, clock_skew_s=SKEW
    )
    ring = SliceRing(1, settings)
    ring_add(ring, [100.0], 0.0, source=1)
    ring_add(ring, [100.0, 150.0], 0.0, source=0)
    assert closed(ring, 0.0) == [(100, 2)]  # frontier 150 - 2 - 10
    assert ring_add(ring, [101.0], 0.5, source=1) == 0
    assert ring.dropped[LATE] == 1


def test_slices_of_a_row_export_and_import_by_event_time() -> None:
    settings = EventTimeSettings(slice_s=1.0)
    ring = SliceRing(3, settings)
    rows = np.asarray([0, 2, 2], dtype=np.intp)
    arms = np.asarray([0, 1, 0], dtype=np.intp)
    bad = np.asarray([True, False, True])
    ring.add(rows, arms, bad, bad, np.asarray([5.0, 5.5, 6.0]), 6.0)
    data = ring.export_rows(np.asarray([2], dtype=np.intp))
    assert data.shape == (1, ring.row_width)
    fresh = SliceRing(1, settings)  # knows no watermark yet: takes the exporter's slices
    fresh.import_rows(np.asarray([0], dtype=np.intp), data)
    np.testing.assert_array_equal(fresh.export_rows(np.asarray([0], dtype=np.intp)), data)
    ahead = SliceRing(2, settings)  # its watermark passed slice 5: it is folded into slice 6
    ring_add(ahead, [8.5], 9.0, row=1)
    assert closed(ahead, 9.0) == []
    assert ahead.first_open == 6
    ahead.import_rows(np.asarray([0], dtype=np.intp), data)
    assert closed(ahead, 60.0) == [(6, 2), (8, 1)]  # row 0's two requests, in slice 6
    with pytest.raises(ValueError):
        ahead.import_rows(np.asarray([0], dtype=np.intp), data[:, 1:])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        EventTimeSettings(slice_s=0.0)
