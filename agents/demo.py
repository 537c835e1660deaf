"""`canarywatch demo`: broker, worker and simulated fleet together; truth against decisions.

Starts a local Kafka broker (unless given one), creates the topics, starts the worker as a child
process, plays the simulated fleet, prints every abort with its evidence as it arrives, and ends
with the scorecard. The end-to-end test runs the same `run_demo`. Then the release demo
(agents/releasedemo.py): one release halted across 200 quiet environments, and the triage of
its aborts (`--no-release` skips it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agents.kafka_admin import ensure_topics
from agents.processes import WorkerProcess, free_port, scrape
from agents.settings import Settings, Topics
from agents.simulator import SimulationRun, producer_for
from agents.status import StatusOptions, render_table, status_once
from agents.ui import Board
from streams.events import AbortCommand, readable_abort_commands
from streams.simulation import Scenario, Scorecard, SimulationSettings, score
from streams.status import StatusRow

Printer = Callable[[str], None]


@dataclass(slots=True)
class DemoResult:
    scorecard: Scorecard
    commands: list[tuple[float, AbortCommand]] = field(default_factory=list)  # (seen at, cmd)
    lines_sent: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)  # env -> the worker's last verdict
    status: list[StatusRow] = field(default_factory=list)  # `canarywatch status` at the end
    seed: int = 0


class CommandWatcher:
    """Reads the commands topic from its current end; remembers when each command arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        # No group: every partition is assigned, starting from the end ("latest").
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest"
        )
        self.seen: list[tuple[float, AbortCommand]] = []

    async def start(self) -> None:
        await self._consumer.start()
        for tp in self._consumer.assignment():  # pin the end offsets before anything is produced
            await self._consumer.position(tp)
        if not self._consumer.assignment():
            raise RuntimeError("the commands topic has no partitions")

    async def watch(self, on_command: Callable[[float, AbortCommand], None]) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for command in readable_abort_commands(r.value for r in records):
                    self.seen.append((now, command))
                    on_command(now, command)

    async def stop(self) -> None:
        await self._consumer.stop()


# The simulator stamps each line as it sends it, to every partition at every tick: its lines
# are never more out of order than the longest catch-up tick (1 s, agents/simulator.py), and no
# partition is quiet for long. The demo's worker therefore runs with this much lateness and
# idle time at most (event time, docs/decisions.md): its aborts show the test's speed, not a
# log shipper's delay.
DEMO_LATENESS_S = 1.0
DEMO_IDLE_S = 1.0


def demo_settings(settings: Settings) -> Settings:
    """`settings` with the demo's event-time lateness and idle time (at most)."""
    et = settings.event_time
    return replace(
        settings,
        event_time=replace(
            et,
            allowed_lateness_s=min(et.allowed_lateness_s, DEMO_LATENESS_S),
            idle_s=min(et.idle_s, DEMO_IDLE_S),
        ),
    )


async def run_demo(
    settings: Settings,
    simulation: SimulationSettings,
    *,
    duration: float | None,
    seed: int,
    lines_per_message: int = 1,
    work_dir: Path,
    out: Printer = print,
    stop: asyncio.Event | None = None,
    board_port: int | None = None,
    progress: bool = False,
) -> DemoResult:
    """Run the whole path against the broker at `settings.bootstrap`; None runs until cancelled.
    The worker runs with `demo_settings(settings)`."""
    settings = demo_settings(settings)
    await ensure_topics(
        settings.bootstrap,
        settings.topic_partitions(),
        {"max.message.bytes": str(settings.topic_max_message_bytes)},
        replication_factor=settings.replication_factor,
        auth=settings.kafka,
    )
    worker = WorkerProcess(settings, work_dir / "worker.log")
    watcher = CommandWatcher(settings.bootstrap, settings.topics.commands)
    producer = producer_for(settings.bootstrap, settings.kafka)
    async with contextlib.AsyncExitStack() as stack:
        worker.start()
        stack.callback(worker.stop)
        await worker.wait_ready()
        await watcher.start()
        stack.push_async_callback(watcher.stop)
        await producer.start()
        stack.push_async_callback(producer.stop)
        if board_port is not None:
            board = await stack.enter_async_context(Board(settings, port=board_port))
            out(
                f"demo: metrics on http://127.0.0.1:{settings.metrics_port}/metrics, fleet "
                f"board on http://127.0.0.1:{board.port}/"
            )
        start = time.time()
        run = SimulationRun(simulation, seed, start=start, lines_per_message=lines_per_message)
        run.warn_when_behind(lambda text: out(f"demo: {text}"))
        plans = {plan.env: plan for plan in run.plans}
        out(
            f"demo: {len(run.plans)} environments, "
            f"{sum(p.scenario == Scenario.BAD for p in run.plans)} bad canaries, "
            f"{sum(p.scenario == Scenario.HEALTHY for p in run.plans)} healthy, "
            f"{sum(p.scenario == Scenario.PLATFORM for p in run.plans)} platform faults "
            f"(seed {seed})"
        )

        def show(seen_at: float, command: AbortCommand) -> None:
            plan = plans.get(command.env)
            truth = plan.scenario.value if plan else "unknown"
            since = (
                f"{seen_at - plan.fault_start:.1f}s after the fault"
                if plan and math.isfinite(plan.fault_start)
                else "no fault injected"
            )
            out(
                f"ABORT {command.env} hash={command.pod_hash} [{truth}, {since}] "
                f"{command.evidence.describe()}"
            )

        watching = asyncio.create_task(watcher.watch(show))
        until = math.inf if duration is None else start + duration
        bar = Progress(
            TextColumn("demo"), BarColumn(), TextColumn("{task.fields[lines]} lines, "
            "{task.fields[aborts]} aborts"), TimeElapsedColumn(), transient=True,
            disable=not progress, console=Console(stderr=True),
        )  # fmt: skip
        task = bar.add_task("demo", total=duration, lines=0, aborts=0)

        async def show_progress() -> None:
            while True:
                bar.update(task, completed=time.time() - start, lines=run.lines_sent,
                           aborts=len(watcher.seen))  # fmt: skip
                await asyncio.sleep(0.5)  # the progress display's refresh

        showing = asyncio.create_task(show_progress())
        try:
            with bar:
                await run.play(producer, settings.topics, until, stop=stop)
            # Let the last pass's commands arrive: the worker evaluates every evaluate_every_s,
            # and closes the last event-time slices once its partitions are idle.
            await asyncio.sleep(settings.event_time.idle_s + 3 * settings.evaluate_every_s + 1.0)
        finally:
            for running in (watching, showing):
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        verdicts = await asyncio.to_thread(read_verdicts, settings.metrics_port)
        status = await status_once(settings, StatusOptions())
    first_seen: dict[str, float] = {}
    for seen_at, command in watcher.seen:
        first_seen.setdefault(command.env, seen_at)
    scorecard = score(run.plans, first_seen)
    return DemoResult(scorecard, list(watcher.seen), run.lines_sent, verdicts, status, seed)


