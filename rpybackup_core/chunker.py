"""Content-defined chunking (FastCDC, compiled) of streams and buffers."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

# pyfastcdc's real average is avg + min (cut-point skipping): about 2 MiB, like borg's. Larger
# than restic's 1 MiB: zstd sees more context per chunk (3 % smaller on text) and there is less
# per-chunk work. The maximum stays 4 MiB, which bounds every buffer. Ids do not depend on these.
AVG_SIZE = 1536 * 1024
MIN_SIZE = 512 * 1024
MAX_SIZE = 4 * 1024 * 1024
# A stream's window: a chunk is cut only once the largest chunk's worth is read from its start
# (or the file has ended), and each refill then reads at least the 2 MiB beyond that.
_WINDOW = MAX_SIZE + 2 * 1024 * 1024


class Chunker:
    """Splits data into content-defined chunks. Not thread-safe: use one per thread."""

    def __init__(self) -> None:
        self._fastcdc: FastCDC | None = None
        # Made at the first stream and kept; a stream started inside another makes its own.
        self._window: memoryview | None = None

    @property
    def _cdc(self) -> FastCDC:
        """Made when first needed: importing pyfastcdc (and typing_extensions with it) cost
        every CLI process ~20 ms of CPU, and a run that reads only small files, or none (no
        change), never cuts anything."""
        if self._fastcdc is None:
            from pyfastcdc import FastCDC

            self._fastcdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)
        return self._fastcdc

    def stream(self, reader: BinaryIO, limit: int | None = None) -> Iterator[memoryview]:
        """Chunks of a file, read as it goes; each view is valid only until the next one.

        With ``limit``, reading stops there: a file that keeps growing while it is read (a busy
        log) is stored as it was when the read began, and the read always ends.

        The cut points are pyfastcdc's ``cut_stream``'s: a cut depends only on the bytes from
        the chunk's start up to the maximum size, and every chunk is cut with that much read
        (or the end of the file). Cutting here, from one window kept for every file, spares
        each file the 8 MiB buffer ``cut_stream`` would allocate and zero for it.
        """
        window = self._window if self._window is not None else memoryview(bytearray(_WINDOW))
        self._window = None
        try:
            yield from self._cut(window, cast(io.RawIOBase, reader), limit)
        finally:
            self._window = window

    def _cut(
        self, window: memoryview, reader: io.RawIOBase, limit: int | None
    ) -> Iterator[memoryview]:
        left = -1 if limit is None else limit
        end = 0
        ended = False
        while True:
            while not ended and end < len(window):
                room = window[end:] if left < 0 else window[end : end + left]
                count = reader.readinto(room) or 0
                end += count
                if left > 0:
                    left -= count
                ended = count == 0 or left == 0
            cuts = self._cdc.cut_buf(window[:end])
            position = 0
            while ended or end - position >= MAX_SIZE:
                chunk = next(cuts, None)
                if chunk is None:
                    return
                yield chunk.data
                position += chunk.length
            end -= position
            window[:end] = window[position : position + end]

    def file(self, fd: int, limit: int) -> Iterator[bytes | memoryview]:
        """Chunks of an open file, reading at most ``limit`` bytes (see ``stream``).

        A file no larger than the minimum chunk size is one chunk whatever the cut points, so
        it is read with plain ``os.read`` calls: most files are small, and setting up a stream
        costs more than reading them.
        """
        if limit <= MIN_SIZE:
            parts = []
            left = limit
            while left > 0:
                part = os.read(fd, left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            if parts:
                yield b"".join(parts)
            return
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as handle:
            yield from self.stream(handle, limit)

    def buffer(self, data: bytes | bytearray) -> Iterator[memoryview]:
        view = memoryview(data)
        if len(view) <= MAX_SIZE:
            yield view
            return
        for chunk in self._cdc.cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]
