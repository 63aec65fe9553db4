"""How the process allocates chunk-sized buffers: bounded peak, no fresh pages per buffer.

Two glibc behaviours cost a backup tool dearly and can be switched off here (glibc only;
elsewhere nothing happens; both settings are process-wide and only about allocation strategy):

* glibc gives each thread that meets contention its own malloc arena (up to eight per core),
  and multi-MiB buffers freed into one arena are not reused by another: with two seal threads a
  1 GB backup peaked at 104-114 MiB RSS; with one shared arena at 86 MiB, for the same CPU time.
* Buffers past the mmap threshold are mapped and unmapped one by one, and free memory at the
  top of the heap is handed back to the kernel: every new chunk buffer then touches pages the
  kernel must zero (on a VM, often fault in from the host). A 1 GiB ``get`` made 170,000-210,000
  page faults, 17,000 without that, and ran 12 % faster (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Above the largest frame (16 MiB) and every buffer built from one.
_MMAP_THRESHOLD = 32 * 1024 * 1024
# Free heap kept for reuse: a restore's whole working set.
_TRIM_THRESHOLD = 128 * 1024 * 1024


def share_malloc_arena() -> None:
    """Make every thread allocate from one arena."""
    _mallopt(_M_ARENA_MAX, 1, "worker threads keep their own arenas")


def keep_large_buffers() -> None:
    """Serve large buffers from the heap and keep freed ones for reuse, not the kernel.

    For a restore: its buffers have few sizes and recur. A backup's do not, and there the
    retained heap fragments (peak RSS +10-15 MiB), so a backup leaves glibc's defaults be.
    """
    _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD, "large buffers are mapped one by one")
    _mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD, "free heap goes back to the kernel")


def _mallopt(option: int, value: int, otherwise: str) -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if not mallopt(option, value):
        log.debug("mallopt(%d) was refused; %s", option, otherwise)
