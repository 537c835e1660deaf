"""`make bench-faults`: evidence across a kill -9 on the real local broker (seeded, one run).

Measured here: K/N (canaries whose evidence after a kill -9 and a restart is at least what it
was at the kill), L and D (request lines lost from / counted twice into the test, against what
was produced), C (abort commands sent twice for one decision id, `ns/rollout@hash#epoch`, across
the kill; the bad canaries abort, so C counts real commands), S (seconds from starting a
replacement worker to its first evaluation pass with restored evidence, 100,000 environments,
5 % in canary) and R (batched lines/s with checkpoints on / off, interleaved drains of one
backlog) and B (`backlog`: one recording, with bad canaries and a platform incident, sent
live at its own pace to one worker and produced as one backlog before a second worker starts:
B = 1 when both abort the same revisions).
"""

from __future__ import annotations

import argparse
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
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.kafka_admin import ensure_topics
from agents.localkafka import LocalKafka, free_ports
from agents.processes import WorkerProcess, free_port, poll_until, scrape
from agents.settings import Settings, Topics
from bench.throughput import PARTITIONS, Bench, Scale, best_drain, start_workers
from bench.traffic import CANARY_SHARE, batch_by_key, fleet_states, produce, request_lines
from streams.events import (
    RequestLine,
    RolloutState,
    decode_abort_command,
    encode_request_line,
    encode_rollout_state,
)

