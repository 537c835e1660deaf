"""A vectorised scanner for request-log lines in their canonical flat form.

`scan(buffer)` takes the lines of a batch joined with b"\\n" and, with numpy operations over the
whole buffer (no Python loop over lines or bytes), finds the lines it can vouch for: a flat JSON
object of strings, numbers, true/false/null, printable ASCII only (no backslash, no byte < 0x20
except tab/CR between tokens, no byte >= 0x80), strict JSON grammar, with `namespace`,
`rollouts-pod-template-hash`, `pod` (non-empty strings), `status` (an integer 100..599), `ts` and
`duration_ms` (numbers) each present exactly once. Numbers are bit-identical to what orjson
returns: most through the exact fast path (integer mantissa < 2**53, one multiplication or
division by a power of ten <= 1e22), the rest (e.g. time.time()'s 17 digits) through numpy's
correctly rounded string-to-double conversion. Such a line is `SIMPLE`; an all-whitespace line is
`BLANK`; anything else is `OTHER` and left to the exact decoder in `streams.events`, which decides
whether it is valid and why not.

How: quotes pair up inside a line once backslashes are excluded, so the strings are the spans
between consecutive quotes. Whitespace outside strings is dropped (unless it separates two
characters of a number or literal). The text between strings (a "gap") must then be one of `{`
(before the first string), `:`, `,`, `:<scalar>,`, and after the last string `}` or `:<scalar>}`;
the gap before a string says whether it is a key or a value, and the gap after it must fit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

from streams.events import MAX_MESSAGE_BYTES

SIMPLE = 0
BLANK = 1
OTHER = 2

NAMESPACE_WIDTH = 64  # namespaces of up to 63 bytes (Kubernetes allows 63)
HASH_WIDTH = 32  # pod-template hashes of up to 31 bytes
KEY_WIDTH = NAMESPACE_WIDTH + HASH_WIDTH
KEY_DTYPE = np.dtype(f"S{KEY_WIDTH}")  # namespace then hash, each NUL-padded to its width
SCALAR_WIDTH = 24  # longer scalars are not simple (they cannot be exact numbers anyway)
_MAX_EXACT = 1 << 53
_POW10_INT = np.array([10**i for i in range(19)], dtype=np.int64)
_POW10_FLOAT = np.array([float(10**i) for i in range(23)], dtype=np.float64)

# Required keys, with unique lengths: the key's length names it, its bytes confirm it.
_NAMES = (b"namespace", b"rollouts-pod-template-hash", b"pod", b"status", b"duration_ms", b"ts")
_NS, _HASH, _POD, _STATUS, _DURATION, _TS = range(6)
_NAME_OF_LENGTH = np.full(256, -1, dtype=np.int64)
for _i, _name in enumerate(_NAMES):
    _NAME_OF_LENGTH[len(_name)] = _i

# Gap kinds (text between strings, without whitespace).
_BAD, _PREFIX, _COLON, _COMMA, _SCALAR_COMMA, _CLOSE, _SCALAR_CLOSE = range(7)


def _u64(text: bytes) -> int:
    return int.from_bytes(text[:8].ljust(8, b"\0"), "little")


def _mask(length: int) -> int:
    return (1 << (8 * min(length, 8))) - 1


_TRUE, _FALSE, _NULL = _u64(b"true"), _u64(b"false"), _u64(b"null")


@dataclass(slots=True)
class Scan:
    """Per line: [start, end) in the buffer and its kind; columns for the SIMPLE lines, in order."""

    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    kind: NDArray[np.int8]
    keys: NDArray[np.bytes_]  # namespace (NAMESPACE_WIDTH bytes) + hash (HASH_WIDTH), NUL-padded
    status: NDArray[np.int64]
    duration_ms: NDArray[np.float64]
    ts: NDArray[np.float64]


def pack_key(namespace: str, pod_hash: str) -> bytes | None:
    """The fixed-width key of (namespace, hash), as `Scan.keys` holds it; None if it cannot be."""
    ns, h = namespace.encode(), pod_hash.encode()
    if not 0 < len(ns) < NAMESPACE_WIDTH or not 0 < len(h) < HASH_WIDTH or b"\0" in ns + h:
        return None
    return ns.ljust(NAMESPACE_WIDTH, b"\0") + h.ljust(HASH_WIDTH, b"\0")


def _window(data: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    """Row i is data[i : i + width]; data must extend `width` bytes past any row read."""
    return as_strided(data, shape=(data.size - width + 1, width), strides=(1, 1), writeable=False)


def _words(data: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """Element i is the little-endian uint64 of data[i : i + 8]."""
    return np.ndarray(
        shape=(data.size - 7,), dtype="<u8", buffer=data, strides=(1,)
    )  # unaligned reads are fine for numpy


def _empty_scan(starts: NDArray[np.int64], ends: NDArray[np.int64], kind: NDArray[np.int8]) -> Scan:
    return Scan(
        starts=starts,
        ends=ends,
        kind=kind,
        keys=np.zeros(0, dtype=KEY_DTYPE),
        status=np.zeros(0, np.int64),
        duration_ms=np.zeros(0, np.float64),
        ts=np.zeros(0, np.float64),
    )


CHUNK_BYTES = 1 << 18  # scanned a piece at a time, so that the temporaries stay in cache


def scan(buffer: bytes, chunk_bytes: int = CHUNK_BYTES) -> Scan:
    """Find the lines of `buffer` (separated by b"\\n") and decode the simple ones."""
    cuts = [0]
    while len(buffer) - cuts[-1] > chunk_bytes:
        cut = buffer.find(b"\n", cuts[-1] + chunk_bytes)
        if cut < 0:
            break
        cuts.append(cut + 1)
    if len(cuts) == 1:
        return _scan(buffer)
    cuts.append(len(buffer) + 1)
    parts = [_scan(buffer[a : b - 1]) for a, b in itertools.pairwise(cuts)]
    return Scan(
        starts=np.concatenate([p.starts + a for p, a in zip(parts, cuts, strict=False)]),
        ends=np.concatenate([p.ends + a for p, a in zip(parts, cuts, strict=False)]),
        kind=np.concatenate([p.kind for p in parts]),
        keys=np.concatenate([p.keys for p in parts]),
        status=np.concatenate([p.status for p in parts]),
        duration_ms=np.concatenate([p.duration_ms for p in parts]),
        ts=np.concatenate([p.ts for p in parts]),
    )


def _scan(buffer: bytes) -> Scan:
    pad = max(SCALAR_WIDTH, NAMESPACE_WIDTH) + 8
    size = len(buffer)
    raw = np.empty(size + 1 + pad, dtype=np.uint8)
    raw[:size] = np.frombuffer(buffer, dtype=np.uint8)
    raw[size] = 10
    raw[size + 1 :] = 0
    data = raw[: size + 1]

    # Bytes outside printable ASCII (newlines, tabs, CRs, control, non-ASCII) and backslashes.
    odd = np.flatnonzero(((data - np.uint8(32)) > 95) | (data == 92))
    odd_bytes = data[odd]
    is_nl = odd_bytes == 10
    newlines = odd[is_nl]
    n_lines = newlines.size
    ends = newlines
    starts = np.empty(n_lines, dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    line_starts = starts
    bad_line = np.zeros(n_lines, dtype=np.bool_)
    bad_line |= (ends - starts) > MAX_MESSAGE_BYTES  # the line decoder refuses those
    others = odd[~is_nl]
    ws_ctl = np.zeros(0, dtype=np.int64)
    if others.size:
        other_bytes = odd_bytes[~is_nl]
        is_ws_ctl = (other_bytes == 9) | (other_bytes == 13)
        bad_line[np.searchsorted(newlines, others[~is_ws_ctl])] = True
        ws_ctl = others[is_ws_ctl]
        if ws_ctl.size:
            raw[ws_ctl] = 32  # a tab or CR between tokens is a space; inside a string it is bad

    quotes = np.flatnonzero(data == 34)
    per_line = np.diff(np.searchsorted(quotes, newlines), prepend=0)
    odd_count = (per_line & 1).astype(np.bool_)
    if odd_count.any():
        bad_line |= odd_count
        quotes = quotes[np.repeat(~odd_count, per_line)]
        per_line = np.where(odd_count, 0, per_line)
    opens = quotes[0::2]
    closes = quotes[1::2]
    strings_per_line = per_line >> 1

    # Lines without a string are never simple; blank ones are told apart by bytes.strip().
    kind = np.full(n_lines, OTHER, dtype=np.int8)
    for i in np.flatnonzero(strings_per_line == 0).tolist():
        if not buffer[starts[i] : ends[i]].strip():
            kind[i] = BLANK
    bad_line |= strings_per_line == 0

    # Spaces outside strings: dropped, unless they separate two characters of a scalar.
    spaces = np.flatnonzero(data == 32)
    if spaces.size:
        after = np.searchsorted(opens, spaces, side="right")  # strings opened before the space
        if opens.size:
            inside = (after > 0) & (spaces < closes[np.maximum(after - 1, 0)])
        else:
            inside = np.zeros(spaces.size, dtype=np.bool_)
        if ws_ctl.size:
            in_string_ctl = np.isin(spaces[inside], ws_ctl)
            bad_line[np.searchsorted(newlines, spaces[inside][in_string_ctl])] = True
        outside = spaces[~inside]
        if outside.size:
            data, bad_more = _drop_spaces(data, outside)
            bad_line[np.searchsorted(newlines, bad_more)] = True
            opens, closes = _shift(opens, outside), _shift(closes, outside)
            starts, ends = _shift(starts, outside), _shift(ends, outside)
            raw = np.concatenate([data, np.zeros(pad, dtype=np.uint8)])
            data = raw[: data.size]
    words = _words(raw)

    n_strings = opens.size
    if n_strings == 0:
        return _empty_scan(line_starts, newlines, kind)
    line_of = np.repeat(np.arange(n_lines), strings_per_line)
    first = np.empty(n_strings, dtype=np.bool_)
    first[0] = True
    first[1:] = line_of[1:] != line_of[:-1]
    last = np.empty(n_strings, dtype=np.bool_)
    last[-1] = True
    last[:-1] = first[1:]

    # The gap before each line's first string must be exactly "{".
    has = strings_per_line > 0
    line_first = opens[first]
    prefix_ok = (line_first - starts[has] == 1) & (raw[np.maximum(line_first - 1, 0)] == 123)
    bad_line[np.flatnonzero(has)[~prefix_ok]] = True

    # The gap after each string: [closes + 1, next open or line end).
    gap_start = closes + 1
    gap_end = np.empty(n_strings, dtype=np.int64)
    gap_end[:-1] = opens[1:]
    gap_end[last] = ends[has]
    gap_len = gap_end - gap_start
    head = raw[gap_start]
    tail = raw[np.maximum(gap_end - 1, 0)]
    gap = np.full(n_strings, _BAD, dtype=np.int8)
    one = gap_len == 1
    gap[one & (head == 58) & ~last] = _COLON
    gap[one & (head == 44) & ~last] = _COMMA
    gap[one & (head == 125) & last] = _CLOSE
    long = (gap_len >= 3) & (gap_len <= SCALAR_WIDTH + 2) & (head == 58)
    gap[long & (tail == 44) & ~last] = _SCALAR_COMMA
    gap[long & (tail == 125) & last] = _SCALAR_CLOSE

    # Keys and values: a string is a key after "{", "," or ":<scalar>,"; a value after ":".
    is_key = np.empty(n_strings, dtype=np.bool_)
    is_key[0] = True
    is_key[1:] = gap[:-1] != _COLON
    is_key[first] = True
    fits = np.where(
        is_key,
        (gap == _COLON) | (gap == _SCALAR_COMMA) | (gap == _SCALAR_CLOSE),
        (gap == _COMMA) | (gap == _CLOSE),
    )
    bad_line[line_of[~fits]] = True

    # Scalars: every one must be a literal or an exact number.
    has_scalar = (gap == _SCALAR_COMMA) | (gap == _SCALAR_CLOSE)
    scalar_of = np.flatnonzero(has_scalar)
    numbers = _parse_scalars(raw, words, gap_start[scalar_of] + 1, gap_len[scalar_of] - 2)
    bad_line[line_of[scalar_of[~numbers.ok]]] = True

    # Required keys: each exactly once per line, with a value of the right type.
    length = closes - opens - 1
    name = _NAME_OF_LENGTH[np.minimum(length, 255)]
    candidate = np.flatnonzero(is_key & (name >= 0))
    name_c = name[candidate]
    start_c = opens[candidate] + 1
    len_c = length[candidate]
    w_first = words[start_c] & _MASKS_FIRST[name_c]
    w_last = words[start_c + np.maximum(len_c - 8, 0)] & _MASKS_LAST[name_c]
    w_mid1 = words[start_c + 8] & _MASKS_MID1[name_c]
    w_mid2 = words[start_c + 16] & _MASKS_MID2[name_c]
    matches = (
        (w_first == _WORDS_FIRST[name_c])
        & (w_last == _WORDS_LAST[name_c])
        & (w_mid1 == _WORDS_MID1[name_c])
        & (w_mid2 == _WORDS_MID2[name_c])
    )
    key_at = candidate[matches]
    key_name = name_c[matches]
    key_line = line_of[key_at]
    counts = np.bincount(key_line * 6 + key_name, minlength=n_lines * 6).reshape(n_lines, 6)
    bad_line |= (counts != 1).any(axis=1)

    # String-valued keys: the next string, non-empty, within its column's width.
    value_of = key_at + 1
    string_valued = key_name <= _POD
    ok = np.ones(key_at.size, dtype=np.bool_)
    ok[string_valued] = gap[key_at[string_valued]] == _COLON
    safe_value = np.minimum(value_of, n_strings - 1)
    value_len = length[safe_value]
    ok &= ~string_valued | (value_len > 0)
    ok &= (key_name != _NS) | (value_len < NAMESPACE_WIDTH)
    ok &= (key_name != _HASH) | (value_len < HASH_WIDTH)
    # Number-valued keys: a scalar that is a number; status an integer within 100..599.
    scalar_index = np.searchsorted(scalar_of, key_at)
    scalar_index = np.minimum(scalar_index, max(scalar_of.size - 1, 0))
    number_valued = ~string_valued
    if scalar_of.size:
        is_own = scalar_of[scalar_index] == key_at
        ok &= ~number_valued | (is_own & numbers.is_number[scalar_index])
        is_status = key_name == _STATUS
        ok &= ~is_status | (
            numbers.is_integer[scalar_index]
            & (numbers.integer[scalar_index] >= 100)
            & (numbers.integer[scalar_index] <= 599)
        )
    else:
        ok &= ~number_valued
    bad_line[key_line[~ok]] = True

    simple = ~bad_line
    kind[simple] = SIMPLE
    take = simple[key_line]

    def of(which: int) -> NDArray[np.intp]:
        return np.flatnonzero(take & (key_name == which))

    ns_at, hash_at = key_at[of(_NS)] + 1, key_at[of(_HASH)] + 1
    keys = np.zeros((ns_at.size, KEY_WIDTH), dtype=np.uint8)
    keys[:, :NAMESPACE_WIDTH] = _strings(raw, opens[ns_at] + 1, length[ns_at], NAMESPACE_WIDTH)
    keys[:, NAMESPACE_WIDTH:] = _strings(raw, opens[hash_at] + 1, length[hash_at], HASH_WIDTH)
    status_i = scalar_index[of(_STATUS)]
    return Scan(
        starts=line_starts,
        ends=newlines,
        kind=kind,
        keys=keys.view(KEY_DTYPE).reshape(-1),
        status=numbers.integer[status_i],
        duration_ms=numbers.value[scalar_index[of(_DURATION)]],
        ts=numbers.value[scalar_index[of(_TS)]],
    )


def _shift(positions: NDArray[np.int64], dropped: NDArray[np.int64]) -> NDArray[np.int64]:
    return positions - np.searchsorted(dropped, positions)


def _strings(
    raw: NDArray[np.uint8], start: NDArray[np.int64], length: NDArray[np.int64], width: int
) -> NDArray[np.uint8]:
    rows = _window(raw, width)[start]
    rows[np.arange(width) >= length[:, None]] = 0
    return rows


def _drop_spaces(
    data: NDArray[np.uint8], outside: NDArray[np.int64]
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Remove the spaces at `outside`; also the positions where that would join two scalars."""
    run_start = np.empty(outside.size, dtype=np.bool_)
    run_start[0] = True
    run_start[1:] = np.diff(outside) != 1
    run_end = np.empty(outside.size, dtype=np.bool_)
    run_end[-1] = True
    run_end[:-1] = run_start[1:]
    left = data[np.maximum(outside[run_start] - 1, 0)]
    right = data[np.minimum(outside[run_end] + 1, data.size - 1)]
    joins = _is_scalar_char(left) & _is_scalar_char(right)
    keep = np.ones(data.size, dtype=np.bool_)
    keep[outside] = False
    # Positions are reported in the original buffer's coordinates (the caller maps them to lines).
    return data[keep], outside[run_start][joins]


