"""Columnar decoding of request-log messages: a batch of messages in, column arrays out.

The hot path. `canarywatch_linescan.scan` (Rust, linescan/src/lib.rs) reads every line of every
message of a fetched batch, with the GIL released, and decodes those in the canonical flat form
(see docs/events.md) straight into column buffers. Only the lines it cannot vouch for (aliases
such as `env` or a label map, escapes, non-ASCII, numbers it leaves to orjson, invalid JSON) go
one by one through the line decoder in `streams.events`, which decodes them or says why not. The
result is the same as decoding every message with `streams.events.decode_request_lines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import canarywatch_linescan as linescan
import numpy as np
from numpy.typing import NDArray

from streams.events import MAX_MESSAGE_BYTES, DecodeError, RequestLine, decode_request_lines

NAMESPACE_WIDTH: int = linescan.NAMESPACE_WIDTH  # namespaces up to 63 bytes (Kubernetes: 63)
HASH_WIDTH: int = linescan.HASH_WIDTH  # pod-template hashes up to 31 bytes
KEY_DTYPE = np.dtype(f"S{linescan.KEY_WIDTH}")  # namespace then hash, each NUL-padded


def pack_key(namespace: str, pod_hash: str) -> bytes | None:
    """The fixed-width key of (namespace, hash) as `Columns.keys` holds it; None if it cannot be."""
    ns, h = namespace.encode(), pod_hash.encode()
    if not 0 < len(ns) < NAMESPACE_WIDTH or not 0 < len(h) < HASH_WIDTH or b"\0" in ns + h:
        return None
    return ns.ljust(NAMESPACE_WIDTH, b"\0") + h.ljust(HASH_WIDTH, b"\0")


@dataclass(slots=True)
class Columns:
    """Decoded request lines as columns, in message order.

    `keys` holds (namespace, pod hash) packed by `pack_key`; a line whose strings do not fit that
    form (too long, or holding NUL) has an all-NUL key and its strings in `overflow`, by row.
    """

    keys: NDArray[np.bytes_] = field(default_factory=lambda: np.zeros(0, dtype=KEY_DTYPE))
    status: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    duration_ms: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    ts: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    overflow: dict[int, tuple[str, str]] = field(default_factory=dict)
    # (index of the message in the batch, the refused bytes, why)
    invalid: list[tuple[int, bytes, DecodeError]] = field(default_factory=list)
    # index of a message with more bad lines than `max_bad_lines` -> reason -> how many of its
    # bad lines are not in `invalid` (only counted: the message is kept whole instead)
    flooded: dict[int, dict[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def namespaces(self) -> list[str]:
        return self._strings(0, NAMESPACE_WIDTH, 0)

    @property
    def pod_hashes(self) -> list[str]:
        return self._strings(NAMESPACE_WIDTH, HASH_WIDTH, 1)

    def _strings(self, offset: int, width: int, part: int) -> list[str]:
        raw = self.keys.view(np.uint8).reshape(-1, KEY_DTYPE.itemsize)[:, offset : offset + width]
        texts = np.ascontiguousarray(raw).view(f"S{width}").reshape(-1).tolist()
        out = [x.decode() for x in texts]
        for row, pair in self.overflow.items():
            out[row] = pair[part]
        return out

    def select(self, rows: NDArray[np.bool_]) -> Columns:
        """The rows where `rows` is true, renumbering `overflow`."""
        new_row = np.cumsum(rows) - 1
        return Columns(
            keys=self.keys[rows],
            status=self.status[rows],
            duration_ms=self.duration_ms[rows],
            ts=self.ts[rows],
            overflow={int(new_row[r]): pair for r, pair in self.overflow.items() if rows[r]},
            invalid=self.invalid,
            flooded=self.flooded,
        )


def _decoded(lines: list[RequestLine]) -> Columns:
    """Columns of lines the line decoder read."""
    keys = np.zeros(len(lines), dtype=KEY_DTYPE)
    overflow: dict[int, tuple[str, str]] = {}
    for row, line in enumerate(lines):
        key = pack_key(line.namespace, line.pod_hash)
        if key is None:
            overflow[row] = (line.namespace, line.pod_hash)
        else:
            keys[row] = key
    return Columns(
        keys=keys,
        status=np.fromiter((x.status for x in lines), np.int64, len(lines)),
        duration_ms=np.fromiter((x.duration_ms for x in lines), np.float64, len(lines)),
        ts=np.fromiter((x.ts for x in lines), np.float64, len(lines)),
        overflow=overflow,
    )


def _merged(
    simple: Columns, is_simple: NDArray[np.bool_], at: NDArray[np.intp], other: Columns
) -> Columns:
    """`simple`'s rows and `other`'s, in line order: `is_simple` tells each scanned line's kind,
    `at` the scanned line each row of `other` was decoded from."""
    kept = is_simple.copy()
    kept[at] = True
    row_of_line = np.cumsum(kept) - 1
    simple_rows, other_rows = row_of_line[is_simple], row_of_line[at]
    n = int(row_of_line[-1]) + 1 if row_of_line.size else 0
    merged = Columns(
        keys=np.zeros(n, dtype=KEY_DTYPE),
        status=np.zeros(n, np.int64),
        duration_ms=np.zeros(n, np.float64),
        ts=np.zeros(n, np.float64),
        overflow={int(other_rows[r]): pair for r, pair in other.overflow.items()},
        invalid=simple.invalid,
        flooded=simple.flooded,
    )
    for name in ("keys", "status", "duration_ms", "ts"):
        column = getattr(merged, name)
        column[simple_rows] = getattr(simple, name)
        column[other_rows] = getattr(other, name)
    return merged


def _message_error(state: int, raw: bytes, limit: int) -> DecodeError:
    if state == linescan.MESSAGE_OVERSIZED:
        return DecodeError("oversized", f"{len(raw)} bytes > limit {limit}")
    return DecodeError("empty", "message holds no request line")


# Bad lines of one message listed one by one in `Columns.invalid`; the others are only counted.
MAX_BAD_LINES = 20
# The bytes a JSON text can start with (after whitespace): a line starting otherwise is
# `not_json` without asking orjson, whose error costs ~2 us (a flood of garbage lines).
_JSON_START = frozenset(b'{["-0123456789tfn')
_NOT_JSON = "not_json"
SLOW_CHUNK = 65_536


def decode_columns(
    messages: Sequence[bytes],
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_bad_lines: int = MAX_BAD_LINES,
) -> Columns:
    """Decode a batch of request-log messages into columns; bad input is reported, not raised.

    A message of half a million bad lines must not become half a million byte strings, errors
    and dead letters: past `max_bad_lines` of one message, its bad lines are tallied by reason
    in `Columns.flooded`, and the caller keeps the message whole instead.
    """
    batch = messages if isinstance(messages, list) else list(messages)
    message, start, end, kind, keys, status, duration_ms, ts, states, skipped = linescan.scan(
        batch, max_bytes, MAX_MESSAGE_BYTES, max_bad_lines
    )
    columns = Columns(
        keys=np.frombuffer(keys, KEY_DTYPE),
        status=np.frombuffer(status, np.int64),
        duration_ms=np.frombuffer(duration_ms, np.float64),
        ts=np.frombuffer(ts, np.float64),
    )
    message_state = np.frombuffer(states, np.uint8)
    for index in np.flatnonzero(message_state).tolist():
        raw = batch[index]
        columns.invalid.append((index, raw, _message_error(message_state[index], raw, max_bytes)))
    # Lines that cannot be JSON, past the limit of their message, got no row (the scanner
    # counted them): they are tallied as the loop below would have.
    skipped_of = np.frombuffer(skipped, np.int64)
    for index in np.flatnonzero(skipped_of).tolist():
        columns.flooded[index] = {_NOT_JSON: int(skipped_of[index])}
    kinds = np.frombuffer(kind, np.uint8)
    slow = np.flatnonzero(kinds == linescan.OTHER)
    if not slow.size:
        return columns
    # The other lines, one by one, exactly as the line decoder sees them. The scanner gave them
    # a place but no values: those it decodes get rows, merged in line order at the end.
    bad_lines: dict[int, int] = {}
    read: list[RequestLine] = []
    read_at: list[int] = []
    message_of = np.frombuffer(message, np.int64)
    start_of = np.frombuffer(start, np.int64)
    end_of = np.frombuffer(end, np.int64)
    # In chunks: a flood of bad lines must not become millions of Python ints at once.
    for first in range(0, slow.size, SLOW_CHUNK):
        rows = slow[first : first + SLOW_CHUNK]
        line_message = message_of[rows].tolist()
        starts = start_of[rows].tolist()
        ends = end_of[rows].tolist()
        for row, index, a, b in zip(rows.tolist(), line_message, starts, ends, strict=True):
            seen = bad_lines.get(index, 0)
            if seen >= max_bad_lines:
                head = batch[index][a : min(b, a + 64)].lstrip(b" \t\r")
                if head and head[0] not in _JSON_START:
                    bad_lines[index] = seen + 1
                    tally = columns.flooded.setdefault(index, {})
                    tally[_NOT_JSON] = tally.get(_NOT_JSON, 0) + 1
                    continue
            lines, bad = decode_request_lines(batch[index][a:b], max_bytes)
            if lines:
                read.append(lines[0])
                read_at.append(row)
            else:
                for raw, error in bad:
                    seen = bad_lines.get(index, 0)
                    bad_lines[index] = seen + 1
                    if seen < max_bad_lines:
                        columns.invalid.append((index, raw, error))
                    else:
                        tally = columns.flooded.setdefault(index, {})
                        tally[error.reason] = tally.get(error.reason, 0) + 1
    columns.invalid.sort(key=lambda refused: refused[0])  # stable: lines stay in order
    if not read:
        return columns
    at = np.asarray(read_at, dtype=np.intp)
    return _merged(columns, kinds == linescan.SIMPLE, at, _decoded(read))
