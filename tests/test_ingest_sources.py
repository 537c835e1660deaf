"""Refused messages of a fetch decoded in one scan go back to their own partition and offset."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from agents.ingest import by_source
from streams.events import DecodeError


def records(tp: TopicPartition, offsets: list[int]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(tp.topic, tp.partition, o, 0, 0, None, b"{}", None, -1, 2, ())
        for o in offsets
    ]


def test_indexes_over_all_partitions_map_back_to_partition_and_offset() -> None:
    a, b, c = (TopicPartition("logs", p) for p in (0, 1, 3))
    parts = [(a, records(a, [10, 11, 12])), (b, records(b, [500])), (c, records(c, [7, 9]))]
    why = DecodeError("not_json", "x")
    refused = [(0, b"a0", why), (2, b"a2", why), (3, b"b0", why), (5, b"c1", why)]
    assert by_source(parts, refused) == {
        a: [(10, b"a0", why), (12, b"a2", why)],
        b: [(500, b"b0", why)],
        c: [(9, b"c1", why)],
    }
    assert by_source(parts, []) == {}
