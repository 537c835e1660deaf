"""`make bench-ops`: the operator's tools at fleet scale, on a real broker and a real worker.

A worker process judges N canaries in progress (rollout states and a little traffic each, from
a producer here); once its verdict snapshots of all N are on the compacted verdicts topic:

- `scrape_ms_20k`: one full /metrics scrape of that worker (median of 5; the worker keeps
  evaluating meanwhile);
- `status_ms_20k`: `canarywatch status -o json` as a user runs it (a new process: start-up,
  reading the verdicts topic to its end, sorting, printing), median of 3.

- `ready_flip_s`: the broker stopped under that worker (still judging N canaries), seconds
  until its `/readyz` answers 503;
- `first_abort_alerted`: 1 when the worker exported `canarywatch_abort_commands_total` at 0
  for every signal before any abort (so `increase()` sees the first one) and `promtool test
  rules tests/prometheus/rules_test.yaml` passes (its first case: the first abort after a
  start fires `CanarywatchAbortedCanary`; its second: a counter born on its first inc() would
  not). promtool from scripts/ensure-promtool.sh.

Last line: `ops: ready_flip_s=A scrape_ms_20k=B first_abort_alerted=C status_ms_20k=D`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports
from agents.processes import WorkerProcess, free_port, poll_until, read_metric
from agents.settings import Settings, Topics, settings_to_env
from agents.status import read_verdicts
from streams.decisions import SIGNALS
from streams.events import RequestLine, RolloutState, encode_request_line, encode_rollout_state


def scrape_ms(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        size = len(reply.read())
    return (time.perf_counter() - started) * 1000, size


async def feed(settings: Settings, canaries: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20, acks=1)
    await producer.start()
    try:
        now = time.time()
        for i in range(canaries):
            ns = f"ns-{i:05d}"
            state = RolloutState(ns, "web", f"c{i}", f"s{i}", step_index=1, canary_weight=20,
                                 release=f"web:{i % 7}.0", observed_at=now)  # fmt: skip
            await producer.send(settings.topics.rollouts, key=ns.encode(),
                                value=encode_rollout_state(state))  # fmt: skip
        await producer.flush()
        for i in range(canaries):
            ns = f"ns-{i:05d}"
            lines = [
                encode_request_line(
                    RequestLine(
                        now,
                        ns,
                        "web-x",
                        f"c{i}" if k < 2 else f"s{i}",
                        503 if k == 0 and i % 50 == 0 else 200,
                        20.0,
                    )
                )
                for k in range(10)
            ]
            await producer.send(settings.topics.requests, key=ns.encode(), value=b"\n".join(lines))
        await producer.flush()
    finally:
        await producer.stop()


ROOT = Path(__file__).resolve().parents[1]


def promtool_first_abort() -> bool:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-promtool.sh")], check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    promtool = found.stdout.strip().splitlines()[-1]
    tests = ROOT / "tests/prometheus/rules_test.yaml"
    result = subprocess.run(
        [promtool, "test", "rules", tests.name], cwd=tests.parent, capture_output=True, text=True
    )
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
    return result.returncode == 0


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def run(
    bootstrap: str, work: Path, canaries: int, broker: LocalKafka | None
) -> dict[str, float]:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap=bootstrap,
        app_id=f"ops-{run_id}",
        topics=Topics(f"ops-{run_id}"),
        partitions=1,
        replication_factor=1,  # the single local broker
        metrics_port=free_port(),
        data_dir=work / "worker",
        verdict_refresh_s=30.0,
    )
    await ensure_topics(settings.bootstrap, settings.topic_partitions())
    worker = WorkerProcess(settings, work / "worker.log")
    worker.start()
    try:
        await worker.wait_ready(120)
        port = settings.metrics_port
        zero_at_start = all(
            read_metric(port, "canarywatch_abort_commands_total", signal=signal) == 0.0
            for signal in SIGNALS
        )
        print(f"ops: abort counters at 0 from the start: {zero_at_start}")
        started = time.perf_counter()
        await feed(settings, canaries)
        await poll_until(
            lambda: read_metric(port, "canarywatch_canaries_in_progress") == canaries,
            900, f"{canaries} canaries in progress", every_s=1.0,
        )  # fmt: skip
        print(f"ops: {canaries} canaries in progress after {time.perf_counter() - started:.1f}s")

        async def published() -> int:
            read = await read_verdicts(settings.bootstrap, settings.topics.verdicts)
            return len(read.raw)

        deadline = time.monotonic() + 900
        while (n := await published()) < canaries:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {n} verdict snapshots")
            await asyncio.sleep(2.0)  # poll interval while the worker publishes
        print(f"ops: {canaries} verdict snapshots after {time.perf_counter() - started:.1f}s")
        scrapes = [await asyncio.to_thread(scrape_ms, port) for _ in range(5)]
        scrape = statistics.median(ms for ms, _ in scrapes)
        print(f"ops: scrapes {[round(ms) for ms, _ in scrapes]} ms, {scrapes[0][1]} bytes")
        env = {**os.environ, **settings_to_env(settings)}
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "agents.cli", "status", "-o", "json"],
                capture_output=True, env=env, check=True,
            )  # fmt: skip
            times.append((time.perf_counter() - t0) * 1000)
            items = json.loads(done.stdout)["items"]
            assert len(items) == canaries, len(items)
        print(f"ops: status runs {[round(t) for t in times]} ms, {len(items)} rows")
        flip = float("nan")
        if broker is not None:
            # Under heavy load the worker can be briefly unready (a group rejoin): wait for it.
            await poll_until(
                lambda: readyz(port) == 200, 300, "ready before the broker stops", every_s=0.5
            )
            t0 = time.perf_counter()
            await asyncio.to_thread(broker.stop)
            await poll_until(lambda: readyz(port) == 503, 60, "/readyz failing", every_s=0.1)
            flip = time.perf_counter() - t0
            print(f"ops: /readyz 503 {flip:.1f}s after the broker stopped")
        alerted = zero_at_start and await asyncio.to_thread(promtool_first_abort)
        return {
            "scrape_ms": scrape,
            "status_ms": statistics.median(times),
            "ready_flip_s": flip,
            "first_abort_alerted": float(alerted),
        }
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--canaries", type=int, default=20_000)
    parser.add_argument("--bootstrap", help="an already running broker (default: start one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canarywatch-ops-") as tmp:
        work = Path(tmp)
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            port, controller = free_ports(2)
            broker = LocalKafka(work / "kafka", port, controller)
            broker.start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            result = asyncio.run(run(bootstrap, work, args.canaries, broker))
        finally:
            if broker is not None:
                broker.stop()
    k = f"{args.canaries // 1000}k"
    print(f"scrape_ms_{k}={result['scrape_ms']:.0f}  (goal <= 300)")
    print(f"status_ms_{k}={result['status_ms']:.0f}  (goal <= 2000)")
    print(
        f"ops: ready_flip_s={result['ready_flip_s']:.1f} scrape_ms_{k}={result['scrape_ms']:.0f} "
        f"first_abort_alerted={result['first_abort_alerted']:.0f} "
        f"status_ms_{k}={result['status_ms']:.0f}"
    )


if __name__ == "__main__":
    main()
