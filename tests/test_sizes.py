"""The size policy: one setting, and a dead-letter record that always fits its topic."""

from __future__ import annotations

import hashlib

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.sizes import (
    ORIGINAL_SIZE_HEADER,
    SHA256_HEADER,
    TRUNCATED_HEADER,
    SizePolicy,
    fit_record,
    record_bytes,
)

HEADERS = [
    ("canarywatch.reason", b"oversized"),
    ("canarywatch.detail", b"d" * 1024),
    ("canarywatch.source", b"canarywatch.requests/3@120554"),
    ("canarywatch.size", b"52428800"),
]


def kafka_record_bytes(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """What aiokafka's own batch builder makes of the record, alone in an uncompressed batch."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    assert builder.append(0, timestamp=None, key=key, value=value, headers=headers) is not None
    return len(builder.build())


def test_every_size_derives_from_the_decode_limit() -> None:
    policy = SizePolicy(1 << 20)
    assert policy.topic_max_message_bytes == 8 << 20
    assert policy.producer_max_request_size == policy.topic_max_message_bytes
    assert policy.fetch_partition_bytes == 4 << 20
    assert policy.fetch_max_bytes >= policy.topic_max_message_bytes
    assert policy.deadletter_record_bytes <= policy.topic_max_message_bytes
    assert SizePolicy(4096).topic_max_message_bytes == 32768
    with pytest.raises(ValueError):
        SizePolicy(10)


@pytest.mark.parametrize("value_size", [0, 1, 1000, 70_000])
def test_the_estimate_bounds_what_kafka_writes(value_size: int) -> None:
    value = b"v" * value_size
    assert kafka_record_bytes(b"oversized", value, HEADERS) <= record_bytes(
        b"oversized", value, HEADERS
    )


def test_a_record_that_fits_is_kept_as_it_is() -> None:
    payload = b"x" * 1000
    assert fit_record(b"k", payload, HEADERS, 1 << 20) == (payload, HEADERS)


@pytest.mark.parametrize("payload_size", [8 << 20, (8 << 20) - 300, 50 << 20])
def test_a_large_payload_keeps_a_prefix_and_says_so(payload_size: int) -> None:
    policy = SizePolicy(1 << 20)
    payload = bytes(range(256)) * (payload_size // 256) + b"z" * (payload_size % 256)
    value, headers = policy.fit_deadletter(b"oversized", payload, HEADERS)
    assert payload.startswith(value) and len(value) < len(payload)
    extra = dict(headers[len(HEADERS) :])
    assert headers[: len(HEADERS)] == HEADERS
    assert extra == {
        TRUNCATED_HEADER: b"1",
        ORIGINAL_SIZE_HEADER: str(payload_size).encode(),
        SHA256_HEADER: hashlib.sha256(payload).hexdigest().encode(),
    }
    limit = policy.deadletter_record_bytes
    assert (
        kafka_record_bytes(b"oversized", value, headers)
        <= record_bytes(b"oversized", value, headers)
        <= limit
    )
    assert limit - record_bytes(b"oversized", value, headers) == 0  # no room wasted


def test_headers_alone_too_large_are_an_error() -> None:
    with pytest.raises(ValueError):
        fit_record(b"k", b"x" * 100, [("h", b"y" * 5000)], 4096)
