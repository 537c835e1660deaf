"""The release part of `canarywatch demo`: a bad release across many quiet environments is
halted fleet-wide, and every abort is triaged.

A worker process and a release agent process on the demo's broker; the release fleet
of `streams.simulation.ReleaseFleetSettings` (200 quiet environments of a release 10x worse than
stable, 40 of a healthy release, one of them with its own broken code). Prints the halt, the
fan-out and the triage as they arrive on the releases, commands and triage topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from agents.processes import WorkerProcess, free_port, poll_until, release_agent_process
from agents.releases import ensure_release_topics
from agents.settings import Settings
from agents.simulator import play_release_fleet, producer_for
from streams.events import AbortCommand, DecodeError, decode_abort_command
from streams.releaserecords import (
    ReleaseVerdict,
    TriageRecord,
    decode_release_verdict,
    decode_triage,
)
from streams.simulation import ReleaseFleetSettings, ReleaseScenario, plan_release_fleet

Printer = Callable[[str], None]


@dataclass(slots=True)
class ReleaseDemoResult:
    verdicts: list[ReleaseVerdict] = field(default_factory=list)
    commands: list[AbortCommand] = field(default_factory=list)
    triage: dict[str, TriageRecord] = field(default_factory=dict)  # env -> latest
    lines_sent: int = 0


async def run_release_demo(
    settings: Settings,
    work_dir: Path,
    *,
    seed: int,
    fleet: ReleaseFleetSettings | None = None,
    out: Printer = print,
    within_s: float = 60.0,
) -> ReleaseDemoResult:
    fleet = fleet or ReleaseFleetSettings()
    logging.getLogger("canarywatch.releases").setLevel(logging.ERROR)  # the demo prints its own
    tag = f"{seed % 100000:05d}"
    bad_release, healthy_release = f"shop:7.3.0-{tag}", f"shop:7.2.9-{tag}"
    envs = plan_release_fleet(
        fleet, (f"rel-bad-{tag}", bad_release), (f"rel-ok-{tag}", healthy_release), tag
    )
    truth = {e.env: e.scenario for e in envs}
    out(
        f"release demo: {fleet.bad_release_envs} quiet environments on release {bad_release} "
        f"(canary {fleet.bad_release_error_rate:.0%} errors vs {fleet.base_error_rate:.0%}, "
        f"{fleet.quiet_requests} requests each), {fleet.healthy_envs} on {healthy_release}, "
        f"{fleet.bad_customer_envs} of them with their own broken code"
    )
    await ensure_release_topics(settings)
    result = ReleaseDemoResult()
    reader = AIOKafkaConsumer(
        settings.topics.releases,
        settings.topics.commands,
        settings.topics.triage,
        bootstrap_servers=settings.bootstrap,
        **settings.kafka.client_options(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    worker = WorkerProcess(settings, work_dir / "release-worker.log")
    agent = release_agent_process(
        settings.with_overrides(metrics_port=free_port()), work_dir / "release-agent.log"
    )
    producer = producer_for(settings.bootstrap, settings.kafka)
    async with contextlib.AsyncExitStack() as stack:
        worker.start()
        stack.callback(worker.stop)
        agent.start()
        stack.callback(agent.stop)
        await worker.wait_ready()
        await agent.wait_ready()
        await reader.start()
        stack.push_async_callback(reader.stop)
        await producer.start()
        stack.push_async_callback(producer.stop)

        def show(topic: str, value: bytes) -> None:
            try:
                if topic == settings.topics.releases:
                    verdict = decode_release_verdict(value)
                    if not any(v.decision_id == verdict.decision_id for v in result.verdicts):
                        out(
                            f"RELEASE HALT {verdict.decision_id}: {verdict.evidence.describe()}; "
                            f"{len(verdict.targets)} environments to abort"
                        )
                    result.verdicts.append(verdict)
                elif topic == settings.topics.commands:
                    command = decode_abort_command(value)
                    result.commands.append(command)
                    if command.reason != "ReleaseRegression":
                        out(
                            f"ABORT {command.env} [{truth.get(command.env, '?')}] by its own "
                            f"test: {command.evidence.describe()}"
                        )
                else:
                    record = decode_triage(value)
                    if record.env not in result.triage or record.category.value != "release":
                        out(f"TRIAGE {record.describe()}")
                    result.triage[record.env] = record
            except DecodeError:
                return

        async def read() -> None:
            while True:
                batch = await reader.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    for record in records:
                        show(tp.topic, record.value or b"")

        reading = asyncio.create_task(read())
        try:
            result.lines_sent = await play_release_fleet(
                producer, settings.topics, envs, fleet, time.time(), seed=seed
            )
            customer = {e.env for e in envs if e.scenario is ReleaseScenario.BAD_CUSTOMER}

            def done() -> bool:
                return bool(result.verdicts) and customer <= set(result.triage)

            with contextlib.suppress(TimeoutError):
                await poll_until(done, within_s, "the release halt and the triage")
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    fanout = [c for c in result.commands if c.reason == "ReleaseRegression"]
    aborted_bad = {c.env for c in result.commands} & {
        e.env for e in envs if e.scenario is ReleaseScenario.BAD_RELEASE
    }
    healthy_hit = {c.env for c in result.commands} & {
        e.env for e in envs if e.scenario is ReleaseScenario.HEALTHY
    }
    out(
        f"release demo: {len({v.decision_id for v in result.verdicts})} release halt(s); "
        f"{len(fanout)} fan-out aborts, each naming the release decision and triage `release`; "
        f"{len(aborted_bad)}/{fleet.bad_release_envs} environments of the bad release aborted; "
        f"{len(healthy_hit)} healthy environments touched"
    )
    categories = Counter(r.category.value for r in result.triage.values())
    out(f"release demo: triage of reported aborts: {dict(sorted(categories.items()))}")
    return result
