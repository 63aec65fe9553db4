"""Writing a large file past the page cache (``O_DIRECT``) where the filesystem allows it.

A restore writes each byte once and does not read it back: through the page cache every page
costs a copy and, on a VM whose free memory the host reclaims, a fault to the host as well
(perf: 27 % of a 1 GiB ``get`` in ``copy_folio_from_iter_atomic``). Direct I/O hands whole
blocks to the device from one aligned buffer instead; the copy into that buffer is the only one.

Direct I/O wants the buffer, the file offset and the length aligned to the device's block.
Data is staged in a page-aligned buffer and written in whole buffers; the last, partial block
is written padded and the file truncated to its size. A filesystem without direct I/O (the
flag is refused, or a write fails with EINVAL) gets ordinary writes from that point on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

# A multiple of every block size in use (512 B to 4 KiB).
BLOCK = 4096
_IOV_MAX = 1024
# Not every system has it (macOS): there every write is an ordinary one.
_O_DIRECT = getattr(os, "O_DIRECT", 0)

Buffer = bytes | bytearray | memoryview


def write_all(fd: int, parts: Sequence[Buffer]) -> None:
    """writev until every byte is written (a regular file may take fewer bytes at a time)."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        if written == 0:
            raise OSError(errno.EIO, "the file took no bytes")
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class DirectWriter:
    """Appends to ``fd`` (a file opened for writing, at its end). Call ``close`` once
    everything is written: it writes what is staged and gives the file its exact size.

    Full buffers are written on writer threads (direct writes wait for the device) while the
    caller fills the next; up to ``depth`` buffers are in use at once, so a write that is slow
    to complete does not stop the caller. A write's error is raised by the next call. Writes
    go direct only from a block-aligned offset; from any other, the first write is refused and
    everything goes through the page cache as usual."""

    def __init__(self, fd: int, stage_bytes: int, depth: int = 2) -> None:
        if stage_bytes <= 0 or stage_bytes % BLOCK:
            raise ValueError("the staging buffer must be a whole number of blocks")
        if depth < 2:
            raise ValueError("a direct writer needs at least two buffers")
        self.fd = fd
        self.size = 0
        self._stage_bytes = stage_bytes
        self._depth = depth
        # The buffer being filled, and those handed to the writer threads, oldest first.
        self._stage: mmap.mmap | None = None
        self._filled = 0
        self._writing: deque[tuple[Future[None], mmap.mmap]] = deque()
        # Where the buffer being filled goes in the file.
        self._start = os.lseek(fd, 0, os.SEEK_CUR)
        self._offset = self._start
        if _set_direct(fd, True):
            self._stage = _take_stage(stage_bytes)

    @property
    def direct(self) -> bool:
        return self._stage is not None

    def write(self, parts: Sequence[Buffer]) -> None:
        """Append the parts in order (one writev without direct I/O)."""
        if self._stage is None:
            write_all(self.fd, parts)
            self.size += sum(len(part) for part in parts)
            return
        for part in parts:
            self._stage_part(memoryview(part).cast("B"))

    def _stage_part(self, view: memoryview) -> None:
        assert self._stage is not None
        self.size += len(view)
        while view:
            take = min(self._stage_bytes - self._filled, len(view))
            self._stage[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == self._stage_bytes:
                self._hand_over()

    def _hand_over(self) -> None:
        """Write the full buffer in the background and take a free one to fill meanwhile."""
        assert self._stage is not None
        writing = _writer().submit(self._write_stage, self._stage, self._stage_bytes, self._offset)
        self._writing.append((writing, self._stage))
        self._offset += self._stage_bytes
        self._filled = 0
        if len(self._writing) < self._depth:
            self._stage = _take_stage(self._stage_bytes)
        else:
            oldest, self._stage = self._writing.popleft()
            oldest.result()

    def _wait(self) -> None:
        for writing, _ in self._writing:
            writing.result()

    def close(self) -> None:
        """Write the staged tail (padded to a block, then cut back) and free the buffers."""
        if self._stage is None:
            return
        try:
            self._wait()
            if self._filled:
                padded = -(-self._filled // BLOCK) * BLOCK
                self._stage[self._filled : padded] = bytes(padded - self._filled)
                self._write_stage(self._stage, padded, self._offset)
                os.ftruncate(self.fd, self._start + self.size)
        finally:
            self._release()

    def abandon(self) -> None:
        """Free the buffers without writing more (the file is being removed)."""
        self._release()

    def _write_stage(self, stage: mmap.mmap, length: int, offset: int) -> None:
        staged = memoryview(stage)[:length]
        try:
            try:
                pwrite_all(self.fd, staged, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Refused after all (the filesystem checks only at write time, the writer
                # started at an unaligned offset, or a short write left it unaligned):
                # ordinary writes from here on, this buffer again from its start (bytes a
                # short write already put there are the same bytes).
                _set_direct(self.fd, False)
                pwrite_all(self.fd, staged, offset)
        finally:
            staged.release()

    def _release(self) -> None:
        """Keep the buffers for the next file once no write uses them (a write's error is
        the caller's to raise, or to ignore)."""
        stages = []
        while self._writing:
            writing, stage = self._writing.popleft()
            writing.exception()
            stages.append(stage)
        if self._stage is not None:
            stages.append(self._stage)
        for stage in stages:
            _keep_stage(stage)
        self._stage = None
        self._filled = 0


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite until every byte is written at ``offset`` onwards."""
    while data:
        written = os.pwrite(fd, data, offset)
        if written == 0:
            raise OSError(errno.EIO, "the file took no bytes")
        data = data[written:]
        offset += written


# Buffers kept for the next file: a fresh mapping faults in each of its pages on first touch,
# which every large file of a restore paid again, with the GIL held (docs/performance.md,
# finding 85). At most this many stay mapped, 1 MiB each in use.
_KEPT_STAGES = 8
_kept_stages: list[mmap.mmap] = []
_kept_lock = threading.Lock()


def _take_stage(size: int) -> mmap.mmap:
    with _kept_lock:
        for index, stage in enumerate(_kept_stages):
            if len(stage) == size:
                return _kept_stages.pop(index)
    return mmap.mmap(-1, size)


def _keep_stage(stage: mmap.mmap) -> None:
    """Keep the buffer, dropping the one kept longest if there are too many."""
    with _kept_lock:
        _kept_stages.append(stage)
        dropped = _kept_stages.pop(0) if len(_kept_stages) > _KEPT_STAGES else None
    if dropped is not None:
        # A failed write's traceback may still hold a view of it: then the mapping goes when
        # that does.
        with contextlib.suppress(BufferError):
            dropped.close()


_writer_pool: ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    """The threads that wait for the device while restore workers go on (made once)."""
    global _writer_pool
    with _writer_lock:
        if _writer_pool is None:
            _writer_pool = ThreadPoolExecutor(2, thread_name_prefix="direct-write")
        return _writer_pool


def _set_direct(fd: int, on: bool) -> bool:
    if not _O_DIRECT:
        return not on
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | _O_DIRECT if on else flags & ~_O_DIRECT
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError:
        return False
    return True
