"""The heap trimmer: only after a large fetch, at most once per interval, and it gives back."""

from __future__ import annotations

import ctypes

import pytest

from agents.memtrim import TRIM_AFTER_BYTES, HeapTrimmer


def test_a_trim_is_due_only_after_a_large_fetch_and_not_again_too_soon() -> None:
    now = [100.0]
    trimmer = HeapTrimmer(lambda: now[0], every_s=5.0)
    if not trimmer.available:
        pytest.fail("malloc_trim is not found in this machine's C library (glibc expected)")
    assert not trimmer.due(TRIM_AFTER_BYTES - 1)
    assert trimmer.due(TRIM_AFTER_BYTES)
    now[0] += 4.9
    assert not trimmer.due(10 * TRIM_AFTER_BYTES)
    now[0] += 0.2
    assert trimmer.due(TRIM_AFTER_BYTES)


def resident_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trimming_returns_freed_heap_pages() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    # Many small blocks come from the heap, not from mmap: freed, glibc keeps them.
    blocks = [libc.malloc(4096) for _ in range(40_000)]  # ~160 MB
    for block in blocks:
        libc.memset(block, 1, 4096)
    keep = libc.malloc(64)  # above them: the heap's top cannot shrink past it
    for block in blocks:
        libc.free(block)
    before = resident_kb()
    assert HeapTrimmer.trim()
    after = resident_kb()
    libc.free(keep)
    assert before - after > 100_000, (before, after)
