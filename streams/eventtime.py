"""Event-time slices: requests enter the test by their timestamp, closed by a watermark.

A `SliceRing` keeps, per row, the counts of the few event-time slices still open (`slice_s`
seconds each, a ring indexed by absolute slice number). The watermark is the highest `ts` seen
minus `allowed_lateness_s`; a slice closes once it ends at or before the watermark, in
event-time order, and is handed to a callback (the decision engine and the windows, in
`streams.fleet`). A line is judged against the watermark as it stood before that line, so which
lines count, and in which slice, does not depend on how the lines were batched: the same
traffic read live or drained as one backlog closes the same slices with the same counts.
Lines whose slice already closed (`late`) or stamped more than `clock_skew_s` past the
processing time (`future`) are dropped from the test and counted by reason. Pure: time is an
argument. docs/decisions.md, "Event time", explains the design.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streams.windows import N_SERIES, SERIES_PER_ARM, Counts

LATE, FUTURE = "late", "future"
REASONS = (LATE, FUTURE)


@dataclass(frozen=True, slots=True)
class EventTimeSettings:
    """enabled: False keeps the processing-time test (a block closes at the end of a pass).
    slice_s: event-time slice length; the test sees at most one update per slice.
    allowed_lateness_s: the watermark trails the highest ts seen by this much.
    clock_skew_s: lines stamped further than this past the processing time are dropped.
    idle_s: with no line for this long (processing time), the open slices close."""

    enabled: bool = False
    slice_s: float = 0.5
    allowed_lateness_s: float = 2.0
    clock_skew_s: float = 30.0
    idle_s: float = 10.0

    def __post_init__(self) -> None:
        if self.slice_s <= 0 or self.allowed_lateness_s < 0 or self.clock_skew_s < 0:
            raise ValueError("slice_s must be positive, lateness and clock skew not negative")

    @property
    def ring_size(self) -> int:
        return math.ceil(self.allowed_lateness_s / self.slice_s) + 2


# close(number, counts [N_SERIES, rows]): slice `number` (it spans [number, number+1) * slice_s).
CloseSlice = Callable[[int, Counts], None]


class SliceRing:
    """Open event-time slices per row: `ring[series, slot, row]`, slot = number % ring_size."""

    def __init__(self, capacity: int, settings: EventTimeSettings) -> None:
        self.settings = settings
        self.size = settings.ring_size
        self.ring: NDArray[np.int64] = np.zeros((N_SERIES, self.size, capacity), dtype=np.int64)
        self.first_open: int | None = None  # absolute number of the oldest open slice
        self.max_ts = -math.inf
        self.last_content = -(2**62)  # number of the newest closed slice that held a line
        self.dropped = {reason: 0 for reason in REASONS}

    @property
    def capacity(self) -> int:
        return int(self.ring.shape[2])

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra > 0:
            pad = np.zeros((N_SERIES, self.size, extra), dtype=np.int64)
            self.ring = np.concatenate([self.ring, pad], axis=2)

    def clear_rows(self, rows: NDArray[np.intp]) -> None:
        self.ring[:, :, rows] = 0

    def open_rows(self) -> NDArray[np.bool_]:
        """Rows with a line in an open slice."""
        out: NDArray[np.bool_] = np.asarray(self.ring.any(axis=(0, 1)), dtype=np.bool_)
        return out

    @property
    def row_width(self) -> int:
        return 1 + N_SERIES * self.size

    def export_rows(self, rows: NDArray[np.intp]) -> NDArray[np.float64]:
        """[rows, width]: the oldest open slice's number, then each series' open slices,
        oldest first. `import_rows` puts them where their event time says."""
        first = self.first_open if self.first_open is not None else 0
        order = np.arange(first, first + self.size) % self.size
        aged = self.ring[:, order, :][:, :, rows]  # [series, age, rows]
        data = aged.transpose(2, 0, 1).reshape(rows.size, N_SERIES * self.size)
        return np.concatenate([np.full((rows.size, 1), float(first)), data], axis=1)

    def import_rows(self, rows: NDArray[np.intp], data: NDArray[np.float64]) -> None:
        """Put exported rows back. A slice this ring already closed is folded into its oldest
        open slice (counted, a little late), one beyond it into its newest."""
        if data.shape[1] != self.row_width:
            raise ValueError(f"slice rows have {data.shape[1]} values, expected {self.row_width}")
        self.ring[:, :, rows] = 0
        for i, row in enumerate(rows.tolist()):
            first = int(data[i, 0])
            if self.first_open is None:
                self.first_open = first
                self.max_ts = first * self.settings.slice_s + self.settings.allowed_lateness_s
            aged = data[i, 1:].reshape(N_SERIES, self.size).astype(np.int64)
            for age in range(self.size):
                number = min(max(first + age, self.first_open), self.first_open + self.size - 1)
                self.ring[:, number % self.size, row] += aged[:, age]

    @property
    def watermark(self) -> float:
        return self.max_ts - self.settings.allowed_lateness_s

    def _slice(self, t: float) -> int:
        return math.floor(t / self.settings.slice_s)

    def add(
        self,
        rows: NDArray[np.intp],
        arms: NDArray[np.intp],
        errors: NDArray[np.bool_],
        slow: NDArray[np.bool_],
        ts: NDArray[np.float64],
        now: float,
        close: CloseSlice,
    ) -> int:
        """Count a batch (in read order), closing the slices the watermark passes; returns the
        lines counted (the rest are in `dropped`)."""
        s = self.settings
        keep = ts <= now + s.clock_skew_s
        self.dropped[FUTURE] += int(keep.size - np.count_nonzero(keep))
        if not keep.all():
            rows, arms, errors, slow = rows[keep], arms[keep], errors[keep], slow[keep]
            ts = ts[keep]
        if ts.size == 0:
            return 0
        if self.first_open is None:
            self.first_open = self._slice(float(ts[0]) - s.allowed_lateness_s)
        numbers = np.floor_divide(ts, s.slice_s).astype(np.int64)
        # The watermark before each line: the highest ts read before it, minus the lateness.
        first = self.max_ts if math.isfinite(self.max_ts) else float(ts[0])
        before = np.maximum.accumulate(np.concatenate([[first], ts[:-1]]))
        open_from = np.floor_divide(before - s.allowed_lateness_s, s.slice_s)
        np.maximum(open_from, float(self.first_open), out=open_from)
        ok = numbers >= open_from
        self.dropped[LATE] += int(ok.size - np.count_nonzero(ok))
        if not ok.all():
            rows, arms, errors, slow, ts, numbers = (
                rows[ok],
                arms[ok],
                errors[ok],
                slow[ok],
                ts[ok],
                numbers[ok],
            )
        n, i = int(ts.size), 0
        while i < n:
            ahead = np.flatnonzero(numbers[i:] >= self.first_open + self.size)
            j = i + int(ahead[0]) if ahead.size else n
            if j > i:
                self._put(rows[i:j], arms[i:j], errors[i:j], slow[i:j], numbers[i:j])
                self.max_ts = max(self.max_ts, float(ts[i:j].max()))
                self.close_through(self._slice(self.watermark), close)
            if j < n:  # line j is beyond the ring: the watermark moves to its time first
                self.close_through(self._slice(float(ts[j]) - s.allowed_lateness_s), close)
            i = j
        return n

    def _put(
        self,
        rows: NDArray[np.intp],
        arms: NDArray[np.intp],
        errors: NDArray[np.bool_],
        slow: NDArray[np.bool_],
        numbers: NDArray[np.int64],
    ) -> None:
        slot = numbers % self.size
        base = arms * SERIES_PER_ARM
        np.add.at(self.ring, (base, slot, rows), 1)
        np.add.at(self.ring, (base[errors] + 1, slot[errors], rows[errors]), 1)
        np.add.at(self.ring, (base[slow] + 2, slot[slow], rows[slow]), 1)

    def close_through(self, number: int, close: CloseSlice) -> None:
        """Close every open slice before `number`, oldest first. Empty slices more than a ring
        plus `idle_s` after the last line are skipped: nothing in the test changes in them."""
        if self.first_open is None or number <= self.first_open:
            return
        quiet = self.size + math.ceil(self.settings.idle_s / self.settings.slice_s)
        # Lines sit only in [first_open, first_open + size): past that and `quiet` empty
        # slices after the last line, the rest of the gap is empty and skipped.
        last = min(number, max(self.first_open + self.size, self.last_content + quiet + 1))
        for k in range(self.first_open, last):
            slot = k % self.size
            counts = self.ring[:, slot, :]
            if counts.any():
                self.last_content = k
            elif k > self.last_content + quiet:
                continue
            close(k, counts.copy())
            counts[...] = 0
        self.first_open = number

    def close_all(self, close: CloseSlice) -> None:
        """Idle: close every open slice, up to the one holding the highest ts seen."""
        if math.isfinite(self.max_ts):
            self.close_through(self._slice(self.max_ts) + 1, close)
