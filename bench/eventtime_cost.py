"""Cost of event time on a backlog drain: processing-time test vs event-time slices.

`python -m bench.eventtime_cost [--envs 20000 --seconds 60]`: a backlog of `seconds` of traffic
(2 canary + 8 stable lines per environment per second, a tenth of the environments bad) counted
in one batch and evaluated, once with the processing-time test and once with event time
(slices closed in one engine call per pass). Decoding is the same for both and measured apart.
Also the cost of one live pass (a second of traffic) each way. Prints one line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import EventTimeSettings
from streams.fleet import Fleet

START = 1_800_000_000.0


def fleet_of(envs: int, event_time: bool) -> Fleet:
    fleet = Fleet(capacity=envs, event_time=EventTimeSettings(enabled=event_time))
    for i in range(envs):
        state = RolloutState(f"ns-{i}", "web", "c", "s", canary_weight=20, observed_at=START)
        fleet.apply_rollout(state, START)
    return fleet


def traffic(envs: int, seconds: int, seed: int = 5) -> list[list[bytes]]:
    """One message list per second of event time (one NDJSON message per environment)."""
    rng = np.random.default_rng(seed)
    out = []
    for second in range(seconds):
        messages = []
        for i in range(envs):
            lines = []
            for j in range(10):
                canary = j < 2
                bad = canary and i % 10 == 0 and rng.random() < 0.3
                ts = START + second + float(rng.random())
                pod = "c" if canary else "s"
                lines.append(RequestLine(ts, f"ns-{i}", f"web-{pod}", pod, 503 if bad else 200, 5))
            messages.append(b"\n".join(encode_request_line(x) for x in lines))
        out.append(messages)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--envs", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    seconds = traffic(args.envs, args.seconds)
    probe = fleet_of(1, False)
    started = time.perf_counter()
    columns = [probe.decode(m) for m in seconds]
    decode_s = time.perf_counter() - started
    lines = sum(len(c) for c in columns)
    drain: dict[bool, float] = {}
    live: dict[bool, float] = {}
    aborts: dict[bool, int] = {}
    for event_time in (False, True):
        fleet = fleet_of(args.envs, event_time)
        now = START + args.seconds + 30.0
        started = time.perf_counter()
        for c in columns:
            fleet.count_columns(c, now, 0)
        _, commands = fleet.evaluate(now)
        _, more = fleet.evaluate(now + 60.0)  # idle: the last slices close
        drain[event_time] = time.perf_counter() - started
        aborts[event_time] = len(commands) + len(more)
        # Live: a second of traffic, then a pass, at its own pace.
        fleet = fleet_of(args.envs, event_time)
        started = time.perf_counter()
        for k, c in enumerate(columns):
            fleet.count_columns(c, START + k + 1.0, 0)
            fleet.evaluate(START + k + 1.0)
        live[event_time] = (time.perf_counter() - started) / len(columns)
    print(
        f"eventtime_cost: envs={args.envs} lines={lines} seconds={args.seconds} "
        f"decode_s={decode_s:.2f} drain_processing_s={drain[False]:.2f} "
        f"drain_event_s={drain[True]:.2f} drain_ratio={drain[True] / drain[False]:.1f} "
        f"live_pass_processing_ms={1e3 * live[False]:.0f} "
        f"live_pass_event_ms={1e3 * live[True]:.0f} "
        f"live_ratio={live[True] / live[False]:.2f} "
        f"aborts_processing={aborts[False]} aborts_event={aborts[True]}"
    )


if __name__ == "__main__":
    main()
