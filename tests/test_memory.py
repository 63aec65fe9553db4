"""Malloc settings: worker threads share an arena; freed buffers stay on the heap. And what
the process holds."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from rpybackup_core.memory import resident_bytes

_PROBE = """
import ctypes, sys
from rpybackup_core.memory import keep_chunk_buffers, keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
if sys.argv[1] == "chunks":
    keep_chunk_buffers()
heap = next(
    [int(bound, 16) for bound in line.split()[0].split("-")]
    for line in open("/proc/self/maps")
    if line.rstrip().endswith("[heap]")
)
buffer = bytearray(int(sys.argv[2]))
address = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
print("heap" if heap[0] <= address < heap[1] + len(buffer) else "mapped")
"""

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc settings are glibc's",
)


MIB = 1024 * 1024


def _where_a_buffer_lives(setting: str, size: int) -> str:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, setting, str(size)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


def test_by_default_glibc_maps_a_large_buffer_of_its_own() -> None:
    assert _where_a_buffer_lives("default", 8 * MIB) == "mapped"


def test_keep_freed_memory_puts_large_buffers_on_the_heap() -> None:
    # On the heap, a freed buffer's pages are reused by the next one instead of being unmapped
    # and faulted in afresh (docs/performance.md, finding 73).
    assert _where_a_buffer_lives("keep", 8 * MIB) == "heap"


def test_keep_chunk_buffers_puts_a_chunk_and_a_chunkers_window_on_the_heap() -> None:
    # A backup's largest buffers: a maximum-size chunk and its sealed copy, and the window a
    # stream is cut from.
    assert _where_a_buffer_lives("chunks", 4 * MIB + 64 * 1024) == "heap"
    assert _where_a_buffer_lives("chunks", 6 * MIB) == "heap"


def test_keep_chunk_buffers_still_maps_a_buffer_larger_than_any_chunk() -> None:
    assert _where_a_buffer_lives("chunks", 12 * MIB) == "mapped"


def test_resident_bytes_counts_the_pages_this_process_has_touched() -> None:
    before = resident_bytes()
    touched = b"\x01" * (32 * MIB)
    after = resident_bytes()

    assert before is not None and after is not None
    assert after - before >= 30 * MIB and len(touched) == 32 * MIB
