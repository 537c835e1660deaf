"""`canarywatch replay`: recorded request logs and rollout states through the engine.

From NDJSON files (request-log lines and rollout-state snapshots, mixed or in separate files,
any order: they are sorted by their own time), or from the request-log and rollout-state
topics from a time on (`--since`, epoch seconds; to the end offsets as of the start). Prints
what canarywatch would have decided and when; `--plot` draws each env's verdict over time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from agents.settings import Settings
from agents.status import partitions_of
from streams.fleet import Fleet
from streams.replay import REQUEST, ROLLOUT, Record, ReplayResult, classify, replay


def file_records(paths: Sequence[Path]) -> Iterator[Record]:
    for path in paths:
        with path.open("rb") as f:
            for line in f:
                line = line.strip()
                if line:
                    record = classify(line)
                    if record is not None:
                        yield record


async def topic_records(settings: Settings, since: float | None) -> list[Record]:
    """Request lines and rollout states from `since` (Kafka timestamps) to the current ends."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        **settings.kafka.client_options(),
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=settings.fetch_max_bytes,
        max_partition_fetch_bytes=settings.fetch_partition_bytes,
    )
    await consumer.start()
    out: list[Record] = []
    try:
        kinds = {settings.topics.requests: REQUEST, settings.topics.rollouts: ROLLOUT}
        tps = [tp for topic in kinds for tp in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if since is None:
            await consumer.seek_to_beginning(*tps)
        else:
            found = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
        todo = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=100_000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= ends[tp] or not r.value:
                        continue
                    if kinds[tp.topic] == ROLLOUT:
                        record = classify(r.value)
                        if record is not None:
                            out.append(record)
                    else:  # a message may carry NDJSON lines: each at its own time
                        for line in r.value.split(b"\n"):
                            record = classify(line) if line.strip() else None
                            if record is not None:
                                out.append(record)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return out


def run_replay(settings: Settings, records: list[Record] | Iterator[Record]) -> ReplayResult:
    fleet = Fleet(
        settings.decisions,
        settings.window,
        max_message_bytes=settings.max_message_bytes,
        promotion=settings.promotion,
        event_time=settings.event_time,
    )
    return replay(records, fleet, every_s=settings.evaluate_every_s)


def plot_replay(result: ReplayResult, path: Path) -> None:
    """Each env's gate verdict over the recorded time; aborts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = {"pass": 0, "inconclusive": 1, "abort": 2}
    envs = sorted({d.env for d in result.changes}, key=lambda e: (e not in result.aborted_at(), e))
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(envs) + 1)))
    colors = {"pass": "tab:green", "inconclusive": "tab:gray", "abort": "tab:red"}
    for y, env in enumerate(envs):
        changes = [d for d in result.changes if d.env == env]
        for i, d in enumerate(changes):
            until = changes[i + 1].t if i + 1 < len(changes) else result.end
            ax.plot([d.t - result.start, until - result.start], [y, y], linewidth=6,
                    color=colors.get(d.verdict, "black"), solid_capstyle="butt")  # fmt: skip
        _ = levels
    for d in result.aborts:
        if d.env in envs:
            ax.plot(d.t - result.start, envs.index(d.env), marker="x", color="black")
    ax.set_yticks(range(len(envs)), envs, fontsize="small")
    ax.set_xlabel("seconds into the recording")
    ax.set_title("canarywatch replay: green pass, grey inconclusive, red abort (x: command)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replay_main(
    settings: Settings,
    files: Sequence[Path],
    from_topic: bool,
    since: float | None,
    plot: Path | None,
    output: str = "text",
) -> int:
    started = time.perf_counter()
    if from_topic:
        records: list[Record] | Iterator[Record] = asyncio.run(topic_records(settings, since))
    elif files:
        records = file_records(files)
    else:
        print("canarywatch replay: give NDJSON files or --from-topic", file=sys.stderr)
        return 2
    result = run_replay(settings, records)
    took = time.perf_counter() - started
    if output == "json":
        print(json.dumps({
            "requests": result.requests, "states": result.states, "invalid": result.invalid,
            "start": result.start, "end": result.end, "seconds": took,
            "aborts": [d.to_json() for d in result.aborts],
            "changes": [d.to_json() for d in result.changes], "final": result.final,
        }))  # fmt: skip
    else:
        for line in result.lines():
            print(line)
        print(f"replay: took {took:.2f}s")
    if plot is not None:
        plot_replay(result, plot)
        print(f"plot: {plot}", file=sys.stderr if output == "json" else sys.stdout)
    return 0
