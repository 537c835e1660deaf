"""Repeated log lines from the Kafka clients, once per interval: an outage is not a flood."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PREFIXES = ("aiokafka", "faust.transport")


class OncePerInterval(logging.Filter):
    """Passes the first record of a message template, then one per `every_s` with a count."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} more like it in {now - last[0]:.0f}s)"
        self._seen[key] = (now, 0)
        return True


def quiet_kafka_clients(every_s: float = 10.0) -> None:
    """Attach one `OncePerInterval` to every logger of the Kafka clients known so far."""
    once = OncePerInterval(every_s)
    names = [n for n in logging.root.manager.loggerDict if n.startswith(PREFIXES)]
    for name in [*PREFIXES, *names]:
        logging.getLogger(name).addFilter(once)
