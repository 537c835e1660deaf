"""`make bench-faults`: evidence across a kill -9 on the real local broker (seeded, one run).

Measured here: K/N (canaries whose evidence after a kill -9 and a restart is at least what it
was at the kill), L and D (request lines lost from / counted twice into the test, against what
was produced) and C (abort commands sent twice for one decision epoch). Not measured yet (printed
as nan / 0): resume_s_100k, backlog_decisions_equal (event time is not built: 0) and
checkpoint_throughput_ratio (`python -m bench.throughput --only checkpoint` measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports
from agents.processes import WorkerProcess, free_port, poll_until, scrape
from agents.settings import Settings, Topics
from streams.events import (
    RequestLine,
    RolloutState,
    decode_abort_command,
    encode_request_line,
    encode_rollout_state,
)

N_ENVS = 60
BAD = 10  # the first BAD environments are bad canaries (5 % canary errors vs 0 on stable)
SEED = 20261201


def counted_by_env(port: int) -> dict[str, float]:
    samples = scrape(port, ("canarywatch_env_counted",))
    out: dict[str, float] = {}
    for (_, labels), value in samples.items():
        d = dict(labels)
        if d.get("series") == "canary_requests":
            out[d["env"]] = value
    return out


async def run(bootstrap: str, work: Path) -> str:
    rng = np.random.default_rng(SEED)
    run_id = uuid.uuid4().hex[:6]
    settings = Settings(
        bootstrap=bootstrap,
        app_id=f"faults-{run_id}",
        topics=Topics(f"faults-{run_id}"),
        replication_factor=1,
        metrics_port=free_port(),
        data_dir=work / "worker",
        commit_every_s=1.0,
    )
    await ensure_topics(bootstrap, settings.topic_partitions(), replication_factor=1)
    envs = [f"env-{i:03d}" for i in range(N_ENVS)]
    # Busy environments get 40 canary lines a round, quiet ones 2.
    busy = {e: (i % 2 == 0) for i, e in enumerate(envs)}
    produced: Counter[str] = Counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    worker = WorkerProcess(settings, work / "w1.log")
    worker.start()
    await worker.wait_ready()
    for ns in envs:
        state = RolloutState(ns, "web", "c1", "s1", canary_weight=20, resource_version="1")
        await producer.send_and_wait(
            settings.topics.rollouts, key=f"{ns}/web".encode(), value=encode_rollout_state(state)
        )
    port = settings.metrics_port

    def in_progress() -> bool:
        return scrape(port, ("canarywatch_canaries_in_progress",)).get(
            ("canarywatch_canaries_in_progress", frozenset()), 0
        ) == float(N_ENVS)

    await poll_until(in_progress, 60, "every canary tracked")

    async def send_round() -> None:
        now = time.time()
        sends = []
        for i, ns in enumerate(envs):
            n_c = 40 if busy[ns] else 2
            bad_p = 0.05 if i < BAD else 0.0
            lines = [
                RequestLine(now, ns, "web-c1-0", "c1", 503 if rng.random() < bad_p else 200, 5.0)
                for _ in range(n_c)
            ] + [RequestLine(now, ns, "web-s1-0", "s1", 200, 5.0) for _ in range(4 * n_c)]
            produced[f"{ns}/web"] += n_c
            value = b"\n".join(encode_request_line(x) for x in lines)
            sends.append(
                await producer.send(settings.topics.requests, key=ns.encode(), value=value)
            )
        await asyncio.gather(*sends)

    for _ in range(15):
        await send_round()
    await poll_until(
        lambda: sum(counted_by_env(port).values()) > 0.5 * sum(produced.values()), 60, "counting"
    )
    at_kill = counted_by_env(port)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.stop()
    for _ in range(5):  # traffic goes on while the worker is down
        await send_round()
    restarted = WorkerProcess(settings, work / "w2.log")
    started = time.monotonic()
    restarted.start()
    await restarted.wait_ready()
    ready_s = time.monotonic() - started
    target = sum(produced.values())
    with contextlib.suppress(TimeoutError):
        await poll_until(
            lambda: sum(counted_by_env(port).values()) >= target, 90, "every line counted"
        )
    after = counted_by_env(port)
    kept = sum(1 for e in produced if after.get(e, 0.0) >= at_kill.get(e, 0.0))
    lost = sum(max(0.0, produced[e] - after.get(e, 0.0)) for e in produced)
    double = sum(max(0.0, after.get(e, 0.0) - produced[e]) for e in produced)
    restarted.stop()
    await producer.stop()
    consumer = AIOKafkaConsumer(
        settings.topics.commands, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    ids: Counter[str] = Counter()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=300)).values():
            for r in records:
                ids[decode_abort_command(r.value or b"").decision_id] += 1
    await consumer.stop()
    duplicates = sum(c - 1 for c in ids.values() if c > 1)
    print("| measure | value |")
    print("|---|---|")
    print(f"| canaries (busy and quiet) | {N_ENVS} |")
    print(f"| evidence kept across kill -9 | {kept}/{N_ENVS} |")
    print(f"| canary lines produced | {target:.0f} |")
    print(f"| lost / counted twice | {lost:.0f} / {double:.0f} |")
    print(f"| abort commands / decision ids | {sum(ids.values())} / {len(ids)} |")
    print(f"| restart to ready (N={N_ENVS}, not 100k) | {ready_s:.1f} s |")
    return (
        f"faults: evidence_kept={kept}/{N_ENVS} resume_s_100k=nan backlog_decisions_equal=0 "
        f"lost_lines={lost:.0f} double_counted={double:.0f} duplicate_commands={duplicates} "
        "checkpoint_throughput_ratio=nan"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="canarywatch-faults-") as tmp:
        work = Path(tmp)
        port, controller = free_ports(2)
        broker = LocalKafka(work / "kafka", port, controller)
        broker.start(timeout=120)
        try:
            line = asyncio.run(run(broker.bootstrap, work))
        finally:
            broker.stop()
    print(line)


if __name__ == "__main__":
    main()
