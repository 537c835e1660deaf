"""Field-by-field validation of decoded JSON: the checks the wire formats' tables use.

Every field of a rollout state, an abort command and its evidence has one entry in a table
(streams/events.py, streams/rollouts.py): its name, how to check it, and whether it may be
missing (then its default applies). A new optional field is one entry. Checks are strict: a
string is a `str`, an integer an `int` and not a `bool`, a boolean a `bool` (`"false"` is
refused, not read as true). Unknown keys are ignored, so a newer writer can add fields.
Reasons (stable, for metrics and dead letters): `missing_field`, `wrong_type`, `out_of_range`,
`bad_format`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class DecodeError(ValueError):
    """A message that cannot be used; `reason` is a short stable code for metrics and DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def detached(self) -> DecodeError:
        """This error without its traceback and the exception it was raised from: kept in a
        list, their frames would hold the list (and so the error) in a reference cycle that only
        the cyclic collector frees, for every refused line of a flood."""
        self.__context__ = self.__cause__ = None
        return self.with_traceback(None)


MAX_EPOCH = 64  # decision epochs (streams.events.epoch_of)
EPOCH = re.compile(r"[A-Za-z0-9._-]+")


# Kubernetes names: a namespace is a DNS-1123 label (<= 63), a Rollout name a DNS-1123
# subdomain (<= 253); a pod-template hash a label value, short (Argo's are <= 10 characters).
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
MAX_NAMESPACE = 63
MAX_NAME = 253
MAX_POD_HASH = 32
MAX_TEXT = 1024  # release (an image reference), detail-like strings
MAX_SHORT_TEXT = 64  # phase, reason
MAX_STEP_INDEX = 10_000
MAX_COUNT = 2**53  # exact in a double
# Epoch seconds: 0 (unknown) up to 2100-01-01.
MAX_TIMESTAMP = 4_102_444_800.0
MAX_EXTRA_ENTRIES = 32

Check = Callable[[str, Any], Any]  # (field name, raw value) -> the value, or DecodeError


@dataclass(frozen=True, slots=True)
class FieldRule:
    name: str
    check: Check
    required: bool = False  # else a missing key takes `default`, or the dataclass's default
    default: object = None
    has_default: bool = False


def validate_fields(
    obj: dict[str, Any], rules: tuple[FieldRule, ...], *, prefix: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule in rules:
        if rule.name not in obj:
            if rule.required:
                raise DecodeError("missing_field", f"need {prefix}{rule.name}")
            if rule.has_default:
                out[rule.name] = rule.default
            continue
        out[rule.name] = rule.check(prefix + rule.name, obj[rule.name])
    return out


def _wrong(name: str, want: str, value: object) -> DecodeError:
    return DecodeError("wrong_type", f"{name} must be {want}, not {type(value).__name__}")


def _text_of(name: str, value: object, max_len: int, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _wrong(name, "a string", value)
    if len(value) > max_len:
        raise DecodeError("bad_format", f"{name} is {len(value)} characters > {max_len}")
    if not value and not empty:
        raise DecodeError("bad_format", f"{name} must not be empty")
    if not value.isprintable():
        raise DecodeError("bad_format", f"{name} holds control characters")
    return value


def _matching(pattern: re.Pattern[str], max_len: int, what: str, *, empty: bool = False) -> Check:
    def check(name: str, value: object) -> str:
        text = _text_of(name, value, max_len, empty=empty)
        if text and not pattern.fullmatch(text):
            raise DecodeError("bad_format", f"{name} {text[:80]!r} is not {what}")
        return text

    return check


def text(max_len: int = MAX_TEXT) -> Check:
    return lambda name, value: _text_of(name, value, max_len)


def non_empty_text(max_len: int = MAX_TEXT) -> Check:
    return lambda name, value: _text_of(name, value, max_len, empty=False)


namespace_name = _matching(DNS1123_LABEL, MAX_NAMESPACE, "a DNS-1123 label")
rollout_name = _matching(DNS1123_SUBDOMAIN, MAX_NAME, "a DNS-1123 subdomain")
pod_hash = _matching(LABEL_VALUE, MAX_POD_HASH, "a pod-template hash")
pod_hash_or_empty = _matching(LABEL_VALUE, MAX_POD_HASH, "a pod-template hash", empty=True)
# CANARYWATCH_CLUSTER: empty (one cluster) or a DNS-1123 label, as cluster names usually are.
cluster_name = _matching(DNS1123_LABEL, MAX_NAMESPACE, "a DNS-1123 label", empty=True)
epoch_name = _matching(EPOCH, MAX_EPOCH, "a decision epoch", empty=True)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong(name, "true or false", value)
    return value


def integer(lo: int, hi: int, *, optional: bool = False) -> Check:
    def check(name: str, value: object) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(name, "an integer", value)
        if not lo <= value <= hi:
            raise DecodeError("out_of_range", f"{name} {value} is not in {lo}..{hi}")
        return value

    return check


def number(lo: float, hi: float) -> Check:
    def check(name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(name, "a number", value)
        result = float(value)
        if not (math.isfinite(result) and lo <= result <= hi):
            raise DecodeError("out_of_range", f"{name} {result!r} is not in {lo:g}..{hi:g}")
        return result

    return check


timestamp = number(0.0, MAX_TIMESTAMP)


def one_of(*choices: str) -> Check:
    def check(name: str, value: object) -> str:
        if not isinstance(value, str):
            raise _wrong(name, "a string", value)
        if value not in choices:
            raise DecodeError("bad_format", f"{name} {value[:80]!r} is not one of {choices}")
        return value

    return check


def json_object(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(name, "an object", value)
    return value


def string_map(name: str, value: object) -> dict[str, str]:
    mapping = json_object(name, value)
    if len(mapping) > MAX_EXTRA_ENTRIES:
        raise DecodeError(
            "out_of_range", f"{name} has {len(mapping)} entries > {MAX_EXTRA_ENTRIES}"
        )
    return {
        _text_of(f"{name} key", k, MAX_SHORT_TEXT): _text_of(f"{name}.{k}", v, MAX_TEXT)
        for k, v in mapping.items()
    }
