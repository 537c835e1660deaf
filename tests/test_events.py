"""Codecs: what decodes, what is refused and with which reason."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.events import (
    AbortCommand,
    DecodeError,
    Evidence,
    RequestLine,
    RolloutState,
    decision_id_for,
    decode_abort_command,
    decode_request_lines,
    decode_rollout_state,
    encode_abort_command,
    encode_request_line,
    encode_rollout_state,
)

LINE = {
    "ts": 1764150000.5,
    "namespace": "shop-prod",
    "pod": "web-6f7d9c8b5d-x2x9k",
    "rollouts-pod-template-hash": "6f7d9c8b5d",
    "status": 503,
    "duration_ms": 87.5,
}


def test_request_line_with_hash_at_top_level() -> None:
    lines, bad = decode_request_lines(orjson.dumps(LINE))
    assert bad == []
    assert lines == [
        RequestLine(1764150000.5, "shop-prod", "web-6f7d9c8b5d-x2x9k", "6f7d9c8b5d", 503, 87.5)
    ]


def test_request_line_with_hash_in_pod_labels_and_env_alias() -> None:
    obj = {k: v for k, v in LINE.items() if k not in ("rollouts-pod-template-hash", "namespace")}
    obj["env"] = "shop-prod"
    obj["labels"] = {"app": "web", "rollouts-pod-template-hash": "abc123"}
    (line,), bad = decode_request_lines(orjson.dumps(obj))
    assert not bad
    assert (line.namespace, line.pod_hash) == ("shop-prod", "abc123")


def test_ndjson_keeps_good_lines_and_reports_each_bad_one() -> None:
    good = orjson.dumps(LINE)
    raw = b"\n".join([good, b"not json", good, b'{"namespace": "x"}', b"", good])
    lines, bad = decode_request_lines(raw)
    assert len(lines) == 3
    assert [(chunk, err.reason) for chunk, err in bad] == [
        (b"not json", "not_json"),
        (b'{"namespace": "x"}', "missing_field"),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[1, 2]", "not_object"),
        (orjson.dumps({**LINE, "status": 42}), "bad_field"),
        (orjson.dumps({**LINE, "status": "503"}), "missing_field"),
        (orjson.dumps({**LINE, "ts": True}), "missing_field"),
        (b"\n\n", "empty"),
    ],
)
def test_refusals_carry_a_reason(raw: bytes, reason: str) -> None:
    lines, bad = decode_request_lines(raw)
    assert lines == []
    assert [err.reason for _, err in bad] == [reason]


def test_oversized_message_is_refused_whole_before_parsing() -> None:
    raw = b"\n".join([orjson.dumps(LINE)] * 10)
    lines, bad = decode_request_lines(raw, max_bytes=len(raw) - 1)
    assert lines == []
    assert [(chunk, err.reason) for chunk, err in bad] == [(raw, "oversized")]


@given(
    ts=st.floats(0, 4e9),
    status=st.integers(100, 599),
    duration=st.floats(0, 1e6),
    namespace=st.text(min_size=1, max_size=30),
    pod_hash=st.text(min_size=1, max_size=12),
)
def test_request_line_round_trip(
    ts: float, status: int, duration: float, namespace: str, pod_hash: str
) -> None:
    line = RequestLine(ts, namespace, "pod-0", pod_hash, status, duration)
    assert decode_request_lines(encode_request_line(line)) == ([line], [])


def test_rollout_state_round_trip_and_canary_in_progress() -> None:
    state = RolloutState("shop", "web", "c4n4ry", "st4bl3", 2, "Paused", False, 20, "2.0", 1.0)
    decoded = decode_rollout_state(encode_rollout_state(state))
    assert decoded == state
    assert decoded.canary_in_progress
    assert decoded.env == "shop/web"
    promoted = RolloutState("shop", "web", "c4n4ry", "c4n4ry")
    assert not promoted.canary_in_progress
    aborted = RolloutState("shop", "web", "c4n4ry", "st4bl3", aborted=True)
    assert not aborted.canary_in_progress


def test_rollout_state_without_hash_is_refused() -> None:
    with pytest.raises(DecodeError) as info:
        decode_rollout_state(b'{"namespace": "shop", "name": "web"}')
    assert info.value.reason == "missing_field"


def test_abort_command_round_trip_keeps_the_evidence() -> None:
    evidence = Evidence("errors", 120, 9, 2280, 2, 5.1, 4.6, 0.05, 31.5, 0.07, 0.001)
    command = AbortCommand("shop/web@c4n4ry", "shop", "web", "c4n4ry", 1.5, evidence, "2.0")
    decoded = decode_abort_command(encode_abort_command(command))
    assert decoded == command
    assert "canary 9/120 bad" in decoded.evidence.describe()


def test_the_cluster_round_trips_and_is_optional() -> None:
    state = RolloutState("shop", "web", "c4n4ry", "st4bl3", cluster="eu-1")
    assert decode_rollout_state(encode_rollout_state(state)).cluster == "eu-1"
    evidence = Evidence("errors", 120, 9, 2280, 2, 5.1, 4.6, 0.05, 31.5, 0.07, 0.001)
    command = AbortCommand(
        decision_id_for("shop", "web", "c4n4ry", "eu-1"), "shop", "web", "c4n4ry", 1.5, evidence
    )
    command = dataclasses.replace(command, cluster="eu-1")
    assert command.decision_id == "eu-1:shop/web@c4n4ry"
    assert decode_abort_command(encode_abort_command(command)) == command
    unnamed = orjson.loads(encode_abort_command(command))
    del unnamed["cluster"]
    assert decode_abort_command(orjson.dumps(unnamed)).cluster == ""
    assert decision_id_for("shop", "web", "c4n4ry") == "shop/web@c4n4ry"
