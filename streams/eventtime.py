"""Event-time slices: requests enter the test by their timestamp, closed by watermarks.

A `SliceRing` keeps the counts of the event-time slices still open (`slice_s` seconds each),
sparse: one entry per (slice, row) that has lines. Each request-log partition has its own
watermark, the highest `ts` it delivered minus `allowed_lateness_s`; a slice closes once the
lowest watermark of the worker's busy partitions has passed it (a partition with no line for
`idle_s` holds nothing open), and `take_closed` hands the closed slices over at once, grouped,
for one engine call (`Fleet._close_slices`). A line is judged against its partition's
watermark as it stood before that line (and against the slices already closed), so which lines
count, and in which slice, does not depend on how the lines were batched: the same traffic read
live or drained as one backlog closes the same slices with the same counts. Lines whose slice
already closed (`late`) or stamped more than `clock_skew_s` past the processing time (`future`)
are dropped from the test and counted by reason. Pure: time is an argument. docs/decisions.md,
"Event time", explains the design.
"""

from __future__ import annotations

import math
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
    allowed_lateness_s: each partition's watermark trails the highest ts it delivered by this.
    clock_skew_s: lines stamped further than this past the processing time are dropped.
    idle_s: a partition with no line for this long (processing time) holds no slice open.
    max_partition_lag_s: the slowest partition holds slices open at most this far behind the
        fastest one's watermark (bounds memory); its lines older than that are `late`."""

    enabled: bool = True
    slice_s: float = 0.5
    allowed_lateness_s: float = 2.0
    clock_skew_s: float = 30.0
    idle_s: float = 10.0
    max_partition_lag_s: float = 60.0

    def __post_init__(self) -> None:
        if self.slice_s <= 0 or self.allowed_lateness_s < 0 or self.clock_skew_s < 0:
            raise ValueError("slice_s must be positive, lateness and clock skew not negative")
        if self.idle_s <= 0 or self.max_partition_lag_s < 0:
            raise ValueError("idle_s must be positive, max_partition_lag_s not negative")

    @property
    def ring_size(self) -> int:
        """Open slices a checkpointed row keeps apart (later ones are folded into the last)."""
        return math.ceil(self.allowed_lateness_s / self.slice_s) + 2


@dataclass(frozen=True, slots=True)
class ClosedSlices:
    """Slices closed by one `take_closed`: one entry per (slice number, row) with counts,
    ordered by number then row; every slice before `through` is closed now."""

    numbers: NDArray[np.int64]
    rows: NDArray[np.intp]
    counts: Counts  # [N_SERIES, entries]
    through: int

    def groups(self) -> list[tuple[int, NDArray[np.intp], Counts]]:
        """(slice number, its rows, their counts [N_SERIES, rows]), oldest first."""
        if self.numbers.size == 0:
            return []
        cuts = np.flatnonzero(np.diff(self.numbers)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [self.numbers.size]])
        return [
            (int(self.numbers[a]), self.rows[a:b], self.counts[:, a:b])
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
        ]


def _empty_counts(n: int = 0) -> Counts:
    return np.zeros((N_SERIES, n), dtype=np.int64)


