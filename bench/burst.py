"""A burst of rollout snapshots must not starve request-log counting or the evaluation timer.

`python -m bench.burst [--snapshots 154000] [--bootstrap HOST:PORT]`

1. In process: what the view costs per snapshot (`RolloutView.apply` in batches of
   `view_batch`, the longest stretch the event loop is held), and one evaluation pass with the
   fleet at its `max_canaries` cap.
2. On a real broker (a local one unless `--bootstrap`): a worker counts a steady stream of
   request lines for one canary while N distinct canary snapshots arrive at once; the script
   samples the worker's metrics every 0.25 s and reports how long applying took, the longest
   gap between two evaluation passes, and the counting rate during the burst against before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from agents.kafka_admin import ensure_topics
from agents.metrics import WorkerMetrics
from agents.processes import WorkerProcess, free_port, scrape
from agents.settings import Settings, Topics
from agents.simulator import producer_for
from agents.view import RolloutView
from streams.events import RequestLine, RolloutState, encode_request_line, encode_rollout_state
from streams.fleet import Fleet


def state(i: int) -> RolloutState:
    return RolloutState(f"burst-{i:06d}", "web", f"c{i:06d}", f"s{i:06d}", canary_weight=20)


async def _noop() -> None:
    return None


def in_process(n: int, batch: int) -> None:
    fleet = Fleet()
    view = RolloutView(
        Settings(), fleet, WorkerMetrics(CollectorRegistry()), "changelog", on_restored=_noop
    )
    records = [
        ConsumerRecord(
            "changelog", 0, i, 0, 0, s.env.encode(), encode_rollout_state(s), None, 0, 0, ()
        )
        for i, s in enumerate(map(state, range(n)))
    ]
    longest = 0.0
    started = time.perf_counter()
    for i in range(0, n, batch):
        t = time.perf_counter()
        view.apply(records[i : i + batch], 1.0)
        longest = max(longest, time.perf_counter() - t)
    total = time.perf_counter() - started
    t = time.perf_counter()
    fleet.evaluate(2.0)
    evaluate = time.perf_counter() - t
    print(
        f"in process: {n} snapshots applied in {total:.2f}s ({total / n * 1e6:.1f} us each), "
        f"longest batch of {batch}: {longest * 1e3:.1f} ms; "
        f"tracked {len(fleet.attribution.row_of_env)}, refused {fleet.refused_canaries}; "
        f"one evaluation pass at the cap: {evaluate * 1e3:.1f} ms"
    )


def sample(port: int) -> dict[str, float]:
    names = (
        "canarywatch_evaluation_seconds_count",
        "canarywatch_evaluation_seconds_sum",
        "canarywatch_request_lines_total",
        "canarywatch_rollout_states_total",
        "canarywatch_canaries_in_progress",
    )
    out: dict[str, float] = {}
    for (name, labels), value in scrape(port, names).items():
        if name == "canarywatch_request_lines_total" and dict(labels).get("outcome") != "counted":
            continue
        out[name] = value
    return out


async def on_broker(bootstrap: str, n: int, work: Path) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        replication_factor=1,
        bootstrap=bootstrap,
        app_id=f"burst-{run_id}",
        topics=Topics(f"burst-{run_id}"),
        metrics_port=free_port(),
        data_dir=work / "worker",
    )
    await ensure_topics(bootstrap, settings.topic_partitions())
    worker = WorkerProcess(settings, work / "worker.log")
    producer = producer_for(bootstrap)
    async with contextlib.AsyncExitStack() as stack:
        worker.start()
        stack.callback(worker.stop)
        await worker.wait_ready()
        await producer.start()
        stack.push_async_callback(producer.stop)
        topics = settings.topics
        steady = RolloutState("steady", "web", "canary1", "stable1", canary_weight=20)
        await producer.send_and_wait(
            topics.rollouts, key=b"steady", value=encode_rollout_state(steady)
        )

        async def lines() -> None:  # ~1,000 lines a second for the steady canary
            while True:
                now = time.time()
                batch = b"\n".join(
                    encode_request_line(
                        RequestLine(
                            now,
                            "steady",
                            "web-0",
                            "canary1" if i % 5 == 0 else "stable1",
                            200,
                            10.0,
                        )
                    )
                    for i in range(100)
                )
                await producer.send(topics.requests, key=b"steady", value=batch)
                await asyncio.sleep(0.1)  # pacing the load, not a synchronisation

        traffic = asyncio.create_task(lines())
        stack.callback(traffic.cancel)
        samples: list[tuple[float, dict[str, float]]] = []

        async def sampler() -> None:
            while True:
                samples.append(
                    (time.monotonic(), await asyncio.to_thread(sample, settings.metrics_port))
                )
                await asyncio.sleep(0.25)

        sampling = asyncio.create_task(sampler())
        stack.callback(sampling.cancel)
        await asyncio.sleep(5.0)  # a baseline of counting before the burst
        burst_start = time.monotonic()
        for i in range(n):
            s = state(i)
            await producer.send(
                topics.rollouts, key=s.namespace.encode(), value=encode_rollout_state(s)
            )
        await producer.flush()
        produced = time.monotonic() - burst_start
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if samples and samples[-1][1].get("canarywatch_rollout_states_total", 0) >= n + 1:
                break
            await asyncio.sleep(0.25)
        applied = time.monotonic() - burst_start
        await asyncio.sleep(2.0)

    def at(t0: float, t1: float, name: str) -> float:
        window = [values for t, values in samples if t0 <= t <= t1]
        return (
            (window[-1].get(name, 0) - window[0].get(name, 0)) / max(1e-9, t1 - t0)
            if len(window) > 1
            else 0.0
        )

    before = at(burst_start - 4.5, burst_start, "canarywatch_request_lines_total")
    during = at(burst_start, burst_start + applied, "canarywatch_request_lines_total")
    gaps: list[float] = []
    last_change: float | None = None
    last_count: float | None = None
    for t, values in samples:
        count = values.get("canarywatch_evaluation_seconds_count")
        if count != last_count:
            if last_change is not None and t >= burst_start:
                gaps.append(t - last_change)
            last_change, last_count = t, count
    final = samples[-1][1]
    mean_eval = final.get("canarywatch_evaluation_seconds_sum", 0) / max(
        1, final.get("canarywatch_evaluation_seconds_count", 1)
    )
    print(
        f"on the broker: {n} snapshots produced in {produced:.1f}s, all applied {applied:.1f}s "
        f"after the burst began; tracked {final.get('canarywatch_canaries_in_progress', 0):.0f}; "
        f"lines counted {before:.0f}/s before, {during:.0f}/s during the burst; longest gap "
        f"between evaluation passes seen (0.25 s sampling) {max(gaps, default=0):.2f}s; "
        f"mean evaluation pass {mean_eval * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--snapshots", type=int, default=154_000)
    parser.add_argument("--bootstrap")
    parser.add_argument("--in-process-only", action="store_true")
    args = parser.parse_args()
    in_process(args.snapshots, Settings().view_batch)
    if args.in_process_only:
        return
    with tempfile.TemporaryDirectory(prefix="canarywatch-burst-") as tmp:
        if args.bootstrap:
            asyncio.run(on_broker(args.bootstrap, args.snapshots, Path(tmp)))
            return
        from agents.localkafka import LocalKafka

        broker = LocalKafka(Path(tmp) / "kafka", port=free_port(), controller_port=free_port())
        broker.start()
        try:
            asyncio.run(on_broker(broker.bootstrap, args.snapshots, Path(tmp)))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
