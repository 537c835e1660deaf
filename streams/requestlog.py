"""Columnar decoding of request-log messages: a batch of messages in, column arrays out.

The hot path. Every message of a fetched batch (one JSON object, or NDJSON) is joined into one
JSON array and parsed by one `orjson.loads` call; the five fields are pulled out with one C-level
`map(itemgetter(...))`. Anything the fast path cannot vouch for (a parse error, a missing or
mistyped field, an alias such as `env` or a label map, an oversized message) sends its message to
the line-by-line decoder in `streams.events`, which finds the bad lines and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from streams.events import (
    MAX_MESSAGE_BYTES,
    POD_HASH_LABEL,
    DecodeError,
    RequestLine,
    decode_request_lines,
    request_line_from_obj,
)

_FIELDS = itemgetter("namespace", POD_HASH_LABEL, "status", "duration_ms", "ts")


@dataclass(slots=True)
class Columns:
    """Decoded request lines as columns, in message order."""

    namespaces: list[str] = field(default_factory=list)
    pod_hashes: list[str] = field(default_factory=list)
    status: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    duration_ms: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    ts: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    # (index of the message in the batch, the refused bytes, why)
    invalid: list[tuple[int, bytes, DecodeError]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.namespaces)

    def extend(self, other: Columns) -> None:
        self.namespaces.extend(other.namespaces)
        self.pod_hashes.extend(other.pod_hashes)
        self.status = np.concatenate([self.status, other.status])
        self.duration_ms = np.concatenate([self.duration_ms, other.duration_ms])
        self.ts = np.concatenate([self.ts, other.ts])
        self.invalid.extend(other.invalid)


def decode_columns(messages: Sequence[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Columns:
    """Decode a batch of request-log messages into columns; bad input is reported, not raised."""
    indices = list(range(len(messages)))
    if messages and max(map(len, messages)) > max_bytes:
        refused = Columns()
        for i in indices:
            if len(messages[i]) > max_bytes:
                detail = f"{len(messages[i])} bytes > limit {max_bytes}"
                refused.invalid.append((i, messages[i], DecodeError("oversized", detail)))
        indices = [i for i in indices if len(messages[i]) <= max_bytes]
        decoded = _decode(messages, indices)
        decoded.invalid = sorted(refused.invalid + decoded.invalid, key=lambda x: x[0])
        return decoded
    return _decode(messages, indices)


def _decode(messages: Sequence[bytes], indices: list[int]) -> Columns:
    """Parse `messages[i] for i in indices` at once; halve the batch around invalid JSON."""
    if not indices:
        return Columns()
    stripped = [messages[i].strip(b"\n") for i in indices]
    body = b",".join(stripped)
    if b"\n" in body:
        body = body.replace(b"\n", b",")
    try:
        objects = orjson.loads(b"[" + body + b"]")
    except orjson.JSONDecodeError:
        if len(indices) == 1:
            return _decode_each(messages, indices)
        half = len(indices) // 2
        left = _decode(messages, indices[:half])
        left.extend(_decode(messages, indices[half:]))
        return left
    if not objects:  # only empty messages join into "[]"; the line decoder says why
        return _decode_each(messages, indices)
    columns = _columns(objects)
    return columns if columns is not None else _columns_each(objects, stripped, indices)


def _columns(objects: list[Any]) -> Columns | None:
    """The five fields of every object, checked per column in C; None if any object is off."""
    try:
        rows = list(map(_FIELDS, objects))
    except (KeyError, TypeError):
        return None
    namespaces, pod_hashes, status, duration, ts = zip(*rows, strict=True)
    if (
        set(map(type, namespaces)) != {str}
        or set(map(type, pod_hashes)) != {str}
        or set(map(type, status)) != {int}
        or not set(map(type, duration)) <= {int, float}
        or not set(map(type, ts)) <= {int, float}
        or not all(namespaces)
        or not all(pod_hashes)
    ):
        return None
    status_array = np.fromiter(status, dtype=np.int64, count=len(status))
    if status_array.min() < 100 or status_array.max() > 599:
        return None
    return Columns(
        namespaces=list(namespaces),
        pod_hashes=list(pod_hashes),
        status=status_array,
        duration_ms=np.fromiter(duration, dtype=np.float64, count=len(duration)),
        ts=np.fromiter(ts, dtype=np.float64, count=len(ts)),
    )


def _columns_each(objects: list[Any], stripped: list[bytes], indices: list[int]) -> Columns:
    """Object by object, for batches with an alias, a missing field or a mistyped value."""
    lines: list[RequestLine] = []
    invalid: list[tuple[int, bytes, DecodeError]] = []
    position = 0
    for index, message in zip(indices, stripped, strict=True):
        raw_lines = message.split(b"\n")
        for raw in raw_lines:
            try:
                lines.append(request_line_from_obj(objects[position]))
            except DecodeError as error:
                invalid.append((index, raw, error))
            position += 1
    return _from_lines(lines, invalid)


def _decode_each(messages: Sequence[bytes], indices: list[int]) -> Columns:
    lines: list[RequestLine] = []
    invalid: list[tuple[int, bytes, DecodeError]] = []
    for index in indices:
        good, bad = decode_request_lines(messages[index])
        lines.extend(good)
        invalid.extend((index, raw, error) for raw, error in bad)
    return _from_lines(lines, invalid)


def _from_lines(lines: list[RequestLine], invalid: list[tuple[int, bytes, DecodeError]]) -> Columns:
    n = len(lines)
    return Columns(
        namespaces=[x.namespace for x in lines],
        pod_hashes=[x.pod_hash for x in lines],
        status=np.fromiter((x.status for x in lines), dtype=np.int64, count=n),
        duration_ms=np.fromiter((x.duration_ms for x in lines), dtype=np.float64, count=n),
        ts=np.fromiter((x.ts for x in lines), dtype=np.float64, count=n),
        invalid=invalid,
    )
