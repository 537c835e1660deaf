"""Records of a consumer's partitions handled at once: one key's records in order, different
keys concurrently, each partition committed up to its lowest unfinished record.

The actuator (agents/actuator.py) submits each command it reads with its Rollout as the key: a
command waits for the one before it about the same Rollout, never for the others, and at most
`concurrency` commands of a partition are being handled at a time. A record's offset counts as
finished only once its work returned (applied, judged moot, dead-lettered); the offset committed
is the lowest one not finished (`streams.offsets.CommitPoint`), so a restart re-reads every
command not yet handled, and maybe some that were (harmless: they are judged again). Partitions
stay independent: each has its own slots, commit point and commit lock, and nothing waits for
another partition. A revoked partition's records still running finish but commit nothing; the
new owner (or this consumer, reassigned) reads them again, each after the same key's record
still running here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import partial

from aiokafka.structs import TopicPartition

from streams.offsets import CommitPoint

Work = Callable[[], Awaitable[None]]
# Commits `offset` (the next to read) on the partition; True once the broker accepted it.
Commit = Callable[[TopicPartition, int], Awaitable[bool]]


@dataclass(slots=True)
class _Partition:
    slots: asyncio.Semaphore
    offsets: CommitPoint = field(default_factory=CommitPoint)
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    revoked: bool = False


class InFlight:
    """The records submitted and not yet finished, as tasks; see the module docstring."""

    def __init__(self, commit: Commit, *, concurrency: int, read_ahead: int) -> None:
        if concurrency < 1 or read_ahead < 1:
            raise ValueError("concurrency and read_ahead must be at least 1")
        self._commit = commit
        self.concurrency = concurrency
        self.read_ahead = read_ahead
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._latest: dict[Hashable, asyncio.Task[None]] = {}  # each key's last record's task
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    def submit(self, tp: TopicPartition, offset: int, key: Hashable | None, work: Work) -> bool:
        """Handle the record at `offset` of `tp` after `key`'s previous one (None: no key,
        no order); False when that offset is already in flight or finished here."""
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = _Partition(asyncio.Semaphore(self.concurrency))
        if not part.offsets.start(offset):
            return False
        before = self._latest.get(key) if key is not None else None
        task = asyncio.create_task(self._run(tp, part, offset, before, work))
        self._tasks.add(task)
        if key is not None:
            self._latest[key] = task
        task.add_done_callback(partial(self._done, key))
        return True

    async def _run(
        self,
        tp: TopicPartition,
        part: _Partition,
        offset: int,
        before: asyncio.Task[None] | None,
        work: Work,
    ) -> None:
        if before is not None:
            await asyncio.wait({before})  # its outcome is its own; only the order matters here
        async with part.slots:
            await work()
        part.offsets.finish(offset)
        async with part.commit_lock:  # one commit at a time per partition, the latest point
            point = part.offsets.to_commit()
            if point is not None and not part.revoked and await self._commit(tp, point):
                part.offsets.committed(point)

    def _done(self, key: Hashable | None, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if key is not None and self._latest.get(key) is task:
            del self._latest[key]
        if not task.cancelled() and self._failure is None:
            self._failure = task.exception()

    def check(self) -> None:
        """Raise what a record's work raised (its offset is never committed)."""
        if self._failure is not None:
            raise self._failure

    def pending(self, tp: TopicPartition) -> int:
        """Records of `tp` submitted and not finished."""
        part = self._partitions.get(tp)
        return 0 if part is None else part.offsets.pending

    def full(self, tp: TopicPartition) -> bool:
        """`read_ahead` records of `tp` in flight: read no more of it for now."""
        return self.pending(tp) >= self.read_ahead

    def commit_point(self, tp: TopicPartition) -> int | None:
        """The offset `tp` may be committed at now (None: nothing read of it)."""
        part = self._partitions.get(tp)
        return None if part is None else part.offsets.commit_point

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """The partitions went to another member: forget them, commit nothing more there."""
        for tp in tps:
            part = self._partitions.pop(tp, None)
            if part is not None:
                part.revoked = True

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def drain(self, within_s: float) -> None:
        """Wait up to `within_s` for the records in flight to finish (and commit)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within_s)

    async def cancel(self) -> None:
        """Stop every record in flight (not committed: read again after a restart)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