N_ENVS = 60
BAD = 10  # the first BAD environments are bad canaries (25 % canary errors vs 0 on stable)
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
            bad_p = 0.25 if i < BAD else 0.0
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

    async def commands(within_s: float = 3.0) -> Counter[str]:
        consumer = AIOKafkaConsumer(
            settings.topics.commands, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        ids: Counter[str] = Counter()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    ids[decode_abort_command(r.value or b"").decision_id] += 1
        await consumer.stop()
        return ids

    # Live rounds, each once the last is counted, until every bad canary has aborted (the
    # rounds sent while the worker was down are stamped within seconds: few slices).
    deadline = time.monotonic() + 90
    while len({i.split("@")[0] for i in await commands(1.0)}) < BAD and time.monotonic() < deadline:
        await send_round()
        goal = sum(produced.values())

        def caught_up(g: float = goal) -> bool:
            return sum(counted_by_env(port).values()) >= g

        with contextlib.suppress(TimeoutError):
            await poll_until(caught_up, 30, "the round counted")
    restarted.stop()
    await producer.stop()
    ids = await commands()
    duplicates = sum(c - 1 for c in ids.values() if c > 1)
    print("| measure | value |")
    print("|---|---|")
    print(f"| canaries (busy and quiet) | {N_ENVS} |")
    print(f"| evidence kept across kill -9 | {kept}/{N_ENVS} |")
    print(f"| canary lines produced | {target:.0f} |")
    print(f"| lost / counted twice | {lost:.0f} / {double:.0f} |")
    print(f"| abort commands / decision ids | {sum(ids.values())} / {len(ids)} |")
    print(f"| bad canaries / aborted | {BAD} / {len({i.split('@')[0] for i in ids})} |")
    print(f"| restart to ready (N={N_ENVS}, not 100k) | {ready_s:.1f} s |")
    return (
        f"faults: evidence_kept={kept}/{N_ENVS} resume_s_100k=nan backlog_decisions_equal=0 "
        f"lost_lines={lost:.0f} double_counted={double:.0f} duplicate_commands={duplicates} "
        "checkpoint_throughput_ratio=nan"
    )


async def aborted_revisions(bootstrap: str, topic: str, within_s: float = 3.0) -> set[str]:
    """`ns/rollout@hash` of every abort command on `topic` (the epoch left out)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: set[str] = set()
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    out.add(decode_abort_command(r.value or b"").decision_id.split("#")[0])
    finally:
        await consumer.stop()
    return out


BACKLOG_ENVS = 24
BACKLOG_BAD = 6  # env-000..005: canary 30 % errors from 10 s on
INCIDENT = range(6, 10)  # env-006..009: both arms 40 % errors at 20-35 s (a platform incident)
BACKLOG_SECONDS = 45


def recording(start: float) -> list[list[tuple[bytes, bytes]]]:
    """Per second of event time, the (key, NDJSON message) of each environment; lines stamped
    within that second, shuffled a little (a shipper's batches)."""
    rng = np.random.default_rng(SEED + 1)
    seconds = []
    for second in range(BACKLOG_SECONDS):
        messages = []
        for i in range(BACKLOG_ENVS):
            ns = f"env-{i:03d}"
            n_c = 20 if i % 2 == 0 else 4
            lines = []
            for arm, n in (("c1", n_c), ("s1", 4 * n_c)):
                p = 0.002
                if arm == "c1" and i < BACKLOG_BAD and second >= 10:
                    p = 0.3
                if i in INCIDENT and 20 <= second < 35:
                    p = 0.4
                for _ in range(n):
                    ts = start + second + float(rng.random())
                    status = 503 if rng.random() < p else 200
                    lines.append(RequestLine(ts, ns, f"web-{arm}-0", arm, status, 5.0))
            rng.shuffle(lines)
            messages.append((ns.encode(), b"\n".join(encode_request_line(x) for x in lines)))
        seconds.append(messages)
    return seconds


async def backlog_equal(bootstrap: str, work: Path) -> int:
    """B: the same recording, live (sent second by second, as it happens) to one worker and as
    one backlog drained by a worker started after all of it was produced."""
    start = time.time() + 5.0
    traffic = recording(start)
    states = [
        RolloutState(
            f"env-{i:03d}",
            "web",
            "c1",
            "s1",
            canary_weight=20,
            observed_at=start,
            resource_version="7",
        )
        for i in range(BACKLOG_ENVS)
    ]
    runs: dict[str, set[str]] = {}
    for mode in ("live", "backlog"):
        run_id = uuid.uuid4().hex[:6]
        settings = Settings(
            bootstrap=bootstrap,
            app_id=f"backlog-{mode}-{run_id}",
            topics=Topics(f"backlog-{mode}-{run_id}"),
            replication_factor=1,
            metrics_port=free_port(),
            data_dir=work / f"backlog-{mode}",
        )
        await ensure_topics(bootstrap, settings.topic_partitions(), replication_factor=1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        worker = WorkerProcess(settings, work / f"backlog-{mode}.log")
        try:
            for state in states:
                await producer.send_and_wait(
                    settings.topics.rollouts,
                    key=f"{state.namespace}/web".encode(),
                    value=encode_rollout_state(state),
                )
            if mode == "live":
                worker.start()
                await worker.wait_ready()
            for second, messages in enumerate(traffic):
                if mode == "live":  # each second's lines once that second is over
                    await asyncio.sleep(max(0.0, start + second + 1.0 - time.time()))
                sends = [
                    await producer.send(settings.topics.requests, key=k, value=v)
                    for k, v in messages
                ]
                await asyncio.gather(*sends)
            if mode == "backlog":
                worker.start()
                await worker.wait_ready()
            # Every line counted, then idle (EVENT_IDLE_S) closes the last slices.
            port = settings.metrics_port
            expected = sum(len(v.split(b"\n")) for m in traffic for _, v in m)

            def counted(goal: int = expected, port: int = port) -> bool:
                name = "canarywatch_request_lines_total"
                labels = frozenset({("outcome", "counted")})
                return scrape(port, (name,)).get((name, labels), 0) >= goal

            await poll_until(counted, 120, f"{mode}: every line counted")
            # A bench, not a test: the idle close is processing time, so wait it out.
            await asyncio.sleep(settings.event_time.idle_s + 3.0)
            runs[mode] = await aborted_revisions(bootstrap, settings.topics.commands)
        finally:
            worker.stop()
            await producer.stop()
    bad = {f"env-{i:03d}/web@c1" for i in range(BACKLOG_BAD)}
    for mode, aborted in runs.items():
        print(
            f"| {mode}: aborted revisions ({BACKLOG_BAD} bad canaries, {len(INCIDENT)} "
            f"environments in a platform incident) | {len(aborted)}: bad {len(aborted & bad)}, "
            f"other {sorted(aborted - bad)} |",
            flush=True,
        )
    return int(runs["live"] == runs["backlog"])


RATIO_SCALE = Scale(envs=2_000, ndjson_lines=300_000, repeats=1)
RATIO_ROUNDS = 2  # off, on, off, on: the broker's and the machine's drift hit both alike


def sample(port: int, name: str, labels: frozenset[tuple[str, str]] = frozenset()) -> float:
    return scrape(port, (name,)).get((name, labels), 0.0)


RESTORED = ("canarywatch_evidence_rows_total", frozenset({("direction", "restored")}))
WRITTEN = ("canarywatch_evidence_rows_total", frozenset({("direction", "written")}))
PASSES = "canarywatch_evaluation_seconds_count"


COUNTED = ("canarywatch_request_lines_total", frozenset({("outcome", "counted")}))
CHECKPOINTS = "canarywatch_evidence_checkpoints_total"


async def resume(bootstrap: str, work: Path, envs: int) -> float:
    """S: a worker loads a fleet of `envs` environments (5 % in canary), counts a backlog of
    their traffic and checkpoints all of it, is killed -9; S is the seconds from starting its
    replacement to the first evaluation pass after its evidence is restored."""
    now = time.time()
    states = fleet_states(0, envs, now)
    canaries = sum(s.canary_in_progress for s in states)
    topics = Topics(f"resume-{uuid.uuid4().hex[:6]}")
    base = Settings(bootstrap=bootstrap, app_id=topics.prefix, topics=topics, replication_factor=1)
    await ensure_topics(
        bootstrap,
        {topics.requests: PARTITIONS, topics.rollouts: PARTITIONS},
        {"max.message.bytes": str(8 << 20)},
    )
    await produce(
        bootstrap,
        topics.rollouts,
        [(s.namespace.encode(), encode_rollout_state(s)) for s in states],
    )
    rng = np.random.default_rng(SEED)
    lines = request_lines(rng, 10 * canaries * 5, envs, now)  # ~2.5 lines per canary
    step = round(1 / CANARY_SHARE)
    # Lines of canary environments (either arm) are counted; the others have no canary.
    attributable = sum(int(orjson.loads(x)["namespace"][4:]) % step == 0 for x in lines)
    with_lines = len(
        {ns for x in lines if int((ns := orjson.loads(x)["namespace"])[4:]) % step == 0}
    )
    await produce(bootstrap, topics.requests, batch_by_key(lines, 500))
    del lines
    # The backlog is read once every canary is loaded (a line of a canary not yet known is
    # held, then counted unattributed): the first worker's evidence covers the whole backlog.
    gate = work / "resume1.go"
    # Loading 5,000 canaries through Faust takes minutes on a loaded machine; S is measured
    # on the replacement, so the first worker may take its time.
    (first,) = await start_workers(base, 1, work / "resume1", canaries, gate, settle_s=1200)
    port = first.settings.metrics_port
    await asyncio.to_thread(gate.touch)
    await poll_until(lambda: sample(port, *COUNTED) >= attributable, 300, "the backlog counted")
    checkpoints = sample(port, CHECKPOINTS)
    # Two more checkpoints: the second began after the last line was counted.
    await poll_until(
        lambda: sample(port, CHECKPOINTS) >= checkpoints + 2, 60, "evidence checkpointed"
    )
    written = sample(port, *WRITTEN)
    os.killpg(first.pid, signal.SIGKILL)
    first.stop()
    settings = Settings(
        bootstrap=bootstrap,
        app_id=topics.prefix,
        topics=topics,
        replication_factor=1,
        partitions=PARTITIONS,
        metrics_port=free_port(),
        data_dir=work / "resume2",
    )
    second = WorkerProcess(settings, work / "resume2.log")
    started = time.monotonic()
    second.start()
    port = settings.metrics_port
    # When each stage is first seen (seconds from the start): /metrics answers (imports and
    # set-up done), ready (Faust started, its tables recovered, the rollout view loaded), the
    # evidence restored; then the first evaluation pass after that.
    stages: dict[str, float] = {}

    def restored_yet() -> bool:
        values = scrape(port, ("canarywatch_ready", RESTORED[0]))
        at = time.monotonic() - started
        if values:
            stages.setdefault("metrics", at)
        if values.get(("canarywatch_ready", frozenset()), 0.0) == 1.0:
            stages.setdefault("ready", at)
        return values.get(RESTORED, 0.0) > 0

    try:
        await poll_until(restored_yet, 300, "evidence restored")
        stages["restored"] = time.monotonic() - started
        passes = sample(port, PASSES)
        await poll_until(lambda: sample(port, PASSES) > passes, 60, "an evaluation pass")
        resume_s = time.monotonic() - started
        restored = sample(port, *RESTORED)
        rewritten, recounted = sample(port, *WRITTEN), sample(port, *COUNTED)
        print(
            f"| resume, {envs:,} environments ({canaries:,} canaries, {with_lines:,} with "
            f"lines): {written:,.0f} rows written, {restored:,.0f} restored; "
            + ", ".join(f"{k} at {v:.1f} s" for k, v in stages.items())
            + f"; then {rewritten:,.0f} rows written, {recounted:,.0f} lines counted"
            + f" | {resume_s:.1f} s |",
            flush=True,
        )
    finally:
        second.stop()
    return resume_s


async def checkpoint_ratio(bootstrap: str, work: Path) -> float:
    """R: batched lines/s of one worker draining one backlog with checkpoints on ÷ off,
    interleaved, medians of RATIO_ROUNDS drains each."""
    now = time.time()
    states = fleet_states(0, RATIO_SCALE.envs, now)
    b = Bench(
        scale=RATIO_SCALE,
        bootstrap=bootstrap,
        work=work / "ratio",
        rng=np.random.default_rng(SEED),
        now=now,
        states=[(s.namespace.encode(), encode_rollout_state(s)) for s in states],
        canaries=sum(s.canary_in_progress for s in states),
    )
    b.work.mkdir(parents=True, exist_ok=True)
    # One backlog per round: a checkpointed drain leaves evidence in `<prefix>.evidence`
    # (named by the topics, not the group), which a later drain of the same topics would restore.
    rounds = [Topics(f"ratio-{uuid.uuid4().hex[:6]}") for _ in range(RATIO_ROUNDS)]
    lines = request_lines(b.rng, RATIO_SCALE.ndjson_lines, RATIO_SCALE.envs, now)
    batches = batch_by_key(lines, RATIO_SCALE.lines_per_message)
    del lines
    for topics in rounds:
        await ensure_topics(
            bootstrap,
            {topics.requests: PARTITIONS, topics.rollouts: PARTITIONS},
            {"max.message.bytes": str(8 << 20)},
        )
        await produce(bootstrap, topics.rollouts, b.states)
        await produce(bootstrap, topics.requests, batches)
    on: list[float] = []
    off: list[float] = []
    for round_, topics in enumerate(rounds):
        for checkpoint, out in ((False, off), (True, on)):
            drain = await best_drain(
                b,
                topics,
                1,
                False,
                RATIO_SCALE.ndjson_lines,
                checkpoint=checkpoint,
                tag=f"-r{round_}",
            )
            out.append(drain.lines_per_s)
    ratio = float(np.median(on) / np.median(off))
    print(
        f"| batched lines/s, checkpoints on / off ({RATIO_SCALE.ndjson_lines:,} lines, "
        f"{RATIO_ROUNDS} interleaved drains each) | {', '.join(f'{x:,.0f}' for x in on)} / "
        f"{', '.join(f'{x:,.0f}' for x in off)} (ratio {ratio:.2f}) |",
        flush=True,
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--resume-envs",
        type=int,
        default=100_000,
        help="environments of the resume measure (S is printed only at 100,000)",
    )
    parser.add_argument(
        "--parts",
        default="kill,backlog,resume,ratio",
        help="comma-separated: kill, backlog, resume, ratio",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="canarywatch-faults-") as tmp:
        work = Path(tmp)
        port, controller = free_ports(2)
        broker = LocalKafka(work / "kafka", port, controller)
        broker.start(timeout=120)
        try:
            line = (
                asyncio.run(run(broker.bootstrap, work))
                if "kill" in parts
                else (
                    "faults: resume_s_100k=nan backlog_decisions_equal=0 "
                    "checkpoint_throughput_ratio=nan"
                )
            )
            equal = "nan"
            if "backlog" in parts:
                equal = str(asyncio.run(backlog_equal(broker.bootstrap, work)))
            line = line.replace("backlog_decisions_equal=0", f"backlog_decisions_equal={equal}")
            resume_s = float("nan")
            if "resume" in parts:
                try:
                    resume_s = asyncio.run(resume(broker.bootstrap, work, args.resume_envs))
                except TimeoutError as exc:  # said in the table, S stays nan
                    print(f"| resume, {args.resume_envs:,} environments | not reached: {exc} |")
            if args.resume_envs != 100_000:
                resume_s = float("nan")
            ratio = float("nan")
            if "ratio" in parts:
                ratio = asyncio.run(checkpoint_ratio(broker.bootstrap, work))
            line = line.replace("resume_s_100k=nan", f"resume_s_100k={resume_s:.1f}").replace(
                "checkpoint_throughput_ratio=nan", f"checkpoint_throughput_ratio={ratio:.2f}"
            )
        finally:
            broker.stop()
    print(line)


if __name__ == "__main__":
    main()
