"""Codecs: what decodes, what is refused and with which reason."""

from __future__ import annotations

import dataclasses
import gc
import json

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
    readable_abort_commands,
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


def test_refused_lines_leave_no_reference_cycle_behind() -> None:
    # With its traceback, each kept error would hold its frames, and they the list of errors.
    raw = b"\n".join([b"not json", b'{"namespace": "x"}'] * 50)
    gc.collect()
    gc.disable()
    try:
        _, bad = decode_request_lines(raw)
        del bad
        assert gc.collect() == 0
    finally:
        gc.enable()


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


def test_readers_of_commands_skip_what_does_not_decode() -> None:
    evidence = Evidence("errors", 120, 9, 2280, 2, 5.1, 4.6, 0.05, 31.5, 0.07, 0.001)
    command = AbortCommand("shop/web@c4n4ry", "shop", "web", "c4n4ry", 1.5, evidence, "2.0")
    values = [b"{bad", encode_abort_command(command), None, b"[]", encode_abort_command(command)]
    assert list(readable_abort_commands(values)) == [command, command]


# --- typed decoding: every field checked, nothing but a value or a DecodeError -------------

STATE = {
    "namespace": "shop-prod",
    "name": "web",
    "current_pod_hash": "6f7d9c8b5d",
    "stable_hash": "58c9b7d4f6",
    "step_index": 1,
    "phase": "Paused",
    "aborted": False,
    "canary_weight": 20,
    "release": "registry.example/web:2.0.0",
    "observed_at": 1764150000.0,
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"stable_hash": 5}, "wrong_type"),
        ({"current_pod_hash": ["s"]}, "wrong_type"),
        ({"observed_at": "yesterday"}, "wrong_type"),
        ({"observed_at": -1.0}, "out_of_range"),
        ({"observed_at": 1e12}, "out_of_range"),
        ({"aborted": "false"}, "wrong_type"),
        ({"aborted": 0}, "wrong_type"),
        ({"aborted": None}, "wrong_type"),
        ({"step_index": True}, "wrong_type"),
        ({"step_index": -1}, "out_of_range"),
        ({"step_index": 1.0}, "wrong_type"),
        ({"canary_weight": 101}, "out_of_range"),
        ({"canary_weight": -5}, "out_of_range"),
        ({"canary_weight": "20"}, "wrong_type"),
        ({"namespace": "Shop_Prod"}, "bad_format"),
        ({"namespace": "a" * 64}, "bad_format"),
        ({"namespace": ""}, "bad_format"),
        ({"name": "web." + "a" * 250}, "bad_format"),
        ({"name": "-web"}, "bad_format"),
        ({"current_pod_hash": "h" * 33}, "bad_format"),
        ({"current_pod_hash": "bad hash"}, "bad_format"),
        ({"phase": {"x": 1}}, "wrong_type"),
        ({"release": "x\n"}, "bad_format"),
    ],
)
def test_rollout_state_fields_are_checked_one_by_one(
    change: dict[str, object], reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode_rollout_state(orjson.dumps({**STATE, **change}))
    assert info.value.reason == reason
    assert next(iter(change)) in info.value.detail


def test_rollout_state_optional_fields_default_and_unknown_keys_are_ignored() -> None:
    minimal = {"namespace": "shop", "name": "web", "current_pod_hash": "c1"}
    state = decode_rollout_state(orjson.dumps({**minimal, "written_by_a_newer_bridge": "12"}))
    assert state == RolloutState("shop", "web", "c1", "")
    state = decode_rollout_state(
        orjson.dumps({**minimal, "step_index": None, "canary_weight": None})
    )
    assert (state.step_index, state.canary_weight) == (None, None)
    assert decode_rollout_state(orjson.dumps({**STATE, "name": "web.v2"})).name == "web.v2"


def test_the_rule_tables_name_every_field_once() -> None:
    from dataclasses import fields

    from streams.decisions import SIGNALS
    from streams.events import (
        ABORT_COMMAND_FIELDS,
        EVIDENCE_FIELDS,
        ROLLOUT_STATE_FIELDS,
        SIGNAL_NAMES,
    )

    for cls, rules in (
        (RolloutState, ROLLOUT_STATE_FIELDS),
        (Evidence, EVIDENCE_FIELDS),
        (AbortCommand, ABORT_COMMAND_FIELDS),
    ):
        assert [r.name for r in rules] == [f.name for f in fields(cls)]
    assert tuple(SIGNALS) == SIGNAL_NAMES


EVIDENCE = Evidence("errors", 120, 9, 2280, 2, 5.1, 4.6, 0.05, 31.5, 0.07, 0.001)
COMMAND = AbortCommand("shop/web@c4n4ry", "shop", "web", "c4n4ry", 1.5, EVIDENCE, "2.0")


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("evidence", "canary_bad"), "9", "wrong_type"),
        (("evidence", "canary_bad"), -1, "out_of_range"),
        (("evidence", "canary_share"), 1.5, "out_of_range"),
        (("evidence", "signal"), "cpu", "bad_format"),
        (("evidence",), [], "wrong_type"),
        (("decided_at",), "now", "wrong_type"),
        (("pod_hash",), 7, "wrong_type"),
        (("extra",), {"k": 1}, "wrong_type"),
        (("extra",), [], "wrong_type"),
        (("reason",), "", "bad_format"),
    ],
)
def test_abort_command_fields_are_checked(
    path: tuple[str, ...], value: object, reason: str
) -> None:
    obj = orjson.loads(encode_abort_command(COMMAND))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(DecodeError) as info:
        decode_abort_command(orjson.dumps(obj))
    assert info.value.reason == reason


