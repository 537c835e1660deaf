"""`make profile`: decode and count per request line, in process, against orjson alone.

200k canonical lines over 20,000 environments (5% with a canary in progress), as NDJSON
messages of 500 lines (100 messages per call), as one line per message (50,000 per call), and
as NDJSON in a non-canonical form (`env` for `namespace`), which takes the line decoder.
Prints us/line and lines/s for: a single `orjson.loads` of the joined batch (the floor of any
dict-based decoder), `decode_columns`, and `Fleet.count` (decode + attribute + count). With
pyinstrument installed, also profiles `Fleet.count`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import orjson

from bench.traffic import batch_by_key, fleet_states, request_lines
from streams.fleet import Fleet
from streams.requestlog import decode_columns

LINES = 200_000
ENVS = 20_000
NOW = 1_764_150_000.0


def orjson_only(messages: Sequence[bytes]) -> int:
    """What any dict-based decoder pays first: one orjson.loads of the batch as an array."""
    body = b",".join(m.strip(b"\n") for m in messages)
    if b"\n" in body:
        body = body.replace(b"\n", b",")
    return len(orjson.loads(b"[" + body + b"]"))


def best_of(
    calls: Sequence[Sequence[bytes]], run: Callable[[Sequence[bytes]], object], n: int
) -> float:
    """Seconds per line, the best of three passes over all calls."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for messages in calls:
            run(messages)
        best = min(best, time.perf_counter() - start)
    return best / n


def main() -> None:
    rng = np.random.default_rng(5)
    lines = request_lines(rng, LINES, ENVS, NOW)
    fleet = Fleet(capacity=2048)
    for state in fleet_states(0, ENVS, NOW):
        fleet.apply_rollout(state, NOW)
    ndjson = [m for _, m in batch_by_key(lines, 500)]
    shapes = {
        "NDJSON 500 lines/message, 100 messages/call": [
            ndjson[i : i + 100] for i in range(0, len(ndjson), 100)
        ],
        "1 line/message, 50,000 messages/call": [
            lines[i : i + 50_000] for i in range(0, len(lines), 50_000)
        ],
        "NDJSON 500 lines/message, `env` alias (line decoder)": [
            [m.replace(b'"namespace":', b'"env":') for m in ndjson[i : i + 100]]
            for i in range(0, len(ndjson), 100)
        ],
    }
    print(f"{LINES:,} lines, {ENVS:,} environments, {len(fleet.attribution.row_of_env)} canaries")
    for shape, calls in shapes.items():
        n = sum(len(m.split(b"\n")) for c in calls for m in c)
        report = fleet.count(calls[0], NOW)
        assert not report.invalid, report.invalid[:1]
        print(f"\n{shape}")
        runs: dict[str, Callable[[Sequence[bytes]], object]] = {
            "orjson.loads of the joined batch (floor)": orjson_only,
            "decode_columns": decode_columns,
            "Fleet.count": lambda m: fleet.count(m, NOW),
        }
        for name, run in runs.items():
            per_line = best_of(calls, run, n)
            print(f"  {name:46s} {per_line * 1e6:6.3f} us/line  {1 / per_line:12,.0f} lines/s")
    try:
        from pyinstrument import Profiler  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("\n(pip install pyinstrument for a profile)")
        return
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for calls in shapes.values():
        for messages in calls:
            fleet.count(messages, NOW)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
