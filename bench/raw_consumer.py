"""The raw baseline of `make bench`: a bare aiokafka consumer doing nothing but `getmany`.

It runs in a process of its own, as a worker does: in the bench's process, whose heap holds the
produced traffic, aiokafka's record objects would set off full garbage collections over it and
flatter canarywatch. It gets the worker's fetch sizes and garbage-collector settings.
Prints messages/s on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer

from agents.settings import Settings
from agents.worker import tune_gc


async def read_all(bootstrap: str, topic: str, expected: int) -> float:
    """Messages/s of a getmany loop, after its first batch until the `expected`-th message."""
    settings = Settings()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=settings.fetch_partition_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
    )
    await consumer.start()
    try:
        # The clock starts when the first batch is in hand (the group join before it is not
        # reading), so that batch is not counted either: the rate is the rest's.
        seen = 0
        while not seen:
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            seen = sum(len(records) for records in batches.values())
        started, first = time.perf_counter(), seen
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            seen += sum(len(records) for records in batches.values())
        return (seen - first) / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True, help="messages in the topic")
    args = parser.parse_args()
    tune_gc()
    print(asyncio.run(read_all(args.bootstrap, args.topic, args.expected)))


if __name__ == "__main__":
    main()
