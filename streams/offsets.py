"""The commit point of one partition whose records finish out of order.

Records are started in offset order (as a consumer reads them) and finish in any order; the
offset that may be committed is the lowest one started and not yet finished, or one past the
highest started when none is pending: every record below it is finished, so a restart from it
re-reads only unfinished (or later) records. Offsets may skip (compaction, transaction markers).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque


class CommitPoint:
    """Started offsets, finished ones, and the commit point they allow.

    >>> point = CommitPoint()
    >>> point.start(5), point.start(6), point.start(9)
    (True, True, True)
    >>> point.finish(6); point.finish(9); point.commit_point
    5
    >>> point.finish(5); point.commit_point
    10
    """

    __slots__ = ("_committed", "_next", "_open", "_order")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # started, in offset order, from the first unfinished
        self._open: set[int] = set()  # started and not finished
        self._next: int | None = None  # one past the highest offset started
        self._committed: int | None = None

    def start(self, offset: int) -> bool:
        """A record read: False (and nothing changes) if it is not beyond every one started so
        far, a redelivery of one in flight or finished here."""
        if self._next is not None and offset < self._next:
            return False
        self._order.append(offset)
        self._open.add(offset)
        if self._next is None:  # where reading started: committed already, or the reset point
            self._committed = offset
        self._next = offset + 1
        return True

    def finish(self, offset: int) -> None:
        """A started record handled (applied, judged moot, dead-lettered)."""
        if offset not in self._open:
            raise ValueError(f"offset {offset} was not started or is already finished")
        self._open.remove(offset)
        while self._order and self._order[0] not in self._open:
            self._order.popleft()

    @property
    def pending(self) -> int:
        """Records started and not finished."""
        return len(self._open)

    @property
    def commit_point(self) -> int | None:
        """The offset to commit (the next one to read after a restart); None before any start."""
        return self._order[0] if self._order else self._next

    def to_commit(self) -> int | None:
        """The commit point if it is beyond the last one `committed`, else None."""
        point = self.commit_point
        if point is None or (self._committed is not None and point <= self._committed):
            return None
        return point

    def committed(self, offset: int) -> None:
        """`offset` was committed (commits may complete out of order: the highest counts)."""
        if self._committed is None or offset > self._committed:
            self._committed = offset
