"""Columnar decoding of request-log messages: a batch of messages in, column arrays out.

The hot path. The messages of a fetched batch are joined with newlines into one buffer and
`streams.fastscan.scan` decodes, with numpy operations over the whole buffer, every line in the
canonical flat form (see that module). Only the lines it cannot vouch for (aliases such as `env`
or a label map, escapes, non-ASCII, numbers outside the exact fast path, invalid JSON) go one by
one through the line decoder in `streams.events`, which decodes them or says why not. The result
is the same as decoding every message with `streams.events.decode_request_lines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from streams.events import MAX_MESSAGE_BYTES, DecodeError, RequestLine, decode_request_lines
from streams.fastscan import (
    BLANK,
    HASH_WIDTH,
    KEY_DTYPE,
    NAMESPACE_WIDTH,
    OTHER,
    SIMPLE,
    pack_key,
    scan,
)


@dataclass(slots=True)
class Columns:
    """Decoded request lines as columns, in message order.

    `keys` holds (namespace, pod hash) packed by `streams.fastscan.pack_key`; a line whose
    strings do not fit that form (too long, or holding NUL) has an all-NUL key and its strings in
    `overflow`, by row.
    """

    keys: NDArray[np.bytes_] = field(default_factory=lambda: np.zeros(0, dtype=KEY_DTYPE))
    status: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    duration_ms: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    ts: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    overflow: dict[int, tuple[str, str]] = field(default_factory=dict)
    # (index of the message in the batch, the refused bytes, why)
    invalid: list[tuple[int, bytes, DecodeError]] = field(default_factory=list)

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


def decode_columns(messages: Sequence[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Columns:
    """Decode a batch of request-log messages into columns; bad input is reported, not raised."""
    refused: list[tuple[int, bytes, DecodeError]] = []
    indices: Sequence[int] = range(len(messages))
    if messages and max(map(len, messages)) > max_bytes:
        for i, message in enumerate(messages):
            if len(message) > max_bytes:
                detail = f"{len(message)} bytes > limit {max_bytes}"
                refused.append((i, message, DecodeError("oversized", detail)))
        indices = [i for i in indices if len(messages[i]) <= max_bytes]
        kept = [messages[i] for i in indices]
    else:
        kept = list(messages)
    if not kept:
        return Columns(invalid=refused)
    buffer = b"\n".join(kept)
    found = scan(buffer)
    # The message of every line: messages start where the previous one's newline ends.
    lengths = np.fromiter(map(len, kept), dtype=np.int64, count=len(kept))
    message_starts = np.cumsum(lengths + 1) - (lengths + 1)
    line_message = np.searchsorted(message_starts, found.starts, side="right") - 1
    kind = found.kind
    invalid = refused
    # A message without a single non-blank line holds no request line at all.
    non_blank = np.bincount(line_message[kind != BLANK], minlength=len(kept))
    for k in np.flatnonzero(non_blank == 0).tolist():
        invalid.append((indices[k], kept[k], DecodeError("empty", "message holds no request line")))
    slow = np.flatnonzero(kind == OTHER)
    if not slow.size:
        invalid.sort(key=lambda x: x[0])
        return Columns(found.keys, found.status, found.duration_ms, found.ts, invalid=invalid)
    # The other lines, one by one, exactly as the line decoder sees them.
    good_rows: list[int] = []
    good: list[RequestLine] = []
    for line, start, end in zip(
        slow.tolist(), found.starts[slow].tolist(), found.ends[slow].tolist(), strict=True
    ):
        chunk = buffer[start:end]
        lines, bad = decode_request_lines(chunk, max_bytes)
        if lines:
            good_rows.append(line)
            good.append(lines[0])
        index = indices[int(line_message[line])]
        invalid.extend((index, raw, error) for raw, error in bad)
    invalid.sort(key=lambda x: x[0])
    if not good:
        return Columns(found.keys, found.status, found.duration_ms, found.ts, invalid=invalid)
    # Merge the two kinds of lines back into line order.
    simple_rows = np.flatnonzero(kind == SIMPLE)
    rows = np.asarray(good_rows, dtype=np.int64)
    order = np.concatenate([simple_rows, rows]).argsort(kind="stable")
    n = order.size
    from_slow = order >= simple_rows.size
    slow_at = np.flatnonzero(from_slow)
    columns = Columns(
        keys=np.zeros(n, dtype=KEY_DTYPE),
        status=np.zeros(n, dtype=np.int64),
        duration_ms=np.zeros(n, dtype=np.float64),
        ts=np.zeros(n, dtype=np.float64),
        invalid=invalid,
    )
    fast_at = np.flatnonzero(~from_slow)
    columns.keys[fast_at] = found.keys
    columns.status[fast_at] = found.status
    columns.duration_ms[fast_at] = found.duration_ms
    columns.ts[fast_at] = found.ts
    packed = [pack_key(x.namespace, x.pod_hash) for x in good]
    slow_order = order[slow_at] - simple_rows.size  # which of `good` lands at each slow slot
    for at, which in zip(slow_at.tolist(), slow_order.tolist(), strict=True):
        x = good[which]
        key = packed[which]
        if key is None:
            columns.overflow[at] = (x.namespace, x.pod_hash)
        else:
            columns.keys[at] = key
        columns.status[at] = x.status
        columns.duration_ms[at] = x.duration_ms
        columns.ts[at] = x.ts
    return columns
