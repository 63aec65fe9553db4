"""Keeping the client's peak memory bounded while worker threads handle chunk-sized buffers.

glibc gives each thread that meets contention its own malloc arena (up to eight per core), and
multi-MiB buffers freed into one arena are not reused by another: with two seal threads a 1 GB
backup peaked at 104-114 MiB RSS; with one shared arena at 86 MiB, for the same CPU time
(docs/performance.md). The setting is process-wide and only about allocation strategy.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from typing import cast

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Buffers up to this size come from the heap, and up to this much freed heap stays mapped.
_KEPT_MMAP_THRESHOLD = 32 * 1024 * 1024
_KEPT_TRIM_THRESHOLD = 128 * 1024 * 1024
_CHUNK_MMAP_THRESHOLD = 8 * 1024 * 1024
_CHUNK_TRIM_THRESHOLD = 16 * 1024 * 1024


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        return cast("Callable[[int, int], int]", ctypes.CDLL(None).mallopt)
    except (OSError, AttributeError):
        return None


def share_malloc_arena() -> None:
    """Make every thread allocate from one arena (glibc only; elsewhere nothing happens)."""
    mallopt = _mallopt()
    if mallopt is not None and not mallopt(_M_ARENA_MAX, 1):
        log.debug("mallopt(M_ARENA_MAX) was refused; worker threads keep their own arenas")


def keep_freed_memory() -> None:
    """Reuse freed buffers instead of handing them back to the kernel (glibc only).

    By default glibc maps every multi-MiB buffer afresh and unmaps it when freed, and a page
    the kernel hands out fresh costs this machine's restores more than the bytes in it
    (docs/performance.md, findings 73 and 79). Restores keep up to 128 MiB: their buffers in
    flight are bounded by the fetch window. The setting is process-wide and stays: a console
    that has restored keeps it.
    """
    _keep_on_heap(_KEPT_MMAP_THRESHOLD, _KEPT_TRIM_THRESHOLD)


def keep_chunk_buffers() -> None:
    """Serve every chunk-sized buffer of a backup from the heap (glibc only).

    Left to itself, glibc maps a buffer above its threshold afresh and raises the threshold
    only to the largest such buffer freed so far: until a backup has freed one of each size,
    its chunks and their sealed copies would be mapped and faulted in one by one
    (4 % of the libraries' first backup's CPU, docs/performance.md finding 86). Up to 16 MiB of
    freed memory at the top of the heap stays mapped, as glibc's own raise to 8 MiB would keep;
    beyond that it goes back to the kernel. Process-wide, like the above.
    """
    _keep_on_heap(_CHUNK_MMAP_THRESHOLD, _CHUNK_TRIM_THRESHOLD)


def _keep_on_heap(mmap_threshold: int, trim_threshold: int) -> None:
    mallopt = _mallopt()
    if mallopt is None:
        return
    if not (
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    ):
        log.debug("mallopt refused the mmap or trim threshold; freed buffers go back to the kernel")


def resident_bytes() -> int | None:
    """This process's resident memory now, or None where ``/proc`` does not tell (not Linux)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
