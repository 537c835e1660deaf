"""Kafka clients' repeated complaints are logged once per interval, with a count."""

from __future__ import annotations

import logging

from agents.logfilter import OncePerInterval


def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.client", level, __file__, 1, msg, None, None)


def test_repeats_are_dropped_until_the_interval_is_over_then_counted() -> None:
    now = [0.0]
    once = OncePerInterval(10.0, clock=lambda: now[0])
    assert once.filter(record("Unable connect to node %s"))
    assert not any(once.filter(record("Unable connect to node %s")) for _ in range(50))
    assert once.filter(record("another message"))
    assert once.filter(record("debug talk", logging.DEBUG))
    now[0] = 10.5
    again = record("Unable connect to node %s")
    assert once.filter(again)
    assert "50 more like it" in str(again.msg)
