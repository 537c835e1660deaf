"""The columnar fast path must agree with the line-by-line decoder on every input."""

from __future__ import annotations

import canarywatch_linescan as linescan
import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import decode_request_lines
from streams.requestlog import decode_columns
from tests.test_linescan import CANONICAL, any_line

GOOD = {
    "ts": 1764150000.25,
    "namespace": "shop",
    "pod": "web-abc-1",
    "rollouts-pod-template-hash": "abc",
    "status": 200,
    "duration_ms": 9.5,
}


Line = tuple[object, ...]
Refusal = tuple[int, bytes, str]


def reference(messages: list[bytes], max_bytes: int) -> tuple[list[Line], list[Refusal]]:
    lines: list[Line] = []
    invalid: list[Refusal] = []
    for i, message in enumerate(messages):
        good, bad = decode_request_lines(message, max_bytes)
        lines.extend((x.namespace, x.pod_hash, x.status, x.duration_ms, x.ts) for x in good)
        invalid.extend((i, raw, err.reason) for raw, err in bad)
    return lines, invalid


def columns_of(messages: list[bytes], max_bytes: int) -> tuple[list[Line], list[Refusal]]:
    c = decode_columns(messages, max_bytes, max_bad_lines=1 << 30)
    lines: list[Line] = list(
        zip(
            c.namespaces,
            c.pod_hashes,
            c.status.tolist(),
            c.duration_ms.tolist(),
            c.ts.tolist(),
            strict=True,
        )
    )
    return lines, [(i, raw, err.reason) for i, raw, err in c.invalid]


variants = (
    st.sampled_from(
        [
            orjson.dumps(GOOD),
            orjson.dumps({**GOOD, "status": 503, "namespace": "other"}),
            orjson.dumps({**GOOD, "ts": 1764150001}),  # an integer timestamp
            orjson.dumps({k: v for k, v in GOOD.items() if k != "namespace"} | {"env": "shop"}),
            orjson.dumps(
                {k: v for k, v in GOOD.items() if k != "rollouts-pod-template-hash"}
                | {"labels": {"rollouts-pod-template-hash": "lbl"}}
            ),
            orjson.dumps({**GOOD, "status": "200"}),
            orjson.dumps({**GOOD, "status": 42}),
            orjson.dumps({**GOOD, "status": True}),
            orjson.dumps({**GOOD, "duration_ms": None}),
            orjson.dumps({**GOOD, "namespace": ""}),
            orjson.dumps({k: v for k, v in GOOD.items() if k != "ts"}),
            b"[1, 2]",
            b"17",
            b"not json",
            b'{"ts": 1, ',
            b"",
            CANONICAL,
            CANONICAL.replace(b"shop-prod", "sh\u00f6p".encode()),
            CANONICAL.replace(b"shop-prod", b"sh\\u006fp"),
            CANONICAL.replace(b"87.5", b"9007199254740993"),
            CANONICAL.replace(b"503", b"503.0"),
            b" \r",
        ]
    )
    | any_line
    | st.binary(max_size=200)  # anything at all: refused with a reason, never a crash
)
message = st.lists(variants, min_size=1, max_size=4).map(lambda parts: b"\n".join(parts)) | (
    variants.map(lambda v: v + b"\n")
)


@settings(max_examples=300)
@given(st.lists(message, max_size=12), st.sampled_from([64, 10_000]))
def test_fast_path_agrees_with_the_line_decoder(messages: list[bytes], max_bytes: int) -> None:
    assert columns_of(messages, max_bytes) == reference(messages, max_bytes)


def test_a_clean_batch_is_decoded_in_one_parse() -> None:
    messages = [orjson.dumps({**GOOD, "status": 200 + i}) for i in range(100)]
    messages.append(b"\n".join(orjson.dumps(GOOD) for _ in range(500)) + b"\n")
    c = decode_columns(messages)
    assert len(c) == 600 and not c.invalid
    assert c.status[:3].tolist() == [200, 201, 202]


def test_one_bad_message_does_not_lose_its_neighbours() -> None:
    good = orjson.dumps(GOOD)
    messages = [good] * 50 + [b"{oops"] + [good] * 49
    c = decode_columns(messages)
    assert len(c) == 99
    assert [(i, raw, err.reason) for i, raw, err in c.invalid] == [(50, b"{oops", "not_json")]


def test_a_long_namespace_after_a_refused_line_keeps_its_strings() -> None:
    long_namespace = {**GOOD, "namespace": "n" * 80}  # too long for a packed key: overflow
    messages = [b"{oops", orjson.dumps(long_namespace) + b"\n" + orjson.dumps(GOOD)]
    c = decode_columns(messages)
    assert c.namespaces == ["n" * 80, "shop"]
    assert c.pod_hashes == ["abc", "abc"]
    assert [(i, err.reason) for i, _, err in c.invalid] == [(0, "not_json")]


def test_a_flood_of_bad_lines_is_tallied_not_listed() -> None:
    good = orjson.dumps(GOOD)
    flood = b"x\n" * 524_000 + good  # 1 MB: half a million bad lines, one good one at the end
    c = decode_columns([good, flood, b"{bad\n" + good], max_bad_lines=20)
    assert len(c) == 3  # the good lines survive, the flood's last line too
    listed = [(i, raw, e.reason) for i, raw, e in c.invalid]
    assert listed == [(1, b"x", "not_json")] * 20 + [(2, b"{bad", "not_json")]
    assert c.flooded == {1: {"not_json": 524_000 - 20}}


def test_a_flood_of_lines_that_cannot_be_json_costs_no_columns() -> None:
    # ~150 bytes of columns a line: a 1 MB message of two-byte lines would take ~77 MB.
    flood = b"{x\n" * 3 + b"x\n" * 500_000 + b"[1]\n"
    *_, kind, _, _, _, _, _, skipped = linescan.scan([flood], 1 << 21, 1 << 20, 20)
    assert len(kind) == 3 + 20 + 1  # "{x" and "[1]" may be JSON: the exact decoder says
    assert np.frombuffer(skipped, np.int64).tolist() == [500_000 - 20]
    c = decode_columns([flood], max_bytes=1 << 21, max_bad_lines=20)
    listed = [(raw, e.reason) for _, raw, e in c.invalid]
    assert listed == [(b"{x", "not_json")] * 3 + [(b"x", "not_json")] * 17
    assert c.flooded == {0: {"not_json": 500_000 - 17, "not_object": 1}}  # as before the scanner


def test_lines_left_to_the_line_decoder_get_values_only_once_decoded() -> None:
    # "{}" may be JSON, so the exact decoder must look at each; until then a line costs its
    # kind and place (25 bytes), not a row of values (145).
    flood = b"{}\n" * 100_000 + orjson.dumps(GOOD)
    message, start, end, kind, keys, status, duration, ts, *_ = linescan.scan(
        [flood], 1 << 21, 1 << 20, 20
    )
    assert len(kind) == 100_001 and len(keys) == linescan.KEY_WIDTH
    scanned = sum(map(len, (message, start, end, kind, keys, status, duration, ts)))
    assert scanned / len(kind) < 26
    c = decode_columns([flood, orjson.dumps({**GOOD, "env": "alias"})], 1 << 21, 20)
    assert c.namespaces == ["shop", "shop"] and c.ts.tolist() == [GOOD["ts"]] * 2
    assert c.flooded == {0: {"missing_field": 100_000 - 20}}
