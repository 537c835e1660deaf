"""The hostile corpus of `make bench-hostile` (bench/hostile.py) and the guarded fleet's traffic:
compressed batches, size limits, a gzip bomb, wrong types, fuzzed bytes, CRC32-placed lines.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np
import orjson

from agents.settings import Settings
from streams.events import POD_HASH_LABEL, RolloutState, encode_rollout_state

PARTITIONS = 4
ENVS = 64  # the guarded fleet: env-000 ... env-063, each with a canary in progress
CODECS = ("gzip", "snappy", "lz4", "zstd")
FLOOD_SNAPSHOTS = 154_000
COUNTED = "canarywatch_request_lines_total"  # the sample name: a scrape filters by it


def namespace(env: int) -> str:
    return f"env-{env:03d}"


def canary_state(env: int, now: float) -> RolloutState:
    return RolloutState(
        namespace=namespace(env),
        name="web",
        current_pod_hash=f"c{env:07x}",
        stable_hash=f"s{env:07x}",
        canary_weight=20,
        observed_at=now,
    )


def lines(env: int, canary_good: int, stable_good: int, canary_bad: int) -> bytes:
    """An NDJSON message of one environment's requests (now, both arms)."""
    now = time.time()
    out = []
    for pod_hash, count, status in (
        (f"c{env:07x}", canary_good, 200),
        (f"s{env:07x}", stable_good, 200),
        (f"c{env:07x}", canary_bad, 503),
    ):
        line = orjson.dumps(
            {
                "ts": now,
                "namespace": namespace(env),
                "pod": f"web-{pod_hash}-0",
                POD_HASH_LABEL: pod_hash,
                "status": status,
                "duration_ms": 20.0,
            }
        )
        out.extend([line] * count)
    return b"\n".join(out)


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's `consistent_random` for a non-empty key (Fluent Bit, Vector, kcat)."""
    return (zlib.crc32(key) & 0xFFFFFFFF) % partitions


# --- the corpus --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """One hostile message: where it goes, and whether the worker must refuse it."""

    label: str
    topic: str  # "requests" | "rollouts" | "commands"
    value: bytes | None
    key: bytes | None = b"k"
    compression: str | None = None
    partition: int | None = None
    refused: bool = True  # must end in the dead-letter topic (or be counted as skipped)


def bad_snapshots() -> list[tuple[str, bytes]]:
    """Rollout snapshots with wrong types, ranges or shapes."""
    good = orjson.loads(encode_rollout_state(canary_state(0, 1.7e9)))
    changes: list[tuple[str, object]] = [
        ("stable_hash", 5),
        ("stable_hash", ["s"]),
        ("current_pod_hash", {"a": 1}),
        ("namespace", ["s"]),
        ("namespace", "x" * 300),
        ("namespace", "Not_A_DNS_Label"),
        ("name", ""),
        ("name", 7),
        ("observed_at", "yesterday"),
        ("observed_at", 1e300),
        ("observed_at", -5),
        ("aborted", "false"),
        ("aborted", 1),
        ("canary_weight", 500),
        ("canary_weight", -1),
        ("canary_weight", "20"),
        ("canary_weight", True),
        ("step_index", "3"),
        ("step_index", -2),
        ("phase", 7),
        ("release", 123),
        ("release", "r" * 100_000),
        ("current_pod_hash", "h" * 5_000),
    ]
    out: list[tuple[str, bytes]] = []
    for name, value in changes:
        bad = dict(good, namespace=f"bad-{len(out)}")
        bad[name] = value
        out.append((f"snapshot {name}={str(value)[:20]}", orjson.dumps(bad)))
    for name in ("namespace", "name", "current_pod_hash"):
        missing = {k: v for k, v in good.items() if k != name}
        out.append((f"snapshot without {name}", orjson.dumps(missing)))
    return out


