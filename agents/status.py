"""`canarywatch status` and `canarywatch explain`: the verdicts topic, read to its end, shown.

The compacted `<prefix>.verdicts` topic holds the latest snapshot per env from whichever worker
holds it, so one read from the beginning to the end offsets (taken when the read starts) sees
the whole fleet, however many workers there are. The tail not yet compacted also holds earlier
snapshots of the same env: `explain --plot` draws the canary's life from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from agents.kafka_auth import PLAINTEXT, KafkaAuth
from agents.settings import Settings
from streams.pooledpass import KEY_PREFIX
from streams.promotion import ABORT, INCONCLUSIVE, PASS, VerdictSnapshot
from streams.status import (
    PLATFORM,
    STALE,
    History,
    StatusRow,
    bound_text,
    duration,
    explain,
    history,
    status_items,
    status_rows_json,
)

if TYPE_CHECKING:  # rich is imported when a table is drawn: `-o json` does without it
    from rich.console import Console
    from rich.text import Text

STYLE = {ABORT: "bold red", PLATFORM: "yellow", STALE: "magenta", INCONCLUSIVE: "", PASS: "green"}

RELEASE_KEY = KEY_PREFIX.encode()  # the releases' pooled passes share the topic


@dataclass(slots=True)
class TopicRead:
    """The topic's latest value per key, raw (decoded on demand: `status` decodes 20,000 of
    them as JSON only, `explain` one), and the kept env's earlier snapshots."""

    raw: dict[str, bytes] = field(default_factory=dict)
    history: dict[str, list[VerdictSnapshot]] = field(default_factory=dict)
    records: int = 0

    def snapshot(self, env: str) -> VerdictSnapshot | None:
        value = self.raw.get(env)
        if value is None:
            return None
        try:
            return VerdictSnapshot.decode(value)
        except (ValueError, TypeError, KeyError):
            return None

    def items(self) -> list[dict[str, Any]]:
        """Every env's snapshot as its JSON object (one orjson call each, no dataclasses)."""
        out = []
        loads = orjson.loads
        for value in self.raw.values():
            try:
                item = loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out


@contextlib.contextmanager
def gc_paused(*, resume: bool = True) -> Iterator[None]:
    """No cyclic garbage collection while a burst of objects is built that all stay alive:
    each collection would walk them all again for nothing (with it, reading and showing
    20,000 snapshots took twice the CPU time). Reference counting still frees what dies.
    `resume=False`: leave it off (a command that exits right after: not even the
    interpreter's exit then walks them)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled and resume:
            gc.enable()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions (none when it does not exist), metadata fetched if need be."""
    parts = consumer.partitions_for_topic(topic)
    if parts is None:
        await consumer._client.force_metadata_update()  # a consumer without subscriptions
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def read_verdicts(
    bootstrap: str,
    topic: str,
    *,
    keep_history_of: str | None = None,
    timeout_s: float = 30.0,
    auth: KafkaAuth = PLAINTEXT,
) -> TopicRead:
    """Every record of `topic` from the beginning to the end offsets as of now (no group)."""
    out = TopicRead()
    kept: dict[str, list[VerdictSnapshot]] = defaultdict(list)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        **auth.client_options(),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        check_crcs=False,  # a read-only view; the broker checked them on the way in
    )
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        if not tps:
            return out
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        # The latest value per key, kept raw: decoded only when asked for (the uncompacted
        # tail holds earlier snapshots of the same env; only `keep_history_of`'s are decoded).
        latest: dict[bytes, bytes] = {}
        history_key = keep_history_of.encode() if keep_history_of is not None else None
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: not at its end after {timeout_s:.0f}s")
            batches = await consumer.getmany(*todo, timeout_ms=500, max_records=100_000)
            for tp, records in batches.items():
                end = ends[tp]
                for record in records:
                    key = record.key
                    if key is None or record.offset >= end:
                        continue
                    out.records += 1
                    latest[key] = record.value or b""
                    if key == history_key and record.value:
                        with contextlib.suppress(ValueError, TypeError, KeyError):
                            kept[keep_history_of or ""].append(VerdictSnapshot.decode(record.value))
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        # An empty value is a tombstone (the env is gone); `release:` keys are releases' pooled
        # passes, which share the topic.
        out.raw = {
            key.decode(errors="replace"): value
            for key, value in latest.items()
            if value and not key.startswith(RELEASE_KEY)
        }
    finally:
        await consumer.stop()
    out.history = dict(kept)
    return out


# --- status -------------------------------------------------------------------------------


def _signal_cell(row: StatusRow) -> Text:
    from rich.text import Text

    text = Text()
    for i, s in enumerate(row.signals):
        if i:
            text.append(" ")
        text.append(f"{s.signal[:3]}:{s.verdict}", style=STYLE.get(s.verdict, ""))
    return text


