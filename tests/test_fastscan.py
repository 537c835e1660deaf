"""The scanner only vouches for lines orjson decodes to exactly the same values."""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.events import DecodeError, request_line_from_obj
from streams.fastscan import BLANK, OTHER, SIMPLE, scan

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


def scanned(batch: list[bytes]) -> list[tuple[int, tuple[str, str, int, float, float] | None]]:
    result = scan(b"\n".join(batch))
    assert result.kind.size == len(batch)
    keys = result.keys.view(np.uint8).reshape(-1, 96)
    out: list[tuple[int, tuple[str, str, int, float, float] | None]] = []
    row = 0
    for kind in result.kind.tolist():
        if kind != SIMPLE:
            out.append((kind, None))
            continue
        ns = bytes(keys[row, :64]).rstrip(b"\0").decode()
        pod_hash = bytes(keys[row, 64:]).rstrip(b"\0").decode()
        out.append(
            (
                kind,
                (
                    ns,
                    pod_hash,
                    int(result.status[row]),
                    float(result.duration_ms[row]),
                    float(result.ts[row]),
                ),
            )
        )
        row += 1
    assert row == result.status.size == result.ts.size == result.duration_ms.size
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
    result = scan(b"\n".join(variants))
    assert result.kind.tolist() == [SIMPLE] * 3
    assert result.status.tolist() == [503, 200, 503]
    assert result.duration_ms.tolist() == [87.5, -0.0015, 1.0]
    assert result.ts.tolist() == [1764150000.512, 17.0, 1764150000.512]


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
    assert scan(b"\n".join(others)).kind.tolist() == [OTHER] * len(others)
    assert scan(b"\n \n\r\n").kind.tolist() == [BLANK] * 4
    assert math.isclose(scan(CANONICAL).ts[0], 1764150000.512)


def test_numbers_past_the_exact_fast_path_still_match_orjson() -> None:
    lines = [
        CANONICAL.replace(b"87.5", b"9007199254740993"),  # beyond 2**53
        CANONICAL.replace(b"87.5", b"1e23"),  # beyond the exact powers of ten
        CANONICAL.replace(b"1764150000.512", b"1795690944.7210088"),  # time.time()'s 17 digits
        CANONICAL.replace(b"87.5", b"0.30000000000000004441"),
    ]
    result = scan(b"\n".join(lines))
    assert result.kind.tolist() == [SIMPLE] * len(lines)
    for i, line in enumerate(lines):
        obj = orjson.loads(line)
        assert result.duration_ms[i] == obj["duration_ms"]
        assert result.ts[i] == obj["ts"]


@settings(max_examples=100)
@given(st.lists(any_line, min_size=1, max_size=12), st.integers(1, 400))
def test_scanning_in_pieces_changes_nothing(batch: list[bytes], chunk_bytes: int) -> None:
    buffer = b"\n".join(batch)
    whole, pieces = scan(buffer, chunk_bytes=1 << 30), scan(buffer, chunk_bytes=chunk_bytes)
    for name in ("starts", "ends", "kind", "keys", "status"):
        assert getattr(whole, name).tolist() == getattr(pieces, name).tolist(), name
    assert whole.ts.tobytes() == pieces.ts.tobytes()
    assert whole.duration_ms.tobytes() == pieces.duration_ms.tobytes()
