"""Profile `canarywatch status -o json` at fleet scale without a worker (for make bench-ops' D).

Starts the local broker (or uses `--bootstrap`), fills a verdicts topic with `--canaries`
snapshots shaped like the worker's (two signals, `extra` as streams.fleet.operator_extra
writes it), `--copies` per env (the uncompacted tail a refreshing worker leaves), then times
`canarywatch status -o json` in a new process, as a user runs it. `--profile FILE` runs it
under py-spy instead (collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports
from agents.settings import Settings, Topics, settings_to_env
from streams.promotion import INCONCLUSIVE, SignalPass, VerdictSnapshot


def snapshot(i: int, now: float) -> VerdictSnapshot:
    signals = tuple(
        SignalPass(
            name, INCONCLUSIVE, 3.21, 0.0125, 1.25, 0.005, 2 + i % 3, i % 2, 8, 0, 1.2345, 4.5951
        )
        for name in ("errors", "latency")
    )
    return VerdictSnapshot(
        namespace=f"ns-{i:05d}",
        rollout="web",
        pod_hash=f"c{i}",
        verdict=INCONCLUSIVE,
        decided_at=now,
        since_canary_start_s=12.345,
        beta=0.01,
        signals=signals,
        eta_s=321.0,
        release=f"web:{i % 7}.0",
        reason="not yet shown to be within tolerance",
        extra={
            "step_index": 1,
            "canary_weight": 20,
            "decision": ["continue", "continue"],
            "needed_bad": [4, 4],
            "window": [[0.5, 0.0], [0.0, 0.0]],
        },
    )


async def fill(settings: Settings, canaries: int, copies: int) -> None:
    await ensure_topics(settings.bootstrap, {settings.topics.verdicts: settings.partitions})
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20, acks=1)
    await producer.start()
    try:
        for _ in range(copies):
            now = time.time()
            for i in range(canaries):
                s = snapshot(i, now)
                await producer.send(settings.topics.verdicts, key=s.env.encode(), value=s.encode())
        await producer.flush()
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--canaries", type=int, default=20_000)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap")
    parser.add_argument("--profile", type=Path, help="py-spy record into this file")
    parser.add_argument("--prefix", help="topic prefix (default: a new one)")
    parser.add_argument("--no-fill", action="store_true", help="the topic is filled already")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canarywatch-status-") as tmp:
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            port, controller = free_ports(2)
            broker = LocalKafka(Path(tmp) / "kafka", port, controller)
            broker.start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            prefix = args.prefix or f"st-{uuid.uuid4().hex[:8]}"
            settings = Settings(bootstrap=bootstrap, topics=Topics(prefix),
                                partitions=args.partitions, replication_factor=1)  # fmt: skip
            if not args.no_fill:
                asyncio.run(fill(settings, args.canaries, args.copies))
            env = {**os.environ, **settings_to_env(settings)}
            command = [sys.executable, "-m", "agents.cli", "status", "-o", "json"]
            if args.profile is not None:
                spy = str(Path(sys.executable).parent / "py-spy")
                command = [spy, "record", "-r", "200", "-f", "raw", "-o", str(args.profile), "--",
                           *command]  # fmt: skip
            for _ in range(args.runs):
                t0 = time.perf_counter()
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                done = subprocess.run(command, env=env, capture_output=True, check=True)
                ms = (time.perf_counter() - t0) * 1000
                cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) * 1000
                print(
                    f"status: {ms:.0f} ms ({cpu:.0f} ms CPU), {len(done.stdout)} bytes", flush=True
                )
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
