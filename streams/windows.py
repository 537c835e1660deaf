"""Per-environment counters in numpy: sliding time-bucket windows and increments per pass.

Where a request becomes a count. Rows are environments with a canary in progress (see
`streams.attribution`); every request adds 1 to its arm's `requests` series and, when it is bad,
to the arm's `errors` or `slow` series. Pure: time comes in as an argument.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# Series: the first axis of every counter array.
CANARY_REQUESTS, CANARY_ERRORS, CANARY_SLOW, STABLE_REQUESTS, STABLE_ERRORS, STABLE_SLOW = range(6)
N_SERIES = 6
SERIES_NAMES = (
    "canary_requests",
    "canary_errors",
    "canary_slow",
    "stable_requests",
    "stable_errors",
    "stable_slow",
)
ARM_CANARY, ARM_STABLE = 0, 1
SERIES_PER_ARM = 3

Counts = NDArray[np.int64]  # shape [N_SERIES, capacity]


class FleetWindows:
    """Counters for `capacity` environments.

    `window` holds `buckets` time buckets of `bucket_s` seconds per series and row (a ring
    indexed by absolute bucket number); `window_sum` is kept in step so a pass reads totals in
    O(rows). `pending` collects counts since the last `take_pending`, for the sequential test.
    """

    def __init__(self, capacity: int, *, bucket_s: float = 2.0, buckets: int = 30) -> None:
        if capacity < 1 or buckets < 1 or bucket_s <= 0:
            raise ValueError("capacity, buckets and bucket_s must be positive")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self.window = np.zeros((N_SERIES, capacity, buckets), dtype=np.uint32)
        self.window_sum: Counts = np.zeros((N_SERIES, capacity), dtype=np.int64)
        self.pending: Counts = np.zeros((N_SERIES, capacity), dtype=np.int64)
        self._head: int | None = None  # absolute number of the newest bucket

    @property
    def capacity(self) -> int:
        return int(self.window.shape[1])

    @property
    def head(self) -> int | None:
        """Absolute number of the newest bucket (None before the first `advance`)."""
        return self._head

    @property
    def row_width(self) -> int:
        return N_SERIES * self.buckets + N_SERIES

    def export_rows(self, rows: NDArray[np.intp]) -> NDArray[np.float64]:
        """[rows, width]: each row's buckets, oldest first, ending at `head`, then `pending`.

        `window_sum` follows from the buckets. Import with the same `head` (`import_rows`):
        the buckets land where their absolute time says, in the importer's ring.
        """
        head = self._head if self._head is not None else 0
        order = np.arange(head - self.buckets + 1, head + 1) % self.buckets
        aged = self.window[:, rows, :][:, :, order]  # [series, rows, age]
        buckets = aged.transpose(1, 0, 2).reshape(rows.size, N_SERIES * self.buckets)
        buckets = buckets.astype(np.float64)
        return np.concatenate([buckets, self.pending[:, rows].T.astype(np.float64)], axis=1)

    def import_rows(self, rows: NDArray[np.intp], data: NDArray[np.float64], head: int) -> None:
        """Put exported rows back; buckets older than this ring's window are dropped, buckets
        newer than its head are counted in the head bucket."""
        if data.shape[1] != self.row_width:
            raise ValueError(f"window rows have {data.shape[1]} values, expected {self.row_width}")
        if self._head is None:
            self._head = head
        n = rows.size
        aged = data[:, : N_SERIES * self.buckets].reshape(n, N_SERIES, self.buckets)
        self.window[:, rows, :] = 0
        for age in range(self.buckets):
            number = min(head - self.buckets + 1 + age, self._head)
            if number <= self._head - self.buckets:
                continue
            self.window[:, rows, number % self.buckets] += aged[:, :, age].T.astype(np.uint32)
        self.window_sum[:, rows] = self.window[:, rows, :].sum(axis=2, dtype=np.int64)
        self.pending[:, rows] = data[:, N_SERIES * self.buckets :].T.astype(np.int64)

    @property
    def span_s(self) -> float:
        return self.bucket_s * self.buckets

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        extra = capacity - self.capacity
        self.window = np.concatenate(
            [self.window, np.zeros((N_SERIES, extra, self.buckets), dtype=np.uint32)], axis=1
        )
        pad = np.zeros((N_SERIES, extra), dtype=np.int64)
        self.window_sum = np.concatenate([self.window_sum, pad], axis=1)
        self.pending = np.concatenate([self.pending, pad], axis=1)

    def clear_rows(self, rows: NDArray[np.intp]) -> None:
        """Forget everything about these rows (a new canary revision, or a row reused)."""
        self.window[:, rows, :] = 0
        self.window_sum[:, rows] = 0
        self.pending[:, rows] = 0

    def advance(self, now: float) -> None:
        """Move the ring to `now`, zeroing buckets that fell out of the window."""
        head = int(now // self.bucket_s)
        if self._head is None:
            self._head = head
            return
        if head <= self._head:
            return
        expired = min(head - self._head, self.buckets)
        slots = np.arange(self._head + 1, self._head + 1 + expired) % self.buckets
        self.window_sum -= self.window[:, :, slots].sum(axis=2, dtype=np.int64)
        self.window[:, :, slots] = 0
        self._head = head

    def add(
        self,
        rows: NDArray[np.intp],
        arms: NDArray[np.intp],
        errors: NDArray[np.bool_],
        slow: NDArray[np.bool_],
        ts: NDArray[np.float64],
        now: float,
    ) -> None:
        """Count a batch of attributed requests (all arrays of one length)."""
        if rows.size == 0:
            return
        self.advance(now)
        assert self._head is not None
        # Event time decides the bucket; late or future lines land at the window's edges.
        number = np.floor_divide(ts, self.bucket_s).astype(np.int64)
        np.clip(number, self._head - self.buckets + 1, self._head, out=number)
        slot = number % self.buckets
        base = arms * SERIES_PER_ARM
        for offset, mask in ((0, None), (1, errors), (2, slow)):
            series = base + offset
            if mask is None:
                s, r, b = series, rows, slot
            else:
                s, r, b = series[mask], rows[mask], slot[mask]
                if s.size == 0:
                    continue
            np.add.at(self.window, (s, r, b), 1)
            np.add.at(self.window_sum, (s, r), 1)
            np.add.at(self.pending, (s, r), 1)

    def add_counts(self, counts: Counts, t: float) -> None:
        """Count a closed event-time slice [series, rows] at time `t` (its start), moving the
        ring to `t` first; counts older than the window are not kept."""
        self.advance(t)
        assert self._head is not None
        number = int(t // self.bucket_s)
        if number <= self._head - self.buckets:
            return
        self.window[:, :, min(number, self._head) % self.buckets] += counts.astype(np.uint32)
        self.window_sum += counts

    def add_rows(self, rows: NDArray[np.intp], counts: Counts, t: float) -> None:
        """`add_counts` for these rows only (counts [series, rows], distinct rows)."""
        self.advance(t)
        assert self._head is not None
        number = int(t // self.bucket_s)
        if number <= self._head - self.buckets or rows.size == 0:
            return
        slot = min(number, self._head) % self.buckets
        self.window[:, rows, slot] += counts.astype(np.uint32)
        self.window_sum[:, rows] += counts

    def take_pending(self) -> Counts:
        """Counts since the previous call; resets them."""
        taken = self.pending
        self.pending = np.zeros_like(taken)
        return taken
