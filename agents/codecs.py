"""Kafka compression codecs in this process: all four must decode (gzip, snappy, lz4, zstd).

aiokafka 0.14 decodes gzip with the standard library and snappy, lz4 and zstd with `cramjam`
(pinned in pyproject.toml); without it a batch in those codecs raises `UnsupportedCodecError`
in `getmany`. `check_codecs` runs when a component starts and refuses to run without them.

`disable_codecs` makes this process behave as if a codec's library were missing (setting
`CANARYWATCH_DISABLED_CODECS=snappy`): the tests use it to put a batch the consumer cannot read
on a real broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import aiokafka.codec

CODECS = ("gzip", "snappy", "lz4", "zstd")


def _checks() -> dict[str, Callable[[], bool]]:
    return {name: getattr(aiokafka.codec, f"has_{name}") for name in CODECS}


def missing_codecs() -> list[str]:
    return [name for name, has in _checks().items() if not has()]


def disable_codecs(names: Iterable[str]) -> None:
    for name in names:
        if name not in CODECS:
            raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
        setattr(aiokafka.codec, f"has_{name}", _absent)


def _absent() -> bool:
    return False


def check_codecs(disabled: Iterable[str] = ()) -> None:
    """Apply `disabled`, then refuse to run if another codec cannot be decoded."""
    disabled = list(disabled)
    disable_codecs(disabled)
    missing = [name for name in missing_codecs() if name not in disabled]
    if missing:
        raise SystemExit(
            f"canarywatch: aiokafka cannot decode {', '.join(missing)} here; install cramjam"
        )
