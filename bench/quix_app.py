"""The Quix Streams contender of `make bench`: canarywatch's counting job as Quix's docs build one.

Runs under Quix Streams' own virtual environment (scripts/ensure-quix.sh), so it imports only
the standard library and quixstreams. The job: decode each request-log line (the topic's `json`
deserializer), attribute it to its environment's canary or stable arm by the pod-template hash,
and keep per-environment bad/total counts per arm in Quix's stateful store (RocksDB, with its
changelog topic), as `StreamingDataFrame.update(..., stateful=True)` is documented to. The
rollout states are handed over as a file (a dict lookup, cheaper than any join Quix offers), so
the contender is, if anything, flattered. Timed as the other contenders are: from the first line
in hand to the `expected`-th line counted. Prints lines/s on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from quixstreams import Application, State

POD_HASH_LABEL = "rollouts-pod-template-hash"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True, help="lines in the topic")
    parser.add_argument("--rollouts", type=Path, required=True, help="JSON: ns -> [stable, canary]")
    args = parser.parse_args()
    hashes: dict[str, list[str | None]] = json.loads(args.rollouts.read_text())
    expected: int = args.expected
    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=f"quix-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
        )
        sdf = app.dataframe(app.topic(args.topic, value_deserializer="json"))
        seen = [0]
        started = [0.0]

        def count(line: dict[str, Any], state: State) -> None:
            stable, canary = hashes.get(line["namespace"], (None, None))
            pod_hash = line[POD_HASH_LABEL]
            arm = "canary" if pod_hash == canary else "stable" if pod_hash == stable else None
            if arm is not None:
                counts = state.get(arm, [0, 0])
                counts[0] += 1
                counts[1] += int(line["status"] >= 500)
                state.set(arm, counts)
            seen[0] += 1
            if seen[0] == 1:
                started[0] = time.perf_counter()
            elif seen[0] == expected:
                print((expected - 1) / (time.perf_counter() - started[0]), flush=True)
                app.stop()

        sdf.update(count, stateful=True)
        app.run()


if __name__ == "__main__":
    main()
