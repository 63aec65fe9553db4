"""Crash-safe file writes: temp name, fsync, rename, fsync the directory; and scratch files
that nothing can leave behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``path`` only once it is completely written and durable.

    After a crash at any point, ``path`` holds either its old content or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def scratch_file(prefix: str) -> BinaryIO:
    """An unnamed temporary file (removed by the system however the process ends) for data
    too large to hold in memory; the caller closes it."""
    # Imported here: ~5 ms of every process's start-up, and few runs need a scratch file.
    import tempfile

    return tempfile.TemporaryFile(prefix=prefix)