class SliceRing:
    """Open event-time slices, sparse: (slice number, row, counts) entries not yet closed.

    Each request-log partition (`source`) has its own watermark, the highest ts it delivered
    minus `allowed_lateness_s`; slices close once the lowest watermark of the partitions that
    delivered a line within `idle_s` (processing time) has passed them (all of them when every
    partition is idle), but never more than `max_partition_lag_s` behind the highest one.
    """

    def __init__(self, capacity: int, settings: EventTimeSettings) -> None:
        self.settings = settings
        self.size = settings.ring_size
        self._capacity = capacity
        self.first_open: int | None = None  # slices before this one are closed
        self.max_ts: dict[int, float] = {}  # per partition
        self.last_line_at: dict[int, float] = {}  # per partition, processing time
        self._numbers: list[NDArray[np.int64]] = []
        self._rows: list[NDArray[np.intp]] = []
        self._counts: list[Counts] = []
        self._open = np.zeros(capacity, dtype=np.bool_)  # rows with an open entry
        self.dropped = {reason: 0 for reason in REASONS}

    @property
    def capacity(self) -> int:
        return self._capacity

    def grow(self, capacity: int) -> None:
        extra = capacity - self._capacity
        if extra > 0:
            self._open = np.concatenate([self._open, np.zeros(extra, dtype=np.bool_)])
            self._capacity = capacity

    # --- the open entries -----------------------------------------------------------------

    def _entries(self) -> tuple[NDArray[np.int64], NDArray[np.intp], Counts]:
        """All open entries, in one array each (consolidated in place)."""
        if len(self._numbers) != 1:
            numbers = np.concatenate(self._numbers) if self._numbers else np.zeros(0, np.int64)
            rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.intp)
            counts = np.concatenate(self._counts, axis=1) if self._counts else _empty_counts()
            self._numbers, self._rows, self._counts = [numbers], [rows], [counts]
        return self._numbers[0], self._rows[0], self._counts[0]

    def _keep(self, keep: NDArray[np.bool_]) -> None:
        numbers, rows, counts = self._entries()
        self._numbers, self._rows, self._counts = [numbers[keep]], [rows[keep]], [counts[:, keep]]
        self._open[:] = False
        self._open[self._rows[0]] = True

    def _append(self, numbers: NDArray[np.int64], rows: NDArray[np.intp], counts: Counts) -> None:
        if numbers.size:
            self._numbers.append(numbers)
            self._rows.append(rows)
            self._counts.append(counts)
            self._open[rows] = True

    @property
    def open_entries(self) -> int:
        return sum(int(n.size) for n in self._numbers)

    def clear_rows(self, rows: NDArray[np.intp]) -> None:
        if self._numbers and self._open[rows].any():  # a new canary's row has none: O(1)
            self._keep(~np.isin(self._entries()[1], rows))

    def assign(self, sources: set[int], now: float) -> None:
        """The partitions read now: a new one holds the slices open from `now` (no watermark
        yet) until it delivers lines or is idle; one no longer listed is forgotten."""
        self.drop_sources(set(self.max_ts) - sources)
        for source in sources - set(self.max_ts):
            self.max_ts[source] = -math.inf
            self.last_line_at[source] = now

    def drop_sources(self, sources: set[int]) -> None:
        """These partitions went to another worker: their watermarks no longer hold slices."""
        for source in sources:
            self.max_ts.pop(source, None)
            self.last_line_at.pop(source, None)

    def open_rows(self) -> NDArray[np.bool_]:
        """Rows with a line in an open slice."""
        return self._open.copy()

    # --- checkpoints ------------------------------------------------------------------------

    @property
    def row_width(self) -> int:
        return 1 + N_SERIES * self.size

    def _first(self) -> int:
        if self.first_open is not None:
            return self.first_open
        numbers = self._entries()[0]
        return int(numbers.min()) if numbers.size else 0

    def export_rows(self, rows: NDArray[np.intp]) -> NDArray[np.float64]:
        """[rows, width]: the oldest open slice's number, then each series' open slices,
        oldest first (slices `size` or more after it are counted in the last one).
        `import_rows` puts them where their event time says."""
        first = self._first()
        out = np.zeros((rows.size, self.row_width))
        out[:, 0] = float(first)
        if self._numbers and rows.size:
            numbers, entry_rows, counts = self._entries()
            position = np.full(self._capacity, -1, dtype=np.intp)
            position[rows] = np.arange(rows.size)
            at = position[entry_rows]
            mine = at >= 0
            age = np.clip(numbers[mine] - first, 0, self.size - 1)
            for series in range(N_SERIES):
                np.add.at(out, (at[mine], 1 + series * self.size + age), counts[series, mine])
        return out

    def import_rows(self, rows: NDArray[np.intp], data: NDArray[np.float64]) -> None:
        """Put exported rows back. A slice this ring already closed is folded into its oldest
        open slice (counted, a little late)."""
        if data.shape[1] != self.row_width:
            raise ValueError(f"slice rows have {data.shape[1]} values, expected {self.row_width}")
        self.clear_rows(rows)
        if rows.size == 0:
            return
        firsts = data[:, 0].astype(np.int64)
        if self.first_open is None:
            self.first_open = int(firsts.min())
        aged = data[:, 1:].reshape(rows.size, N_SERIES, self.size).astype(np.int64)
        i, age = np.nonzero(aged.sum(axis=1))
        numbers = np.maximum(firsts[i] + age, self.first_open)
        self._append(numbers, rows[i].astype(np.intp), aged[i, :, age].T.copy())

    # --- counting and closing ---------------------------------------------------------------

    def _slice(self, t: float) -> int:
        return math.floor(t / self.settings.slice_s)

    @property
    def watermark(self) -> float:
        """The lowest partition watermark (-inf before any line, or while a partition has
        delivered none)."""
        if not self.max_ts:
            return -math.inf
        return min(self.max_ts.values()) - self.settings.allowed_lateness_s

    def add(
        self,
        rows: NDArray[np.intp],
        arms: NDArray[np.intp],
        errors: NDArray[np.bool_],
        slow: NDArray[np.bool_],
        ts: NDArray[np.float64],
        now: float,
        source: int = -1,
    ) -> int:
        """Count a batch of one partition (in its offset order) into the open slices; returns
        the lines counted (the rest are in `dropped`). Nothing closes here: `take_closed`."""
        s = self.settings
        keep = ts <= now + s.clock_skew_s
        self.dropped[FUTURE] += int(keep.size - np.count_nonzero(keep))
        if not keep.all():
            rows, arms, errors, slow, ts = (
                rows[keep],
                arms[keep],
                errors[keep],
                slow[keep],
                ts[keep],
            )
        if ts.size == 0:
            return 0
        numbers = np.floor_divide(ts, s.slice_s).astype(np.int64)
        # The partition's watermark before each line: the highest ts it delivered before it,
        # minus the lateness; and no slice already closed.
        seen = self.max_ts.get(source, -math.inf)
        first = seen if math.isfinite(seen) else float(ts[0])
        before = np.maximum.accumulate(np.concatenate([[first], ts[:-1]]))
        open_from = np.floor_divide(before - s.allowed_lateness_s, s.slice_s)
        if self.first_open is not None:
            np.maximum(open_from, float(self.first_open), out=open_from)
        ok = numbers >= open_from
        self.dropped[LATE] += int(ok.size - np.count_nonzero(ok))
        self.max_ts[source] = max(seen, float(ts.max()))
        self.last_line_at[source] = now
        if not ok.all():
            rows, arms, errors, slow, numbers = (
                rows[ok],
                arms[ok],
                errors[ok],
                slow[ok],
                numbers[ok],
            )
        n = int(numbers.size)
        if n == 0:
            return 0
        # One entry per (slice, row) of the batch.
        key = numbers * np.int64(self._capacity) + rows
        unique, inverse = np.unique(key, return_inverse=True)
        counts = _empty_counts(unique.size)
        base = arms * SERIES_PER_ARM
        np.add.at(counts, (base, inverse), 1)
        np.add.at(counts, (base[errors] + 1, inverse[errors]), 1)
        np.add.at(counts, (base[slow] + 2, inverse[slow]), 1)
        self._append(unique // self._capacity, (unique % self._capacity).astype(np.intp), counts)
        return n

    def all_idle(self, now: float) -> bool:
        """Every partition has had no line for `idle_s` (and one had lines)."""
        s = self.settings
        return any(math.isfinite(t) for t in self.max_ts.values()) and all(
            now - at >= s.idle_s for at in self.last_line_at.values()
        )

    def frontier(self, now: float) -> int | None:
        """Slices before this number may close at `now` (None: no line yet)."""
        if not self.max_ts:
            return None  # no line yet (restored slices close with the first lines' watermark)
        s = self.settings
        busy = [t for p, t in self.max_ts.items() if now - self.last_line_at[p] < s.idle_s]
        top = max(self.max_ts.values())
        if not math.isfinite(top):
            return None  # no line yet
        if not busy:  # every partition idle: close all, up to the slice of the highest ts
            return self._slice(top) + 1
        low = min(busy) - s.allowed_lateness_s
        return self._slice(max(low, top - s.allowed_lateness_s - s.max_partition_lag_s))

    def take_closed(self, now: float) -> ClosedSlices:
        """Close the slices the watermark has passed; their entries, grouped."""
        through = self.frontier(now)
        if through is None:
            return ClosedSlices(np.zeros(0, np.int64), np.zeros(0, np.intp), _empty_counts(), 0)
        if self.first_open is not None:
            through = max(through, self.first_open)
        self.first_open = through
        numbers, rows, counts = self._entries()
        done = numbers < through
        if not done.any():
            return ClosedSlices(numbers[:0], rows[:0], counts[:, :0], through)
        self._keep(~done)
        numbers, rows, counts = numbers[done], rows[done], counts[:, done]
        key = numbers * np.int64(self._capacity) + rows
        unique, inverse = np.unique(key, return_inverse=True)
        grouped = _empty_counts(unique.size)
        for series in range(N_SERIES):
            grouped[series] = np.bincount(inverse, counts[series], unique.size).astype(np.int64)
        return ClosedSlices(
            unique // self._capacity,
            (unique % self._capacity).astype(np.intp),
            grouped,
            through,
        )