def read_verdicts(metrics_port: int) -> dict[str, str]:
    """The worker's current verdict per canary environment (errors signal, else latency)."""
    verdicts: dict[str, str] = {}
    for (_, labels), value in scrape(metrics_port, ("canarywatch_env_verdict",)).items():
        label = dict(labels)
        if value == 1.0 and (label["signal"] == "errors" or label["env"] not in verdicts):
            verdicts[label["env"]] = label["verdict"]
    return verdicts


def format_scorecard(result: DemoResult) -> list[str]:
    card = result.scorecard
    lines = [f"{'environment':<16} {'truth':<9} {'decision':<9} {'verdict':<13} time to abort"]
    for o in sorted(card.outcomes, key=lambda o: (o.scenario != Scenario.BAD, o.env)):
        if o.scenario == Scenario.STEADY and not o.aborted:
            continue
        delay = f"{o.time_to_abort_s:.1f}s" if o.time_to_abort_s is not None else "-"
        verdict = result.verdicts.get(o.env, "-")
        lines.append(
            f"{o.env:<16} {o.scenario.value:<9} {'abort' if o.aborted else 'none':<9} "
            f"{verdict:<13} {delay}"
        )
    lines.append(f"{result.lines_sent} request lines played; commands: {len(result.commands)}")
    if "inconclusive" in result.verdicts.values():
        lines.append(
            "inconclusive: too little traffic yet to tell either way (fewer canary requests than "
            "even a clear regression would need to show); never an abort. `canarywatch explain "
            "NAMESPACE/ROLLOUT` says what each one still needs."
        )
    lines.append(f"demo: {card.summary()} (seed {result.seed})")
    return lines


async def demo_main(
    bootstrap: str | None,
    duration: float | None,
    seed: int,
    lines_per_message: int,
    simulation: SimulationSettings,
    release: bool = True,
) -> int:
    """The classic demo, then (unless `release` is False) the release demo on the same broker
    (agents/releasedemo.py)."""
    from agents.localkafka import LocalKafka

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C ends the run, then the scorecard
        loop.add_signal_handler(signum, stop.set)
    with tempfile.TemporaryDirectory(prefix="canarywatch-demo-") as tmp:
        work_dir = Path(tmp)
        broker: LocalKafka | None = None
        if bootstrap is None:
            broker = LocalKafka(work_dir / "kafka", port=free_port(), controller_port=free_port())
            print(f"demo: starting a local Kafka broker on {broker.bootstrap} ...", flush=True)
            await asyncio.to_thread(broker.start)
            bootstrap = broker.bootstrap
        settings = Settings(
            replication_factor=1,
            bootstrap=bootstrap,
            app_id=f"canarywatch-demo-{seed}",
            metrics_port=free_port(),
            data_dir=work_dir / "worker",
        )
        try:
            result = await run_demo(
                settings,
                simulation,
                duration=duration,
                seed=seed,
                lines_per_message=lines_per_message,
                work_dir=work_dir,
                out=lambda text: print(text, flush=True),
                stop=stop,
                board_port=free_port(),
                progress=sys.stderr.isatty(),
            )
            for line in format_scorecard(result):
                print(line, flush=True)
            print("demo: canarywatch status, as the run ended:", flush=True)
            render_table(
                result.status, Console(), title=f"{len(result.status)} canaries in progress"
            )
            if release and not stop.is_set():
                from agents.releasedemo import run_release_demo

                await run_release_demo(
                    Settings(
                        replication_factor=settings.replication_factor,  # the demo's one broker
                        bootstrap=bootstrap,
                        app_id=f"canarywatch-demo-release-{seed}",
                        topics=Topics(f"canarywatch-demo-release-{seed}"),
                        metrics_port=free_port(),
                        data_dir=work_dir / "release-worker",
                    ),
                    work_dir,
                    seed=seed,
                    out=lambda text: print(text, flush=True),
                )
        finally:
            if broker is not None:
                await asyncio.to_thread(broker.stop)
            kept = keep_worker_log(work_dir / "worker.log", seed)
            if kept is not None:
                print(f"demo: worker log kept in {kept}", flush=True)
    return 0


def keep_worker_log(log: Path, seed: int) -> Path | None:
    """Copy the worker's log out of the demo's temporary directory, which goes at exit."""
    from agents.kafkadist import cache_root

    if not log.is_file():
        return None
    kept = cache_root() / "demo" / f"worker-{seed}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    return kept