def bad_commands() -> list[tuple[str, bytes, bool]]:
    """Abort commands with wrong types or ranges (refused), and one with an unknown evidence
    key, which the documented rule ignores (a newer writer may add fields: docs/events.md)."""
    evidence = {
        "signal": "errors",
        "canary_requests": 100,
        "canary_bad": 9,
        "stable_requests": 400,
        "stable_bad": 0,
        "statistic": 6.0,
        "threshold": 5.3,
        "canary_share": 0.2,
        "since_canary_start_s": 30.0,
    }
    good = {
        "decision_id": "bad/web@c1",
        "namespace": "bad",
        "rollout": "web",
        "pod_hash": "c1",
        "decided_at": 1.7e9,
        "evidence": evidence,
    }
    changes: list[tuple[str, object]] = [
        ("evidence", None),
        ("evidence", {**evidence, "canary_bad": "nine"}),
        ("evidence", {**evidence, "canary_share": 1.5}),
        ("evidence", {**evidence, "statistic": "high"}),
        ("decided_at", "now"),
        ("pod_hash", 5),
        ("namespace", ""),
        ("rollout", ["web"]),
        ("extra", {"a": {"b": 1}}),
        ("reason", 9),
    ]
    out = []
    for name, value in changes:
        shown = value
        if isinstance(value, dict) and name == "evidence":  # the field that differs
            shown = {k: v for k, v in value.items() if evidence.get(k) != v}
        label = f"command {name}={str(shown)[:40]}"
        out.append((label, orjson.dumps({**good, name: value}), True))
    unknown = {**good, "evidence": {**evidence, "unknown": 1}}
    out.append(("command with an unknown evidence key", orjson.dumps(unknown), False))
    return out


def fuzzed(rng: np.random.Generator, count: int) -> list[bytes]:
    sizes = rng.integers(1, 2_000, count)
    return [rng.bytes(int(n)) for n in sizes]


def random_objects(rng: np.random.Generator, count: int) -> list[bytes]:
    """JSON objects of random keys and scalar values: valid JSON, never a valid event."""
    out = []
    for _ in range(count):
        n = int(rng.integers(0, 8))
        obj = {f"k{int(rng.integers(0, 99))}": float(rng.random()) for _ in range(n)}
        out.append(orjson.dumps(obj))
    return out


def corpus(settings: Settings, rng: np.random.Generator) -> list[Input]:
    limit = settings.max_message_bytes
    topic_limit = settings.topic_max_message_bytes
    items: list[Input] = []
    for codec in CODECS:
        items.append(
            Input(
                f"{codec} batch", "requests", lines(1, 80, 320, 0), b"env-001", codec, refused=False
            )
        )
        items.append(Input(f"{codec} not-json", "requests", b"{not json" * 50, b"k", codec))
        items.append(
            Input(
                f"{codec} snapshot",
                "rollouts",
                encode_rollout_state(canary_state(2, time.time())),
                b"env-002",
                codec,
                refused=False,
            )
        )
    # Sizes: just over the decode limit; just under the topic's limit; a gzip/zstd bomb.
    items.append(Input("over the decode limit", "requests", b"x" * (limit + 1)))
    items.append(Input("just under the topic limit", "requests", b"y" * (topic_limit - 4096)))
    bomb = b'{"ts":1,' + b" " * (50 << 20) + b"}"
    items.append(Input("gzip bomb 50 MB", "requests", bomb, compression="gzip"))
    items.append(Input("zstd bomb 50 MB", "requests", bomb, compression="zstd"))
    items.append(Input("snapshot bomb 50 MB", "rollouts", bomb, compression="gzip"))
    # Amplification: a megabyte of tiny bad lines, and of lines with a missing field.
    items.append(Input("1 MB of x lines", "requests", b"x\n" * (limit // 2)))
    items.append(Input("1 MB of {} lines", "requests", b"{}\n" * (limit // 3)))
    for label, value in bad_snapshots():
        items.append(Input(label, "rollouts", value, label.encode()[:50]))
    for label, value, refused in bad_commands():
        items.append(Input(label, "commands", value, refused=refused))
    for topic in ("requests", "rollouts", "commands"):
        for i, value in enumerate(fuzzed(rng, 60)):
            items.append(Input(f"fuzz {topic} {i}", topic, value))
        for i, value in enumerate(random_objects(rng, 10)):
            items.append(Input(f"random object {topic} {i}", topic, value))
        items.append(Input(f"deep nesting {topic}", topic, b"[" * 100_000))
        items.append(Input(f"tombstone {topic}", topic, None, refused=topic != "rollouts"))
        items.append(Input(f"empty {topic}", topic, b""))
    # Keys and partitions a misconfigured shipper would use: huge, absent, CRC32-placed.
    items.append(
        Input("100 KB key", "requests", lines(3, 20, 80, 0), b"k" * 100_000, refused=False)
    )
    items.append(Input("no key", "requests", lines(4, 20, 80, 0), None, refused=False))
    for env in range(8, 16):
        key = namespace(env).encode()
        items.append(
            Input(
                f"crc32-placed lines env {env}",
                "requests",
                lines(env, 20, 80, 0),
                key,
                partition=crc32_partition(key, PARTITIONS),
                refused=False,
            )
        )
    return items
