"""Attribution: hashes to rows and arms, rows reused, evidence reset per revision."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streams.attribution import NOT_ATTRIBUTED, Attribution
from streams.events import RolloutState
from streams.requestlog import KEY_DTYPE, pack_key
from streams.windows import ARM_CANARY, ARM_STABLE


def canary(ns: str, current: str, stable: str = "s0", weight: int = 10) -> RolloutState:
    return RolloutState(ns, "web", current, stable, canary_weight=weight)


def test_canary_and_stable_hashes_map_to_one_row() -> None:
    a = Attribution(capacity=2)
    change = a.apply(canary("shop", "c1"))
    (row,) = change.started
    assert a.lookup("shop", "c1") == row * 2 + ARM_CANARY
    assert a.lookup("shop", "s0") == row * 2 + ARM_STABLE
    assert a.lookup("other", "c1") == NOT_ATTRIBUTED
    assert a.active_rows().tolist() == [row]


def test_a_weight_step_keeps_the_row_and_its_evidence() -> None:
    a = Attribution()
    (row,) = a.apply(canary("shop", "c1", weight=10)).started
    change = a.apply(canary("shop", "c1", weight=50))
    assert change.started == [] and change.ended == []
    state = a.states[row]
    assert state is not None and state.canary_weight == 50


def test_new_revision_restarts_and_promotion_frees_the_row() -> None:
    a = Attribution()
    (row,) = a.apply(canary("shop", "c1")).started
    change = a.apply(canary("shop", "c2"))
    assert change.ended == [row] and len(change.started) == 1
    assert a.lookup("shop", "c1") == NOT_ATTRIBUTED
    promoted = a.apply(RolloutState("shop", "web", "c2", "c2"))
    assert promoted.started == [] and len(promoted.ended) == 1
    assert a.lookup("shop", "c2") == NOT_ATTRIBUTED
    assert a.active_rows().size == 0


def test_capacity_grows_and_rows_are_reused() -> None:
    a = Attribution(capacity=2)
    rows = [a.apply(canary(f"ns{i}", f"c{i}", f"s{i}")).started[0] for i in range(5)]
    assert sorted(rows) == list(range(5))
    assert a.capacity >= 5
    a.apply(RolloutState("ns0", "web", "c0", "c0"))
    reused = a.apply(canary("ns9", "c9", "s9")).started[0]
    assert reused == rows[0]


def test_lookup_keys_agrees_with_lookup_as_rollouts_change() -> None:
    import numpy as np

    from streams.requestlog import KEY_DTYPE, pack_key

    a = Attribution(capacity=2)
    probes = [("shop", "c1"), ("shop", "s0"), ("shop", "c2"), ("other", "c1"), ("shop", "c")]

    def agree() -> None:
        keys = np.array([pack_key(ns, h) for ns, h in probes], dtype=KEY_DTYPE)
        assert a.lookup_keys(keys).tolist() == [a.lookup(ns, h) for ns, h in probes]

    agree()
    a.apply(canary("shop", "c1"))
    agree()
    a.apply(canary("other", "c9", "c1"))
    agree()
    a.apply(canary("shop", "c2"))
    agree()
    a.apply(RolloutState("shop", "web", "c2", "c2"))
    agree()
    assert a.lookup_keys(np.zeros(0, dtype=KEY_DTYPE)).size == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 3), st.integers(0, 3), st.booleans()),
        max_size=300,
    ),
    st.integers(1, 40),
    st.integers(0, 50),
)
def test_lookup_keys_agrees_with_lookup_through_bursts_of_changes(
    ops: list[tuple[int, int, int, bool]], every: int, rebuild_after: int
) -> None:
    """The packed index (a large one plus small ones of recent changes) answers as the dict."""
    attribution = Attribution(capacity=4, rebuild_after=rebuild_after)
    probes = [(f"ns-{n}", f"h{h}") for n in range(31) for h in range(8)]
    keys = np.array([pack_key(ns, h) for ns, h in probes], dtype=KEY_DTYPE)
    for i, (n, canary, stable, ends) in enumerate(ops):
        current, stable_hash = f"h{canary}", f"h{stable + 4}"
        attribution.apply(
            RolloutState(f"ns-{n}", "web", current, stable_hash if not ends else current)
        )
        if i % every == 0:
            expected = [attribution.lookup(ns, h) for ns, h in probes]
            assert attribution.lookup_keys(keys).tolist() == expected
    expected = [attribution.lookup(ns, h) for ns, h in probes]
    assert attribution.lookup_keys(keys).tolist() == expected


def test_an_ended_rollout_frees_its_row() -> None:
    a = Attribution()
    (row,) = a.apply(canary("shop", "c1")).started
    gone = dataclasses.replace(canary("shop", "c1"), ended=True)  # deleted, or gone at a relist
    change = a.apply(gone)
    assert change.ended == [row] and change.started == []
    assert a.lookup("shop", "c1") == NOT_ATTRIBUTED
    assert a.active_rows().tolist() == []


def test_rows_grow_to_the_canary_cap_not_past_it() -> None:
    a = Attribution(capacity=4, max_rows=6)
    for i in range(6):
        a.apply(canary(f"ns{i}", "c1"))
    assert a.capacity == 6  # not 8: every per-row array of the fleet is this long
    a.apply(canary("ns6", "c1"))  # past the cap (the fleet refuses first) it still works
    assert a.capacity == 12 and a.lookup("ns6", "c1") != NOT_ATTRIBUTED
