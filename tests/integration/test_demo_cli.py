"""`canarywatch demo` as a user runs it, against the test broker: it says where its metrics and
board are, prints its seed, explains `inconclusive` and ends with `canarywatch status`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kafka


def test_demo_prints_where_things_are_its_seed_and_ends_with_status(
    kafka_bootstrap: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "demo", "--bootstrap", kafka_bootstrap,
         "--duration", "35", "--seed", "424242", "--environments", "30", "--healthy", "10",
         "--bad", "2", "--platform", "1"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    assert "/metrics" in out and "fleet board on http://127.0.0.1:" in out, out
    assert "seed 424242" in out
    assert "demo: true_aborts=2 missed=0 false_aborts=0 (seed 424242)" in out, out
    assert "inconclusive: too little traffic yet to tell" in out, out
    tail = out[out.index("demo: canarywatch status") :]
    assert "NAMESPACE" in tail and "VERDICT" in tail and tail.count(" abort ") >= 2, tail
