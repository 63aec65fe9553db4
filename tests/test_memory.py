"""Malloc settings: worker threads share an arena; restores keep freed buffers on the heap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_PROBE = """
import ctypes, sys
from rpybackup_core.memory import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
heap = next(
    [int(bound, 16) for bound in line.split()[0].split("-")]
    for line in open("/proc/self/maps")
    if line.rstrip().endswith("[heap]")
)
buffer = bytearray(8 * 1024 * 1024)
address = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
print("heap" if heap[0] <= address < heap[1] + len(buffer) else "mapped")
"""

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc settings are glibc's",
)


def _where_an_8_mib_buffer_lives(setting: str) -> str:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, setting], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


def test_by_default_glibc_maps_a_large_buffer_of_its_own() -> None:
    assert _where_an_8_mib_buffer_lives("default") == "mapped"


def test_keep_freed_memory_puts_large_buffers_on_the_heap() -> None:
    # On the heap, a freed buffer's pages are reused by the next one instead of being unmapped
    # and faulted in afresh (docs/performance.md, finding 73).
    assert _where_an_8_mib_buffer_lives("keep") == "heap"
