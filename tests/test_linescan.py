"""The native line scanner only vouches for lines orjson decodes to exactly the same values."""

from __future__ import annotations

import math
import struct

import canarywatch_linescan as linescan
import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.events import MAX_MESSAGE_BYTES, DecodeError, request_line_from_obj

SIMPLE, OTHER = linescan.SIMPLE, linescan.OTHER
BLANK = -1  # a line the scanner skips

REQUIRED = ("namespace", "rollouts-pod-template-hash", "pod", "status", "duration_ms", "ts")
CANONICAL = (
    b'{"ts":1764150000.512,"namespace":"shop-prod","pod":"web-6f7d9c8b5d-x2x9k",'
    b'"rollouts-pod-template-hash":"6f7d9c8b5d","status":503,"duration_ms":87.5}'
)

ws = st.sampled_from(["", "", "", " ", "  ", "\t", "\r", " \t"])
digits = st.text("0123456789", min_size=1, max_size=20)
number = st.one_of(
    st.builds(
        lambda sign, whole, frac, exp: sign + whole + frac + exp,
        st.sampled_from(["", "", "-", "+"]),
        st.one_of(digits, st.sampled_from(["0", "00", "01", "", "1"])),
        st.one_of(st.just(""), digits.map(lambda d: "." + d), st.sampled_from([".", ".5"])),
        st.one_of(
            st.just(""),
            st.builds(
                lambda e, s, d: e + s + d,
                st.sampled_from(["e", "E"]),
                st.sampled_from(["", "+", "-"]),
                st.one_of(digits, st.sampled_from(["", "0", "22", "400", "0001"])),
            ),
        ),
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: orjson.dumps(f).decode()),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(100, 599).map(str),
    st.sampled_from(["-0", "-0.0", "0e0", "-0E-0", "1e22", "1e23", "9007199254740993", "1.", "-"]),
)
plain = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'))
string_text = st.one_of(
    plain,
    plain,
    st.text(st.sampled_from(list('abc "\\/\t\x01\x7f\u00e9\u2603'))),
    st.sampled_from(["", "a\\u0041", 'a\\"b', "x" * 63, "x" * 64, "h" * 31, "h" * 32]),
).map(lambda s: '"' + s.replace('"', "") + '"' if '\\"' not in s else '"' + s + '"')
literal = st.sampled_from(["true", "false", "null", "tru", "nul", "True"])
nested = st.sampled_from(['{"a":1}', "[1,2]", "[]", "{}", '{"namespace":"x"}'])
value = st.one_of(string_text, number, literal, nested)


@st.composite
def members(draw: st.DrawFn) -> list[tuple[str, str]]:
    required = {
        "namespace": draw(st.one_of(string_text, st.sampled_from(['"shop"', '"env-000001"']))),
        "rollouts-pod-template-hash": draw(st.one_of(string_text, st.just('"6f7d9c8b5d"'))),
        "pod": draw(st.one_of(string_text, st.just('"web-1"'))),
        "status": draw(st.one_of(st.integers(100, 599).map(str), value)),
        "duration_ms": draw(st.one_of(number, value)),
        "ts": draw(st.one_of(number, value)),
    }
    pairs = [
        (k, v) for k, v in required.items() if draw(st.integers(0, 20)) > 0
    ]  # now and then a required key is missing
    extra_keys = st.sampled_from(["env", "pod_hash", "labels", "x", "ts ", "Status", *REQUIRED])
    pairs += draw(st.lists(st.tuples(extra_keys, value), max_size=3))
    return draw(st.permutations(pairs))


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    pairs = draw(members())
    parts = [
        draw(ws)
        + '"'
        + k
        + '"'
        + draw(ws)
        + draw(st.sampled_from([":", ":", ":", "", "::"]))
        + draw(ws)
        + v
        + draw(ws)
        for k, v in pairs
    ]
    separator = draw(st.sampled_from([",", ",", ",", ", ", ",,", ""]))
    body = separator.join(parts) + draw(st.sampled_from(["", "", "", ","]))
    text = draw(ws) + draw(st.sampled_from(["{", "{", "{", "[{", ""])) + body
    text += draw(st.sampled_from(["}", "}", "}", "}}", "", "}x"])) + draw(ws)
    return text.encode()


def near_misses(line: bytes) -> st.SearchStrategy[bytes]:
    """Single-byte edits of a valid line: most of them break it."""
    return st.tuples(
        st.integers(0, len(line) - 1), st.sampled_from(list(b' ,:"{}[]\\0.-e+\x00\x0b\x80tn'))
    ).flatmap(
        lambda edit: st.sampled_from(
            [
                line[: edit[0]] + bytes([edit[1]]) + line[edit[0] + 1 :],  # replace
                line[: edit[0]] + bytes([edit[1]]) + line[edit[0] :],  # insert
                line[: edit[0]] + line[edit[0] + 1 :],  # delete
            ]
        )
    )


