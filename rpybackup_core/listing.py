"""A directory's names in sorted order, without holding a huge directory's names in memory.

Up to ``NAMES_IN_MEMORY`` names are sorted in memory. Beyond that they are sorted in runs of
that many, kept in an unnamed temporary file, and merged as they are read back: a directory of
a million files costs a few runs' read buffers, not ~70 MB of names.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator

from .durable import scratch_file

NAMES_IN_MEMORY = 65536
# Names cannot hold a NUL byte; they can hold a newline.
_SEPARATOR = b"\0"
_READ_SIZE = 64 * 1024


def sorted_names(path: str) -> Iterator[str]:
    """The names in ``path``, sorted as ``sorted`` sorts them. The directory is listed before
    this returns (an ``OSError`` is raised here); the names come as they are iterated."""
    runs: _Runs | None = None
    names: list[str] = []
    with os.scandir(path) as scan:
        for entry in scan:
            names.append(entry.name)
            if len(names) >= NAMES_IN_MEMORY:
                runs = runs or _Runs()
                runs.add(names)
                names = []
    if runs is None:
        names.sort()
        return iter(names)
    runs.add(names)
    return runs.merged()


class _Runs:
    """Sorted runs of names, one after another in an unnamed temporary file."""

    def __init__(self) -> None:
        # Closed by merged().
        self._file = scratch_file("rpybackup-names-")
        self._bounds: list[tuple[int, int]] = []

    def add(self, names: list[str]) -> None:
        if not names:
            return
        names.sort()
        # "surrogatepass" keeps a name that is not UTF-8 (surrogate escapes) exactly as it was.
        data = _SEPARATOR.join(name.encode("utf-8", "surrogatepass") for name in names)
        start = self._file.tell()
        self._file.write(data + _SEPARATOR)
        self._bounds.append((start, start + len(data) + 1))

    def merged(self) -> Iterator[str]:
        self._file.flush()
        try:
            yield from heapq.merge(*(self._run(start, end) for start, end in self._bounds))
        finally:
            self._file.close()

    def _run(self, start: int, end: int) -> Iterator[str]:
        fd = self._file.fileno()
        rest = b""
        while start < end:
            block = os.pread(fd, min(_READ_SIZE, end - start), start)
            if not block:
                raise OSError(f"temporary file of names ends early at {start}")
            start += len(block)
            *whole, rest = (rest + block).split(_SEPARATOR)
            for name in whole:
                yield name.decode("utf-8", "surrogatepass")
