"""Every codec Kafka allows decodes here (cramjam is pinned), and the test knob works."""

from __future__ import annotations

from collections.abc import Iterator

import aiokafka.codec
import pytest

from agents.codecs import CODECS, check_codecs, missing_codecs


@pytest.fixture
def restore_codecs() -> Iterator[None]:
    saved = {name: getattr(aiokafka.codec, f"has_{name}") for name in CODECS}
    yield
    for name, check in saved.items():
        setattr(aiokafka.codec, f"has_{name}", check)


def test_all_four_codecs_are_available() -> None:
    assert missing_codecs() == []
    payload = b'{"status":200}\n' * 100
    for encode, decode in (
        (aiokafka.codec.gzip_encode, aiokafka.codec.gzip_decode),
        (aiokafka.codec.snappy_encode, aiokafka.codec.snappy_decode),
        (aiokafka.codec.lz4_encode, aiokafka.codec.lz4_decode),
        (aiokafka.codec.zstd_encode, aiokafka.codec.zstd_decode),
    ):
        assert decode(encode(payload)) == payload


def test_a_disabled_codec_is_missing_and_others_are_required(restore_codecs: None) -> None:
    check_codecs(["snappy"])  # the others are there: no exit
    assert missing_codecs() == ["snappy"]
    with pytest.raises(ValueError):
        check_codecs(["brotli"])