any_line = st.one_of(
    lines(),
    st.just(CANONICAL).flatmap(near_misses),
    lines().flatmap(lambda x: near_misses(x) if x else st.just(x)),
)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def check(raw: bytes, kind: int, values: tuple[str, str, int, float, float] | None) -> None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert kind != SIMPLE, raw
        assert kind == OTHER or not raw.strip(), raw
        return
    if kind == BLANK:
        raise AssertionError(f"orjson decodes a blank line: {raw!r}")
    if kind != SIMPLE:
        return
    assert values is not None
    assert isinstance(obj, dict)
    for name in REQUIRED:
        assert name in obj, raw
    try:
        line = request_line_from_obj(obj)
    except DecodeError as error:
        raise AssertionError(f"simple, but the line decoder says {error}: {raw!r}") from None
    namespace, pod_hash, status, duration_ms, ts = values
    assert (namespace, pod_hash, status) == (line.namespace, line.pod_hash, line.status), raw
    assert type(obj["status"]) is int
    assert bits(duration_ms) == bits(line.duration_ms), (raw, duration_ms, line.duration_ms)
    assert bits(ts) == bits(line.ts), (raw, ts, line.ts)


Values = tuple[str, str, int, float, float]


def scanned(batch: list[bytes]) -> list[tuple[int, Values | None]]:
    """Kind and values of each line of `batch`, scanned as one NDJSON message."""
    return scanned_messages([b"\n".join(batch)])


def scanned_messages(messages: list[bytes]) -> list[tuple[int, Values | None]]:
    """Kind and values of each line of each message, in order; BLANK for lines skipped."""
    message, start, _, kind, keys, status, duration, ts, *_ = linescan.scan(
        messages, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, 1 << 30
    )
    rows = {
        (m, a): row
        for row, (m, a) in enumerate(
            zip(
                np.frombuffer(message, np.int64).tolist(),
                np.frombuffer(start, np.int64).tolist(),
                strict=True,
            )
        )
    }
    key_bytes = np.frombuffer(keys, np.uint8).reshape(-1, linescan.KEY_WIDTH)
    # Only SIMPLE lines have values: the n-th SIMPLE line's are the n-th of each column.
    is_simple = np.frombuffer(kind, np.uint8) == SIMPLE
    value_row = np.cumsum(is_simple) - 1
    assert len(key_bytes) == len(status) // 8 == len(ts) // 8 == np.count_nonzero(is_simple)
    out: list[tuple[int, Values | None]] = []
    for m, raw in enumerate(messages):
        offset = 0
        for line in raw.split(b"\n"):
            row = rows.pop((m, offset), None)
            offset += len(line) + 1
            if row is None:
                assert not line.strip(), f"a line with text was skipped: {line!r}"
                out.append((BLANK, None))
                continue
            if kind[row] != SIMPLE:
                out.append((kind[row], None))
                continue
            at = int(value_row[row])
            values = (
                bytes(key_bytes[at, :64]).rstrip(b"\0").decode(),
                bytes(key_bytes[at, 64:]).rstrip(b"\0").decode(),
                int(np.frombuffer(status, np.int64)[at]),
                float(np.frombuffer(duration, np.float64)[at]),
                float(np.frombuffer(ts, np.float64)[at]),
            )
            out.append((SIMPLE, values))
    assert not rows, f"lines found that are not in the messages: {rows}"
    return out


@settings(max_examples=1500)
@given(any_line)
@example(CANONICAL)
@example(CANONICAL.replace(b"87.5", b"-0"))
@example(CANONICAL.replace(b"87.5", b"1e22"))
@example(CANONICAL.replace(b"87.5", b"123456789012345.6e-7"))
def test_simple_lines_decode_exactly_like_orjson(raw: bytes) -> None:
    ((kind, values),) = scanned([raw])
    check(raw, kind, values)