def test_abort_command_without_evidence_field_is_missing_field() -> None:
    obj = orjson.loads(encode_abort_command(COMMAND))
    del obj["evidence"]["statistic"]
    with pytest.raises(DecodeError) as info:
        decode_abort_command(orjson.dumps(obj))
    assert (info.value.reason, info.value.detail) == ("missing_field", "need evidence.statistic")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
# Objects that look like the real thing: the known keys with arbitrary values.
state_like = st.dictionaries(
    st.sampled_from([*STATE, "extra_key"]), json_values, max_size=len(STATE) + 1
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        **{k: json_values for k in orjson.loads(encode_abort_command(COMMAND))},
        "evidence": st.dictionaries(
            st.sampled_from([*orjson.loads(encode_abort_command(COMMAND))["evidence"]]), json_values
        ),
    },
)


def _value_or_decode_error(decode: object, raw: bytes) -> None:
    assert callable(decode)
    try:
        decode(raw)
    except DecodeError as error:
        assert error.reason in {
            "not_json",
            "not_object",
            "missing_field",
            "wrong_type",
            "out_of_range",
            "bad_format",
            "oversized",
        }


# A valid state with a few fields replaced (or removed) by arbitrary JSON.
state_mutants = st.builds(
    lambda changes, drop: {k: v for k, v in {**STATE, **changes}.items() if k not in drop},
    st.dictionaries(st.sampled_from(list(STATE)), json_values, max_size=3),
    st.sets(st.sampled_from(list(STATE)), max_size=2),
)


@given(st.one_of(json_values, state_like, state_mutants))
def test_rollout_state_decoder_never_raises_anything_else(value: object) -> None:
    raw = json.dumps(value).encode()
    try:
        state = decode_rollout_state(raw)
    except DecodeError:
        return
    assert decode_rollout_state(encode_rollout_state(state)) == state


@given(st.one_of(json_values, command_like))
def test_abort_command_decoder_never_raises_anything_else(value: object) -> None:
    try:
        command = decode_abort_command(json.dumps(value).encode())
    except DecodeError:
        return
    assert decode_abort_command(encode_abort_command(command)) == command


@given(st.binary(max_size=200))
def test_decoders_take_arbitrary_bytes(raw: bytes) -> None:
    from streams.rollouts import decode_exporter_event

    for decode in (decode_rollout_state, decode_abort_command, decode_exporter_event):
        _value_or_decode_error(decode, raw)


names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
hashes = st.from_regex(r"[A-Za-z0-9]{1,10}", fullmatch=True)


@given(
    namespace=names,
    name=names,
    current=hashes,
    stable=hashes | st.just(""),
    step=st.none() | st.integers(0, 100),
    aborted=st.booleans(),
    weight=st.none() | st.integers(0, 100),
    release=st.text(max_size=40).filter(str.isprintable),
    observed_at=st.floats(0, 4e9),
)
def test_valid_rollout_state_round_trips(
    namespace: str,
    name: str,
    current: str,
    stable: str,
    step: int | None,
    aborted: bool,
    weight: int | None,
    release: str,
    observed_at: float,
) -> None:
    state = RolloutState(
        namespace, name, current, stable, step, "Progressing", aborted, weight, release, observed_at
    )
    assert decode_rollout_state(encode_rollout_state(state)) == state


@given(
    bad=st.integers(0, 10**6),
    requests=st.integers(0, 10**9),
    share=st.floats(0, 1),
    statistic=st.floats(-1e6, 1e6),
    signal=st.sampled_from(["errors", "latency"]),
    extra=st.dictionaries(names, st.text(max_size=20).filter(str.isprintable), max_size=3),
)
def test_valid_abort_command_round_trips(
    bad: int, requests: int, share: float, statistic: float, signal: str, extra: dict[str, str]
) -> None:
    evidence = Evidence(signal, requests, bad, requests, bad, statistic, 4.6, share, 3.0)
    command = AbortCommand(
        "a/b@c", "a", "b", "c", 1.0, evidence, "r", "CanaryErrorsRegression", extra
    )
    assert decode_abort_command(encode_abort_command(command)) == command


def test_decision_ids_read_back_are_checked() -> None:
    from streams.events import check_decision_id

    assert check_decision_id(b"shop/web@c4n4ry") == "shop/web@c4n4ry"
    for raw in (b"shop/web", b"shop@c1", b"Shop/web@c1", b"shop/web@", b"\xff/web@c1"):
        with pytest.raises(DecodeError) as info:
            check_decision_id(raw)
        assert info.value.reason == "bad_format"


EXPORTED_EVENT = {
    "metadata": {"name": "web.17a", "namespace": "shop"},
    "reason": "RolloutUpdated",
    "involvedObject": {
        "kind": "Rollout",
        "namespace": "shop",
        "name": "web",
        "apiVersion": "argoproj.io/v1alpha1",
    },
}
exporter_mutants = st.builds(
    lambda top, involved: {
        **EXPORTED_EVENT,
        **top,
        "involvedObject": {**EXPORTED_EVENT["involvedObject"], **involved},  # type: ignore[dict-item]
    },
    st.dictionaries(
        st.sampled_from(["metadata", "reason", "clusterName"]), json_values, max_size=2
    ),
    st.dictionaries(
        st.sampled_from(["kind", "namespace", "name", "apiVersion"]), json_values, max_size=2
    ),
)


@given(st.one_of(json_values, exporter_mutants))
def test_exporter_event_decoder_never_raises_anything_else(value: object) -> None:
    from streams.rollouts import RolloutRef, decode_exporter_event

    _value_or_decode_error(decode_exporter_event, json.dumps(value).encode())
    try:
        ref = decode_exporter_event(json.dumps(value).encode())
    except DecodeError:
        return
    assert ref is None or isinstance(ref, RolloutRef)


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
