"""`canarywatch simulate`: plays a simulated fleet into Kafka in real time.

It publishes what the bridge would (rollout-state snapshots) and what log shippers would
(request-log lines, one per message or NDJSON batches), from `streams.simulation`.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from collections.abc import Callable

import numpy as np
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agents.kafka_auth import PLAINTEXT, KafkaAuth
from agents.settings import Topics
from streams.events import encode_rollout_state
from streams.simulation import (
    EnvPlan,
    FleetSimulator,
    ReleaseEnv,
    ReleaseFleetSettings,
    SimulationSettings,
    plan_fleet,
    release_fleet_lines,
    to_messages,
)


class SimulationRun:
    """A planned fleet and its real-time playback; `plans` is the truth."""

    def __init__(
        self,
        settings: SimulationSettings,
        seed: int,
        *,
        start: float,
        lines_per_message: int = 1,
        tick_s: float = 0.1,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.plans: list[EnvPlan] = plan_fleet(settings, rng, start)
        self.simulator = FleetSimulator(self.plans, settings, rng)
        self.lines_per_message = lines_per_message
        self.tick_s = tick_s
        self.lines_sent = 0
        # A tick that ran late would make the next one produce the lines of the whole gap:
        # at most `max_catch_up_s` of them, the rest is skipped (and counted), so a machine
        # slower than the asked rate falls behind in time, never in memory.
        self.max_catch_up_s = max(1.0, 10 * tick_s)
        self.skipped_s = 0.0
        self.on_behind: Callable[[float], None] | None = None

    def warn_when_behind(self, out: Callable[[str], None], *, every_s: float = 10.0) -> None:
        """Say (at most every `every_s`) that this machine cannot produce the asked rate."""
        warned: list[float] = []

        def behind(_skipped: float) -> None:
            if not warned or time.monotonic() - warned[-1] > every_s:
                warned.append(time.monotonic())
                out(
                    f"warning: this machine cannot produce the asked rate; skipped "
                    f"{self.skipped_s:.1f}s of simulated traffic so far (catch-up capped at "
                    f"{self.max_catch_up_s:.0f}s)"
                )

        self.on_behind = behind

    async def play(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        until: float,
        clock: Callable[[], float] = time.time,
        stop: asyncio.Event | None = None,
        request_partition: Callable[[bytes], int] | None = None,
    ) -> None:
        """Publish states and request lines tick by tick until `until` (epoch seconds) or `stop`.

        `request_partition` picks each request-log message's partition from its key, as a log
        shipper's partitioner would (default: the producer's, murmur2 like the bridge's)."""
        previous = clock()
        while True:
            now = clock()
            if now >= until or (stop is not None and stop.is_set()):
                return
            for state in self.simulator.changed_states(now):
                await producer.send(
                    topics.rollouts, key=state.namespace.encode(), value=encode_rollout_state(state)
                )
            previous, skipped = catch_up_window(previous, now, self.max_catch_up_s)
            if skipped > 0:
                self.skipped_s += skipped
                if self.on_behind is not None:
                    self.on_behind(skipped)
            lines = self.simulator.requests(previous, now)
            deliveries = [
                await producer.send(
                    topics.requests,
                    key=key,
                    value=value,
                    partition=None if request_partition is None else request_partition(key),
                )
                for key, value in to_messages(lines, self.lines_per_message)
            ]
            if deliveries:
                await asyncio.gather(*deliveries)
            self.lines_sent += len(lines)
            previous = now
            # Pacing the playback in real time is the simulator's job, not a synchronisation.
            await asyncio.sleep(max(0.0, self.tick_s - (clock() - now)))


def catch_up_window(previous: float, now: float, max_catch_up_s: float) -> tuple[float, float]:
    """The start of the interval to produce lines for, and the seconds skipped to cap it."""
    if now - previous <= max_catch_up_s:
        return previous, 0.0
    return now - max_catch_up_s, now - max_catch_up_s - previous


def producer_for(bootstrap: str, auth: KafkaAuth = PLAINTEXT) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks=1, **auth.client_options()
    )


async def simulate(
    bootstrap: str,
    topics: Topics,
    settings: SimulationSettings,
    seed: int,
    duration: float,
    lines_per_message: int = 1,
    auth: KafkaAuth = PLAINTEXT,
) -> SimulationRun:
    """Play until `duration` is over, or SIGINT/SIGTERM (then stop cleanly: the producer is
    flushed and closed). Warns when the machine cannot produce the asked rate; shows progress
    on a terminal."""
    run = SimulationRun(settings, seed, start=time.time(), lines_per_message=lines_per_message)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    run.warn_when_behind(lambda text: print(f"simulate: {text}", file=sys.stderr, flush=True))
    producer = producer_for(bootstrap, auth)
    await producer.start()
    progress = Progress(
        TextColumn("simulate"), BarColumn(), TextColumn("{task.fields[lines]} lines"),
        TimeElapsedColumn(), transient=True, disable=not sys.stderr.isatty(),
        console=Console(stderr=True),
    )  # fmt: skip
    try:
        with progress:
            total = duration if math.isfinite(duration) else None
            task = progress.add_task("simulate", total=total, lines=0)
            started = time.time()

            async def show() -> None:
                while True:
                    progress.update(task, completed=time.time() - started, lines=run.lines_sent)
                    await asyncio.sleep(0.5)  # the progress display's refresh

            showing = asyncio.create_task(show())
            try:
                await run.play(producer, topics, time.time() + duration, stop=stop)
            finally:
                showing.cancel()
    finally:
        await producer.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return run


async def play_release_fleet(
    producer: AIOKafkaProducer,
    topics: Topics,
    envs: list[ReleaseEnv],
    settings: ReleaseFleetSettings,
    start: float,
    *,
    seed: int,
    rounds: int = 20,
    round_s: float = 0.75,
) -> int:
    """A release fleet's rollout states, then its requests timestamped over rounds x round_s
    seconds from `start`, each round published when its time comes (the per-environment test
    reads a burst as one slice, so a broken customer canary needs its traffic spread in
    processing time). Returns the number of lines."""
    for e in envs:
        await producer.send(
            topics.rollouts, key=e.namespace.encode(), value=encode_rollout_state(e.state(start))
        )
    await producer.flush()
    rng = np.random.default_rng(seed)
    lines = release_fleet_lines(envs, settings, rng, start, rounds * round_s)
    for k in range(rounds):
        lo, hi = start + k * round_s, start + (k + 1) * round_s
        batch = [line for line in lines if lo <= line.ts < hi]
        for key, value in to_messages(batch, 50):
            await producer.send(topics.requests, key=key, value=value)
        await producer.flush()
        # Pacing the playback in real time is the simulator's job, not a synchronisation.
        await asyncio.sleep(max(0.0, hi - time.time()))
    return len(lines)
