"""One size policy: every Kafka size canarywatch uses derives from the decode limit.

Pure arithmetic (no Kafka import): `agents/` turns it into topic configs and client options.

- decode limit `max_message_bytes` (M): a request-log message larger than this is refused
  before it is parsed (reason `oversized`) and dead-lettered;
- topic limit `topic_max_message_bytes` = 8 M: the topics canarywatch creates (and Faust's
  changelog topics) accept record batches up to this, so a message over the decode limit still
  reaches the worker and can be kept;
- producer `max_request_size` = the topic limit: a record the producer accepts fits the topic;
- request-log fetch sizes: 4 M a partition, 16 M a fetch (a larger batch still comes whole,
  Kafka's KIP-74);
- a dead-letter record (key, value, headers, record overhead) is at most the topic limit: a
  larger payload (a message just under the topic limit plus headers, or a small gzip message
  that inflates to 50 MB) keeps a prefix and says so in headers (`fit_deadletter`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MIB = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = MIB

# A v2 record batch header is 61 bytes; one record adds at most 5 varints of <= 5 bytes and an
# attributes byte; each header adds two varints. Rounded up generously.
BATCH_OVERHEAD_BYTES = 61
RECORD_OVERHEAD_BYTES = 32
HEADER_OVERHEAD_BYTES = 10

TRUNCATED_HEADER = "canarywatch.truncated"
ORIGINAL_SIZE_HEADER = "canarywatch.original-size"
SHA256_HEADER = "canarywatch.sha256"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SizePolicy:
    """All sizes from the decode limit `max_message_bytes`."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes {self.max_message_bytes} < 1024")

    @property
    def topic_max_message_bytes(self) -> int:
        """`max.message.bytes` of the topics canarywatch creates and of Faust's changelogs."""
        return 8 * self.max_message_bytes

    @property
    def producer_max_request_size(self) -> int:
        """Every producer's `max_request_size`: what it accepts, the topics accept."""
        return self.topic_max_message_bytes

    @property
    def fetch_partition_bytes(self) -> int:
        """Request-log consumer `max_partition_fetch_bytes` (`make bench`: 4 M beats 1 M)."""
        return 4 * self.max_message_bytes

    @property
    def fetch_max_bytes(self) -> int:
        """Request-log consumer `fetch_max_bytes`: a few partitions' worth per fetch."""
        return 16 * self.max_message_bytes

    @property
    def deadletter_record_bytes(self) -> int:
        """The most a dead-letter record (key, value, headers, overheads) may take."""
        return self.topic_max_message_bytes

    def fit_deadletter(self, key: bytes, payload: bytes, headers: Headers) -> tuple[bytes, Headers]:
        """The value and headers to dead-letter `payload` with, within `deadletter_record_bytes`."""
        return fit_record(key, payload, headers, self.deadletter_record_bytes)


def record_bytes(key: bytes, value: bytes, headers: Headers) -> int:
    """An upper bound of the bytes a record takes alone in a v2 batch, uncompressed."""
    return (
        BATCH_OVERHEAD_BYTES
        + RECORD_OVERHEAD_BYTES
        + len(key)
        + len(value)
        + sum(len(name.encode()) + len(data) + HEADER_OVERHEAD_BYTES for name, data in headers)
    )


def fit_record(key: bytes, payload: bytes, headers: Headers, limit: int) -> tuple[bytes, Headers]:
    """`payload` and `headers` if the record fits `limit`; else a prefix of the payload and the
    headers plus `canarywatch.truncated=1`, `.original-size` and `.sha256` (of the whole payload).
    """
    if record_bytes(key, payload, headers) <= limit:
        return payload, headers
    marked = [
        *headers,
        (TRUNCATED_HEADER, b"1"),
        (ORIGINAL_SIZE_HEADER, str(len(payload)).encode()),
        (SHA256_HEADER, hashlib.sha256(payload).hexdigest().encode()),
    ]
    room = limit - record_bytes(key, b"", marked)
    if room < 0:
        raise ValueError(f"headers alone exceed the record limit {limit}")
    return payload[:room], marked
