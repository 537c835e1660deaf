"""How the local development broker formats its storage (agents/localkafka.py)."""

from __future__ import annotations

from pathlib import Path

from agents.localkafka import storage_format_args


def test_a_kafka_cluster_id_that_starts_with_a_dash_is_not_read_as_an_option() -> None:
    args = storage_format_args("-Jq3nQ9yRq2xQ6Xk4b7dJw", Path("/tmp/server.properties"))
    assert args == [
        "format",
        "--cluster-id=-Jq3nQ9yRq2xQ6Xk4b7dJw",
        "--config=/tmp/server.properties",
    ]
