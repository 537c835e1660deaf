"""Records handled at once, in order per key, committed up to the lowest unfinished one
(agents/inflight.py), without a broker: the commits are recorded as they are asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka.structs import TopicPartition

from agents.inflight import InFlight, Work
from agents.processes import poll_until_async

TP0, TP1 = TopicPartition("commands", 0), TopicPartition("commands", 1)


class Records:
    """Works that start, block until released, and note when they ran."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.commits: list[tuple[TopicPartition, int]] = []
        self.refuse_commits = False

    def work(self, name: str, *, fail: bool = False) -> Work:
        gate = self.gates[name] = asyncio.Event()

        async def run() -> None:
            self.started.append(name)
            await gate.wait()
            if fail:
                raise RuntimeError(f"{name} failed")
            self.finished.append(name)

        return run

    def release(self, name: str) -> None:
        self.gates[name].set()

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        if self.refuse_commits:
            return False
        self.commits.append((tp, offset))
        return True


def make(records: Records, concurrency: int = 16) -> InFlight:
    return InFlight(records.commit, concurrency=concurrency, read_ahead=4 * concurrency)


async def until(check: Callable[[], bool], what: str) -> None:
    async def done() -> bool:
        return check()

    await poll_until_async(done, 5, what)


async def test_different_keys_run_at_once_and_the_commit_waits_for_the_lowest() -> None:
    records = Records()
    inflight = make(records)
    for offset, key in enumerate(("a", "b", "c")):
        assert inflight.submit(TP0, 10 + offset, key, records.work(key))
    await until(lambda: records.started == ["a", "b", "c"], "all three started")
    records.release("c")
    records.release("b")
    await until(lambda: records.finished == ["c", "b"], "b and c done")
    assert records.commits == []  # a (offset 10) is not done: nothing is committed
    assert inflight.commit_point(TP0) == 10 and inflight.pending(TP0) == 1
    records.release("a")
    await until(lambda: records.commits == [(TP0, 13)], "the commit past all three")
    assert inflight.running == 0


async def test_one_keys_records_run_in_order() -> None:
    records = Records()
    inflight = make(records)
    inflight.submit(TP0, 0, "web", records.work("web-1"))
    inflight.submit(TP0, 1, "api", records.work("api-1"))
    inflight.submit(TP0, 2, "web", records.work("web-2"))
    await until(lambda: records.started == ["web-1", "api-1"], "web-1 and api-1")
    records.release("web-2")  # ready, but it must wait for web-1
    records.release("api-1")
    await until(lambda: records.finished == ["api-1"], "api-1")
    assert "web-2" not in records.started
    records.release("web-1")
    await until(lambda: records.finished == ["api-1", "web-1", "web-2"], "web in order")
    await until(lambda: records.commits[-1:] == [(TP0, 3)], "all committed")


async def test_at_most_concurrency_records_of_a_partition_run() -> None:
    records = Records()
    inflight = make(records, concurrency=2)
    for offset in range(4):
        inflight.submit(TP0, offset, f"k{offset}", records.work(f"k{offset}"))
    inflight.submit(TP1, 0, "other", records.work("other"))
    await until(lambda: len(records.started) == 3, "two of TP0 and TP1's one")
    assert sorted(records.started) == ["k0", "k1", "other"]  # TP1 has slots of its own
    records.release("k1")
    await until(lambda: "k2" in records.started, "k2 takes k1's slot")
    assert "k3" not in records.started
    assert not inflight.full(TP0)
    for offset in range(4, 9):
        inflight.submit(TP0, offset, f"k{offset}", records.work(f"k{offset}"))
    assert inflight.full(TP0)  # 9 submitted, k1 finished: read_ahead = 8 pending
    assert not inflight.full(TP1)


async def test_partitions_commit_independently() -> None:
    records = Records()
    inflight = make(records)
    inflight.submit(TP0, 5, "slow", records.work("slow"))
    inflight.submit(TP1, 7, "quick", records.work("quick"))
    inflight.submit(TP1, 8, "quick-2", records.work("quick-2"))
    records.release("quick-2")
    records.release("quick")
    await until(lambda: (TP1, 9) in records.commits, "TP1 committed")
    assert all(tp == TP1 for tp, _ in records.commits)


async def test_a_redelivered_offset_is_not_run_twice() -> None:
    records = Records()
    inflight = make(records)
    assert inflight.submit(TP0, 3, "web", records.work("first"))
    assert not inflight.submit(TP0, 3, "web", records.work("again"))
    records.release("first")
    await until(lambda: records.commits == [(TP0, 4)], "committed once")
    assert records.started == ["first"]


async def test_a_failure_is_raised_and_its_offset_never_committed() -> None:
    records = Records()
    inflight = make(records)
    inflight.submit(TP0, 0, "bad", records.work("bad", fail=True))
    inflight.submit(TP0, 1, "good", records.work("good"))
    records.release("good")
    records.release("bad")
    await until(lambda: inflight.running == 0, "both ended")
    with pytest.raises(RuntimeError, match="bad failed"):
        inflight.check()
    assert records.commits == []


async def test_a_refused_commit_is_tried_again_with_the_next_record() -> None:
    records = Records()
    inflight = make(records)
    inflight.submit(TP0, 0, "a", records.work("a"))
    inflight.submit(TP0, 1, "b", records.work("b"))
    records.refuse_commits = True
    records.release("a")
    await until(lambda: records.finished == ["a"], "a")
    records.refuse_commits = False
    records.release("b")
    await until(lambda: records.commits == [(TP0, 2)], "the later point")


async def test_a_revoked_partition_commits_nothing_more_and_a_redelivery_waits() -> None:
    """Revoked mid-command: it finishes but commits nothing; the record read again (the
    partition came back) starts afresh, after the one still running about the same key."""
    records = Records()
    inflight = make(records)
    inflight.submit(TP0, 0, "web", records.work("old"))
    await until(lambda: records.started == ["old"], "old started")
    inflight.revoke([TP0])
    assert inflight.submit(TP0, 0, "web", records.work("new"))  # a fresh partition
    records.release("new")
    await asyncio.sleep(0)  # a chance to run, which it must not take yet
    assert records.started == ["old"]
    records.release("old")
    await until(lambda: records.finished == ["old", "new"], "both, in order")
    await until(lambda: inflight.running == 0, "done")
    assert records.commits == [(TP0, 1)]  # the new one's commit only


async def test_cancel_stops_what_runs_and_commits_nothing() -> None:
    records = Records()
    inflight = make(records)
    inflight.submit(TP0, 0, "a", records.work("a"))
    inflight.submit(TP0, 1, "a", records.work("a2"))
    await until(lambda: records.started == ["a"], "a")
    await inflight.drain(0.05)  # a stays blocked: drain gives up after its grace
    await inflight.cancel()
    assert inflight.running == 0 and records.commits == [] and records.finished == []
    inflight.check()  # cancelled is not failed