def _is_scalar_char(b: NDArray[np.uint8]) -> NDArray[np.bool_]:
    lower = b | np.uint8(32)
    word: NDArray[np.bool_] = (
        ((b - np.uint8(48)) < 10)
        | ((lower - np.uint8(97)) < 26)
        | (b == 46)
        | (b == 43)
        | (b == 45)
    )
    return word


@dataclass(slots=True)
class _Scalars:
    ok: NDArray[np.bool_]  # a literal or an exact number
    is_number: NDArray[np.bool_]
    is_integer: NDArray[np.bool_]  # a number without fraction or exponent
    integer: NDArray[np.int64]  # its value, when is_integer
    value: NDArray[np.float64]  # as orjson would return it, as a float


def _parse_scalars(
    raw: NDArray[np.uint8],
    words: NDArray[np.uint64],
    start: NDArray[np.int64],
    length: NDArray[np.int64],
) -> _Scalars:
    n = start.size
    w = words[start]
    literal = (
        ((length == 4) & ((w & np.uint64(_mask(4))) == _TRUE))
        | ((length == 4) & ((w & np.uint64(_mask(4))) == _NULL))
        | ((length == 5) & ((w & np.uint64(_mask(5))) == _FALSE))
    )
    width = int(length.max()) if n else 1
    width = max(1, min(width, SCALAR_WIDTH))
    text = _window(raw, width)[start]
    cols = np.arange(width)
    within = cols < length[:, None]
    digit = text - np.uint8(48)
    is_digit = (digit < 10) & within
    is_dot = (text == 46) & within
    is_exp = ((text | np.uint8(32)) == 101) & within
    neg = text[:, 0] == 45
    i0 = neg.astype(np.int64)
    has_dot = is_dot.any(axis=1)
    dot = np.where(has_dot, is_dot.argmax(axis=1), length)
    has_exp = is_exp.any(axis=1)
    exp = np.where(has_exp, is_exp.argmax(axis=1), length)
    rows = np.arange(n)
    after_exp = text[rows, np.minimum(exp + 1, width - 1)]
    exp_sign = has_exp & ((after_exp == 43) | (after_exp == 45))
    exp_neg = exp_sign & (after_exp == 45)
    non_digits = length - is_digit.sum(axis=1)
    int_end = np.minimum(dot, exp)
    mant_end = exp
    frac = np.where(has_dot, mant_end - dot - 1, 0)
    exp_digits_from = exp + 1 + exp_sign
    exp_digits = np.where(has_exp, length - exp_digits_from, 0)
    lead = text[rows, np.minimum(i0, width - 1)]
    number = (
        (length <= width)
        & (non_digits == i0 + has_dot + has_exp + exp_sign)
        & (int_end - i0 >= 1)
        & ~((lead == 48) & (int_end - i0 > 1))
        & (~has_dot | ((dot < exp) & (frac >= 1)))
        & (~has_exp | ((exp_digits >= 1) & (exp_digits <= 3)))
    )
    mant_digits = mant_end - i0 - has_dot
    # Mantissa: each digit times 10 to the number of mantissa digits after it.
    power = (mant_end[:, None] - 1 - cols) - (has_dot[:, None] & (cols < dot[:, None]))
    in_mant = is_digit & (cols < mant_end[:, None])
    weight = np.where(in_mant, _POW10_INT[np.clip(power, 0, 18)], 0)
    mantissa = (digit.astype(np.int64) * weight).sum(axis=1)
    in_exp = is_digit & (cols >= exp_digits_from[:, None])
    exp_power = np.clip(length[:, None] - 1 - cols, 0, 18)
    exp_value = (digit.astype(np.int64) * np.where(in_exp, _POW10_INT[exp_power], 0)).sum(axis=1)
    net = np.where(exp_neg, -exp_value, exp_value) - frac
    number &= ~literal
    exact = number & (mant_digits <= 18) & (mantissa < _MAX_EXACT) & (net >= -22) & (net <= 22)
    is_integer = exact & ~has_dot & ~has_exp
    integer = np.where(neg, -mantissa, mantissa)
    as_float = mantissa.astype(np.float64)
    scale = _POW10_FLOAT[np.clip(np.abs(net), 0, 22)]
    value = np.where(net >= 0, as_float * scale, as_float / scale)
    value = np.where(neg, -value, value)
    value = np.where(is_integer, integer.astype(np.float64), value)
    # Valid numbers past the exact fast path (e.g. time.time()'s 17 digits): numpy's own
    # correctly rounded string-to-double conversion, on those numbers only.
    inexact = np.flatnonzero(number & ~exact)
    if inexact.size:
        digits = np.where(within[inexact], text[inexact], np.uint8(0))
        value[inexact] = np.ascontiguousarray(digits).view(f"S{width}").ravel().astype(np.float64)
    return _Scalars(
        ok=literal | number,
        is_number=number,
        is_integer=is_integer,
        integer=integer,
        value=value,
    )


def _name_words() -> tuple[NDArray[np.uint64], ...]:
    """Per required name: expected words and masks at offsets 0, 8, 16 and length - 8."""
    cols: list[list[int]] = [[] for _ in range(8)]
    for name in _NAMES:
        n = len(name)
        padded = name + b"\0" * 24
        parts = [
            (padded[0:8], _mask(n)),
            (padded[max(n - 8, 0) : max(n - 8, 0) + 8], _mask(n) if n >= 8 else 0),
            (padded[8:16], _mask(n - 8) if n > 8 else 0),
            (padded[16:24], _mask(n - 16) if n > 16 else 0),
        ]
        for j, (text, mask) in enumerate(parts):
            cols[2 * j].append(_u64(text) & mask)
            cols[2 * j + 1].append(mask)
    return tuple(np.array(c, dtype=np.uint64) for c in cols)


(
    _WORDS_FIRST,
    _MASKS_FIRST,
    _WORDS_LAST,
    _MASKS_LAST,
    _WORDS_MID1,
    _MASKS_MID1,
    _WORDS_MID2,
    _MASKS_MID2,
) = _name_words()
