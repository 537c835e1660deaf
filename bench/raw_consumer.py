"""The raw baselines of `make bench`: bare consumers doing nothing but read the topic.

`--client aiokafka` is a bare `getmany` loop; `--client confluent` is a confluent-kafka
(librdkafka) `consume(num_messages=...)` loop tuned as the issue measured it
(`fetch.queue.backoff.ms=10`: librdkafka's default of 1 s stalls a drain), reading every
message's `value()`. Each runs in a process of its own, as a worker does: in the bench's process,
whose heap holds the produced traffic, the record objects would set off full garbage collections
over it and flatter canarywatch. Both get the worker's fetch sizes and garbage-collector settings,
and both are timed the same way: from the first batch in hand to the `expected`-th message.
Prints messages/s on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
import uuid

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer

from agents.settings import Settings
from agents.worker import tune_gc

CLIENTS = ("aiokafka", "confluent", "kcat")
BATCH = 50_000  # records per getmany / consume call


async def aiokafka_rate(bootstrap: str, topic: str, expected: int) -> float:
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
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            seen = sum(len(records) for records in batches.values())
        started, first = time.perf_counter(), seen
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            seen += sum(len(records) for records in batches.values())
        return (seen - first) / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def confluent_rate(bootstrap: str, topic: str, expected: int) -> float:
    """Messages/s of a tuned confluent-kafka consume loop, timed as `aiokafka_rate` is."""
    settings = Settings()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-ck-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.queue.backoff.ms": 10,
            "max.partition.fetch.bytes": settings.fetch_partition_bytes,
            "fetch.max.bytes": settings.fetch_max_bytes,
        }
    )
    consumer.subscribe([topic])
    try:

        def read(wanted: int) -> int:
            # Every message's value is taken, as a consumer that parses it would. consume()
            # waits for `num_messages` or the timeout: asking for no more than remain keeps the
            # last call from waiting out its timeout after the last message (getmany does not).
            n = 0
            for message in consumer.consume(num_messages=min(BATCH, wanted), timeout=0.2):
                if message.error() is None:
                    message.value()
                    n += 1
            return n

        seen = 0
        while not seen:
            seen = read(expected)
        started, first = time.perf_counter(), seen
        while seen < expected:
            seen += read(expected - seen)
        return (seen - first) / (time.perf_counter() - started)
    finally:
        consumer.close()


def kcat_rate(bootstrap: str, topic: str, expected: int) -> float:
    """NDJSON lines/s of `kcat -C -c N -e -q` (C, librdkafka: the limit), from its first output in
    hand to the `expected`-th message's last line. kcat ends every message with a newline, so the
    newlines counted are the lines."""
    command = ["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning"]
    command += ["-c", str(expected), "-e", "-q"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        chunk = os.read(fd, 1 << 20)
        started, first = time.perf_counter(), chunk.count(b"\n")
        lines = first
        while chunk := os.read(fd, 1 << 20):
            lines += chunk.count(b"\n")
        elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"kcat exited with {process.returncode}")
    return (lines - first) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True, help="messages in the topic")
    # kcat prints NDJSON lines/s; the others messages/s.
    parser.add_argument("--client", choices=CLIENTS, default="aiokafka")
    args = parser.parse_args()
    tune_gc()
    if args.client == "kcat":
        print(kcat_rate(args.bootstrap, args.topic, args.expected))
    elif args.client == "confluent":
        print(confluent_rate(args.bootstrap, args.topic, args.expected))
    else:
        print(asyncio.run(aiokafka_rate(args.bootstrap, args.topic, args.expected)))


if __name__ == "__main__":
    main()
