"""Event time: the same recorded traffic gives the same decisions live and drained as a backlog."""

from __future__ import annotations

import numpy as np
import pytest

from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import FUTURE, LATE, EventTimeSettings, SliceRing
from streams.fleet import Fleet
from streams.windows import Counts

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
        fleet.count(batch, now)
        aborted += [c.decision_id for c in fleet.evaluate(now)[1]]
    return fleet, decisions(fleet, aborted)


def run_backlog(traffic: list[tuple[float, bytes]]) -> tuple[Fleet, dict[str, float]]:
    """The worker was down: every snapshot, then the whole log in one batch, then a pass."""
    fleet = Fleet(event_time=EVENT)
    now = START + SECONDS + 600.0
    for state in rollouts():
        fleet.apply_rollout(state, now)
    fleet.count([line for _, line in traffic], now)
    aborted = [c.decision_id for c in fleet.evaluate(now)[1]]
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


def test_processing_time_backlog_bends_the_test() -> None:
    """The wrong variant (today's processing-time blocks) does not give the live decisions on a
    backlog: the property above can fail."""
    traffic = recording()
    fleet = Fleet()
    now = START + SECONDS + 600.0
    for state in rollouts():
        fleet.apply_rollout(state, now)
    fleet.count([line for _, line in traffic], now)
    aborted = {c.decision_id for c in fleet.evaluate(now)[1]}
    assert aborted != {"shop-a/web@c-shop-a", "shop-d/web@c-shop-d"}


def test_watermark_closes_slices_in_order_and_drops_late_and_future() -> None:
    ring = SliceRing(2, EventTimeSettings(enabled=True, slice_s=1.0, allowed_lateness_s=2.0))
    log: list[tuple[int, int]] = []

    def close(number: int, counts: Counts) -> None:
        log.append((number, int(counts[0].sum())))

    def add(ts: list[float], now: float) -> int:
        n = len(ts)
        zeros = np.zeros(n, dtype=np.intp)
        no = np.zeros(n, dtype=np.bool_)
        return ring.add(zeros, zeros, no, no, np.asarray(ts), now, close)

    assert add([10.2, 11.5, 10.9], 12.0) == 3
    assert log == []  # watermark 9.5: nothing closed yet
    # Watermark 11.1: slices 8 (the first open), 9 and 10 close; 8 and 9, empty before any
    # line, are skipped.
    assert add([13.1], 13.2) == 1
    assert log == [(10, 2)]
    assert add([10.5, 11.0], 13.3) == 1  # 10.5 is late: slice 10 closed
    assert ring.dropped == {LATE: 1, FUTURE: 0}
    assert add([100.0], 14.0) == 0  # 86 s ahead of the clock
    assert ring.dropped[FUTURE] == 1
    # A jump far ahead closes the ring on the way and skips the long empty gap.
    assert add([500.0], 600.0) == 1
    assert log[1:4] == [(11, 2), (12, 0), (13, 1)] and log[-1][0] < 500 - 2
    ring.close_all(close)
    assert log[-1] == (500, 1)


def test_slices_of_a_row_export_and_import_by_event_time() -> None:
    settings = EventTimeSettings(enabled=True, slice_s=1.0)
    ring = SliceRing(3, settings)
    rows = np.asarray([0, 2, 2], dtype=np.intp)
    arms = np.asarray([0, 1, 0], dtype=np.intp)
    bad = np.asarray([True, False, True])
    ring.add(rows, arms, bad, bad, np.asarray([5.0, 5.5, 6.0]), 6.0, lambda n, c: None)
    data = ring.export_rows(np.asarray([2], dtype=np.intp))
    assert data.shape == (1, ring.row_width)
    fresh = SliceRing(1, settings)  # knows no watermark yet: takes the exporter's
    fresh.import_rows(np.asarray([0], dtype=np.intp), data)
    np.testing.assert_array_equal(fresh.ring[:, :, 0], ring.ring[:, :, 2])
    assert fresh.first_open == ring.first_open
    ahead = SliceRing(1, settings)  # its watermark passed slice 5: it is folded into slice 6
    ahead.add(
        *(np.zeros(1, dtype=np.intp),) * 2,
        *(np.zeros(1, dtype=np.bool_),) * 2,
        np.asarray([8.5]),
        9.0,
        lambda n, c: None,
    )
    assert ahead.first_open == 6
    ahead.import_rows(np.asarray([0], dtype=np.intp), data)
    assert ahead.ring[:, 6 % ahead.size, 0].sum() == 4  # two requests, one error, one slow
    with pytest.raises(ValueError):
        ahead.import_rows(np.asarray([0], dtype=np.intp), data[:, 1:])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        EventTimeSettings(slice_s=0.0)
