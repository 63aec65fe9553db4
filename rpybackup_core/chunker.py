"""Content-defined chunking (FastCDC, compiled) of streams and buffers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

# pyfastcdc's real average is avg + min (cut-point skipping): about 1.25 MiB, like restic's 1 MiB.
AVG_SIZE = 1024 * 1024
MIN_SIZE = 256 * 1024
MAX_SIZE = 4 * 1024 * 1024


class Chunker:
    """Splits data into content-defined chunks. Not thread-safe: use one per thread."""

    def __init__(self) -> None:
        self._cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)

    def stream(self, reader: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a file, read as it goes; each view is valid only until the next one."""
        for chunk in self._cdc.cut_stream(reader):
            yield chunk.data

    def buffer(self, data: bytes) -> Iterator[memoryview]:
        view = memoryview(data)
        if len(view) <= MAX_SIZE:
            yield view
            return
        for chunk in self._cdc.cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]