def render_table(rows: Sequence[StatusRow], console: Console, *, title: str = "") -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title or None, box=None, header_style="bold", pad_edge=False)
    for name in (
        "CLUSTER", "NAMESPACE", "ROLLOUT", "RELEASE", "STEP", "WEIGHT", "VERDICT", "SIGNALS",
        "CANARY BAD", "STABLE BAD", "STAT/THR", "AGE", "PASS BOUND", "ETA", "TRIAGE",
    ):  # fmt: skip
        table.add_column(name, no_wrap=True)
    for row in rows:
        errors = row.signals[0] if row.signals else None
        worst = max(row.signals, key=lambda s: s.statistic / max(s.threshold, 1e-9), default=None)
        table.add_row(
            row.cluster or "-",
            row.namespace,
            row.rollout,
            row.release or "-",
            "-" if row.step is None else str(row.step),
            "-" if row.weight is None else f"{row.weight}%",
            Text(row.verdict, style=STYLE.get(row.verdict, "")),
            _signal_cell(row),
            f"{errors.canary_bad}/{errors.canary_requests}" if errors else "-",
            f"{errors.stable_bad}/{errors.stable_requests}" if errors else "-",
            f"{worst.statistic:.2f}/{worst.threshold:.2f}" if worst else "-",
            duration(row.age_s),
            bound_text(errors) if errors else "-",
            duration(row.eta_s),
            row.triage or "-",
        )
    console.print(table)


@dataclass(frozen=True, slots=True)
class StatusOptions:
    namespaces: tuple[str, ...] = ()
    releases: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    output: str = "table"  # table | json
    watch: bool = False
    every_s: float = 2.0
    stale_after_s: float = 30.0


async def status_once(settings: Settings, options: StatusOptions) -> list[StatusRow]:
    read = await read_verdicts(settings.bootstrap, settings.topics.verdicts, auth=settings.kafka)
    return status_rows_json(
        read.items(),
        time.time(),
        namespaces=options.namespaces,
        releases=options.releases,
        verdicts=options.verdicts,
        stale_after_s=options.stale_after_s,
    )


async def status_json(settings: Settings, options: StatusOptions) -> bytes:
    """`status -o json`'s document: `{"items": [row.to_json(), ...]}`, most urgent first."""
    read = await read_verdicts(settings.bootstrap, settings.topics.verdicts, auth=settings.kafka)
    items = status_items(
        read.items(),
        time.time(),
        namespaces=options.namespaces,
        releases=options.releases,
        verdicts=options.verdicts,
        stale_after_s=options.stale_after_s,
    )
    return orjson.dumps({"items": items})


def rows_json(rows: Sequence[StatusRow]) -> bytes:
    return orjson.dumps({"items": [row.to_json() for row in rows]})


async def run_status(
    settings: Settings, options: StatusOptions, console: Console | None = None
) -> int:
    while True:
        # Once: the process exits after printing, so the collector stays off to the end.
        with gc_paused(resume=options.watch):
            if options.output == "json":
                document = await status_json(settings, options)
                sys.stdout.flush()
                sys.stdout.buffer.write(document + b"\n")
                sys.stdout.buffer.flush()
                del document
            else:
                rows = await status_once(settings, options)
                if console is None:
                    from rich.console import Console

                    console = Console()
                if options.watch:
                    console.clear()
                counts = {v: sum(r.verdict == v for r in rows) for v in (ABORT, PLATFORM, STALE)}
                filtered = options.namespaces or options.releases or options.verdicts
                title = (
                    f"{len(rows)} canaries in progress{' (filtered)' if filtered else ''}"
                    + "".join(f", {n} {v}" for v, n in counts.items() if n)
                )
                render_table(rows, console, title=title)
                del rows
        if not options.watch:
            return 0
        await asyncio.sleep(options.every_s)  # the refresh interval of --watch, not a sync


# --- explain ------------------------------------------------------------------------------


async def run_explain(
    settings: Settings, env: str, console: Console, plot: Path | None = None
) -> int:
    read = await read_verdicts(
        settings.bootstrap, settings.topics.verdicts, keep_history_of=env, auth=settings.kafka
    )
    snapshot = read.snapshot(env)
    if snapshot is None:
        console.print(f"canarywatch: no canary in progress for {env} in {settings.topics.verdicts}")
        return 1
    for line in explain(snapshot, time.time()):
        console.print(line, highlight=False)
    if plot is not None:
        plot_history(history(read.history.get(env, [snapshot])), env, plot)
        console.print(f"plot: {plot}")
    return 0


def plot_history(h: History, title: str, path: Path) -> None:
    """The statistic against its threshold, and the canary and stable bad ratios, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for i, name in enumerate(h.signals):
        top.plot(h.t, h.statistic[i], marker=".", label=f"{name} statistic")
        bottom.plot(h.t, h.canary_ratio[i], marker=".", label=f"{name} canary")
        bottom.plot(h.t, h.stable_ratio[i], linestyle="--", label=f"{name} stable")
    if h.t:
        top.axhline(h.threshold, color="red", linestyle=":", label="abort threshold")
    top.set_ylabel("ln e-value")
    top.set_title(f"{title}: {h.verdicts[-1] if h.verdicts else '?'}")
    top.legend(loc="upper left", fontsize="small")
    bottom.set_ylabel("bad / requests")
    bottom.set_xlabel("seconds into the canary")
    bottom.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def status_json_items(text: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(text)["items"]
    return items