@settings(max_examples=300)
@given(st.lists(any_line | st.sampled_from([b"", b"  ", b"\r", b"\x0b"]), min_size=1, max_size=8))
def test_a_batch_scans_like_its_lines_alone(batch: list[bytes]) -> None:
    together = scanned(batch)
    alone = [scanned([raw])[0] for raw in batch]
    assert [k for k, _ in together] == [k for k, _ in alone]
    for (_, a), (_, b) in zip(together, alone, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a[:3] == b[:3] and bits(a[3]) == bits(b[3]) and bits(a[4]) == bits(b[4])
    for raw, (kind, values) in zip(batch, together, strict=True):
        check(raw, kind, values)


def test_the_canonical_forms_are_simple() -> None:
    variants = [
        CANONICAL,
        b' { "namespace" : "shop", "pod": "p", "rollouts-pod-template-hash":"h",\t"status": 200,'
        b' "duration_ms": -1.5E-3, "ts": 17, "extra": null, "ok": true, "msg": "a b" }\r',
        CANONICAL.replace(b"87.5", b"0.1e1"),
    ]
    result = scanned(variants)
    assert [kind for kind, _ in result] == [SIMPLE] * 3
    values = [v for _, v in result if v is not None]
    assert [v[2] for v in values] == [503, 200, 503]
    assert [v[3] for v in values] == [87.5, -0.0015, 1.0]
    assert [v[4] for v in values] == [1764150000.512, 17.0, 1764150000.512]


def test_what_is_left_to_the_line_decoder() -> None:
    others = [
        CANONICAL.replace(b'"namespace"', b'"env"'),  # an alias
        CANONICAL.replace(b"shop-prod", b"sh\\u006fp"),  # an escape
        CANONICAL.replace(b"shop-prod", "shöp".encode()),  # non-ASCII
        CANONICAL.replace(b"503", b"503.0"),  # status not an integer
        CANONICAL.replace(b"503", b"true"),
        CANONICAL.replace(b"87.5", b"087.5"),
        CANONICAL.replace(b"87.5", b"87."),
        CANONICAL.replace(b"}", b",}"),
        CANONICAL.replace(b'"status":503,', b'"status":503,"status":200,'),
        CANONICAL.replace(b'"pod":"web-6f7d9c8b5d-x2x9k",', b""),  # the line decoder needs it
        CANONICAL.replace(b"shop-prod", b"x" * 64),
        CANONICAL.replace(b"87.5", b"8 7.5"),
        CANONICAL.replace(b"shop-prod", b"shop\tprod"),
        CANONICAL[:-1] + b',"labels":{"a":"b"}}',
    ]
    assert [kind for kind, _ in scanned(others)] == [OTHER] * len(others)
    assert [kind for kind, _ in scanned([b"\n \n\r\n\x0b\x0c"])] == [BLANK] * 4
    ((_, values),) = scanned([CANONICAL])
    assert values is not None and math.isclose(values[4], 1764150000.512)


def test_numbers_past_the_exact_fast_path_still_match_orjson() -> None:
    lines = [
        CANONICAL.replace(b"87.5", b"9007199254740993"),  # beyond 2**53
        CANONICAL.replace(b"87.5", b"1e23"),  # beyond the exact powers of ten
        CANONICAL.replace(b"1764150000.512", b"1795690944.7210088"),  # time.time()'s 17 digits
        CANONICAL.replace(b"87.5", b"0.30000000000000004441"),
    ]
    for line, (kind, values) in zip(lines, scanned(lines), strict=True):
        assert kind == SIMPLE and values is not None
        obj = orjson.loads(line)
        assert bits(values[3]) == bits(float(obj["duration_ms"]))  # as the line decoder reads it
        assert bits(values[4]) == bits(float(obj["ts"]))


@settings(max_examples=200)
@given(st.lists(st.lists(any_line, min_size=1, max_size=4), min_size=1, max_size=6))
def test_message_boundaries_change_nothing(messages: list[list[bytes]]) -> None:
    as_messages = scanned_messages([b"\n".join(lines) for lines in messages])
    as_one = scanned([line for lines in messages for line in lines])
    assert [k for k, _ in as_messages] == [k for k, _ in as_one]
    for (_, a), (_, b) in zip(as_messages, as_one, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a[:3] == b[:3] and bits(a[3]) == bits(b[3]) and bits(a[4]) == bits(b[4])


def test_oversized_and_empty_messages_are_told_apart() -> None:
    *_, states, _ = linescan.scan(
        [CANONICAL, b" \n\r", CANONICAL * 2], len(CANONICAL) + 1, 1 << 20, 20
    )
    assert list(states) == [linescan.MESSAGE_OK, linescan.MESSAGE_EMPTY, linescan.MESSAGE_OVERSIZED]


def test_a_line_longer_than_the_line_limit_is_left_to_the_line_decoder() -> None:
    _, _, _, kind, *_ = linescan.scan([CANONICAL], 1 << 20, len(CANONICAL) - 1, 20)
    assert list(kind) == [OTHER]


def test_key_index_answers_codes_and_minus_one() -> None:
    def key(ns: bytes, h: bytes) -> bytes:
        return ns.ljust(linescan.NAMESPACE_WIDTH, b"\0") + h.ljust(linescan.HASH_WIDTH, b"\0")

    index = linescan.KeyIndex(key(b"a", b"x") + key(b"b", b"x"), [4, 7])
    probes = np.frombuffer(key(b"b", b"x") + key(b"a", b"y") + key(b"a", b"x"), np.uint8)
    assert len(index) == 2
    assert np.frombuffer(index.lookup(probes), np.int64).tolist() == [7, -1, 4]
    with pytest.raises(ValueError, match="bytes per key"):
        linescan.KeyIndex(b"short", [1])
    with pytest.raises(ValueError, match="not a multiple"):
        index.lookup(np.zeros(5, np.uint8))
