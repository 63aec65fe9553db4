"""Keeping the client's peak memory bounded while worker threads handle chunk-sized buffers.

glibc gives each thread that meets contention its own malloc arena (up to eight per core), and
multi-MiB buffers freed into one arena are not reused by another: with two seal threads a 1 GB
backup peaked at 104-114 MiB RSS; with one shared arena at 86 MiB, for the same CPU time
(docs/performance.md). The setting is process-wide and only about allocation strategy.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8


def share_malloc_arena() -> None:
    """Make every thread allocate from one arena (glibc only; elsewhere nothing happens)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if not mallopt(_M_ARENA_MAX, 1):
        log.debug("mallopt(M_ARENA_MAX) was refused; worker threads keep their own arenas")
