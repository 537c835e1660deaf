"""Window counters: buckets by event time, expiry, pending increments."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streams.windows import (
    ARM_CANARY,
    ARM_STABLE,
    CANARY_ERRORS,
    CANARY_REQUESTS,
    STABLE_REQUESTS,
    STABLE_SLOW,
    FleetWindows,
)


def add(
    w: FleetWindows,
    rows: list[int],
    arms: list[int],
    errors: list[bool],
    slow: list[bool],
    ts: list[float],
    now: float,
) -> None:
    w.add(
        np.array(rows, dtype=np.intp),
        np.array(arms, dtype=np.intp),
        np.array(errors),
        np.array(slow),
        np.array(ts, dtype=np.float64),
        now,
    )


def test_counts_land_in_their_series_and_row() -> None:
    w = FleetWindows(4, bucket_s=1.0, buckets=10)
    add(
        w,
        [1, 1, 2],
        [ARM_CANARY, ARM_STABLE, ARM_STABLE],
        [True, False, False],
        [False, False, True],
        [100.0, 100.2, 100.5],
        now=100.5,
    )
    assert w.window_sum[CANARY_REQUESTS].tolist() == [0, 1, 0, 0]
    assert w.window_sum[CANARY_ERRORS].tolist() == [0, 1, 0, 0]
    assert w.window_sum[STABLE_REQUESTS].tolist() == [0, 1, 1, 0]
    assert w.window_sum[STABLE_SLOW].tolist() == [0, 0, 1, 0]
    assert (w.take_pending() == w.window_sum).all()
    assert not w.take_pending().any()


def test_old_buckets_expire_and_the_sum_follows() -> None:
    w = FleetWindows(1, bucket_s=1.0, buckets=5)
    add(w, [0], [ARM_CANARY], [False], [False], [10.0], now=10.0)
    add(w, [0], [ARM_CANARY], [False], [False], [12.0], now=12.0)
    w.advance(14.9)
    assert w.window_sum[CANARY_REQUESTS, 0] == 2
    w.advance(15.0)  # bucket 10 is now outside [11, 15]
    assert w.window_sum[CANARY_REQUESTS, 0] == 1
    w.advance(100.0)
    assert w.window_sum[CANARY_REQUESTS, 0] == 0


def test_late_and_future_lines_land_at_the_window_edges() -> None:
    w = FleetWindows(1, bucket_s=1.0, buckets=5)
    add(w, [0, 0], [ARM_CANARY, ARM_CANARY], [False, False], [False, False], [0.0, 999.0], now=50.0)
    assert w.window_sum[CANARY_REQUESTS, 0] == 2
    w.advance(50.99)
    assert w.window_sum[CANARY_REQUESTS, 0] == 2
    w.advance(51.0)  # the late line sat in the oldest bucket (46) and expires first
    assert w.window_sum[CANARY_REQUESTS, 0] == 1


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1), st.floats(0, 30)), max_size=60))
def test_window_sum_always_equals_the_buckets(events: list[tuple[int, int, float]]) -> None:
    w = FleetWindows(4, bucket_s=1.0, buckets=8)
    now = 0.0
    for row, arm, dt in events:
        now += dt
        add(w, [row], [arm], [False], [False], [now], now=now)
        assert (w.window_sum == w.window.sum(axis=2)).all()


def test_grow_and_clear_rows() -> None:
    w = FleetWindows(1, bucket_s=1.0, buckets=4)
    add(w, [0], [ARM_CANARY], [True], [False], [1.0], now=1.0)
    w.grow(3)
    assert w.capacity == 3 and w.window_sum[CANARY_ERRORS].tolist() == [1, 0, 0]
    w.clear_rows(np.array([0], dtype=np.intp))
    assert not w.window.any() and not w.window_sum.any() and not w.pending.any()
