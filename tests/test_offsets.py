"""The commit point of records finishing out of order (streams/offsets.py)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import streams.offsets
from streams.offsets import CommitPoint


def test_doctest() -> None:
    assert doctest.testmod(streams.offsets).failed == 0


def test_nothing_started_nothing_to_commit() -> None:
    point = CommitPoint()
    assert point.commit_point is None and point.to_commit() is None and point.pending == 0


def test_the_point_stops_at_the_lowest_unfinished_offset() -> None:
    point = CommitPoint()
    for offset in range(10, 15):
        assert point.start(offset)
    assert point.commit_point == 10
    for offset in (14, 12, 11):
        point.finish(offset)
        assert point.commit_point == 10  # 10 is still being handled
    point.finish(10)
    assert point.commit_point == 13 and point.pending == 1
    point.finish(13)
    assert point.commit_point == 15 and point.pending == 0


def test_offsets_may_skip() -> None:
    """Transaction markers and compaction leave gaps: a gap is never waited for."""
    point = CommitPoint()
    point.start(3)
    point.start(7)
    point.finish(3)
    assert point.commit_point == 7
    point.finish(7)
    assert point.commit_point == 8


def test_a_redelivered_offset_is_refused_and_changes_nothing() -> None:
    point = CommitPoint()
    point.start(5)
    point.start(6)
    point.finish(5)
    assert not point.start(5)  # finished here
    assert not point.start(6)  # in flight here
    assert point.pending == 1 and point.commit_point == 6


def test_finishing_twice_or_unstarted_is_an_error() -> None:
    point = CommitPoint()
    point.start(1)
    point.finish(1)
    with pytest.raises(ValueError, match="not started or is already finished"):
        point.finish(1)
    with pytest.raises(ValueError, match="not started"):
        point.finish(2)


def test_to_commit_only_moves_forward() -> None:
    point = CommitPoint()
    point.start(0)
    point.start(1)
    assert point.to_commit() is None  # where reading started: nothing new to commit
    point.finish(1)
    assert point.to_commit() is None  # 0 is still being handled
    point.finish(0)
    assert point.to_commit() == 2
    point.committed(2)
    point.committed(1)  # a slower, older commit completing last does not count
    assert point.to_commit() is None


@given(
    st.lists(st.integers(1, 3), min_size=1, max_size=40).flatmap(
        lambda gaps: st.tuples(st.just(gaps), st.permutations(range(len(gaps))))
    )
)
def test_the_point_is_always_the_lowest_unfinished_or_one_past_the_last(
    case: tuple[list[int], list[int]],
) -> None:
    """Any offsets (with gaps), finished in any order: after every step, every started offset
    below the commit point is finished, and the point is itself unfinished (or one past the
    highest started): committing it never skips an unfinished record and re-reads as few
    finished ones as order allows."""
    gaps, order = case
    offsets = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    point = CommitPoint()
    for offset in offsets:
        assert point.start(offset)
    done: set[int] = set()
    for index in order:
        point.finish(offsets[index])
        done.add(offsets[index])
        unfinished = [o for o in offsets if o not in done]
        expected = min(unfinished) if unfinished else offsets[-1] + 1
        assert point.commit_point == expected
        assert point.pending == len(unfinished)
