"""Give the C heap's free pages back to the system after a large decode.

Decoding a fetch of many short lines allocates tens of MB of column buffers (Rust `Vec`s,
numpy arrays) that are freed right after counting. glibc keeps such freed memory in its heap
for reuse (its mmap threshold rises after the first large free), so the worker's resident
memory stays at the largest fetch it ever decoded. `malloc_trim(0)` returns the free pages.
It walks the heap (~ms), so it runs at most every `every_s` seconds, off the event loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# A fetch at least this large may have allocated many times its size in columns.
TRIM_AFTER_BYTES = 1 << 20


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to give back this way
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


class HeapTrimmer:
    """Decides when a decode was large enough, and long enough after the last trim, to trim."""

    def __init__(self, clock: Callable[[], float], every_s: float = 5.0) -> None:
        self._clock = clock
        self._every_s = every_s
        self._last = float("-inf")

    @property
    def available(self) -> bool:
        return _malloc_trim is not None

    def due(self, fetched_bytes: int) -> bool:
        """Whether a fetch of `fetched_bytes` calls for a trim now (and note it if so)."""
        if _malloc_trim is None or fetched_bytes < TRIM_AFTER_BYTES:
            return False
        now = self._clock()
        if now - self._last < self._every_s:
            return False
        self._last = now
        return True

    @staticmethod
    def trim() -> bool:
        """Return the heap's free pages to the system; whether any were."""
        return _malloc_trim is not None and _malloc_trim(0) == 1
