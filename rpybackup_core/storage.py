"""The storage backend: where pack files live. A small interface and the local directory backend.

Objects are addressed by kind ("packs") and a name the repository chose (hex, with a client
directory prefix); no name from the network is ever used here.
"""

from __future__ import annotations

import errno
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from .durable import fsync_dir
from .errors import NotFound, StorageError

_SAFE_NAME = re.compile(r"^[0-9a-z][0-9a-z_/.-]*$")


def check_object_name(name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name or "//" in name:
        raise StorageError(f"refusing unsafe object name {name!r}")
    return name


def storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"server storage is full while {what}")
    return StorageError(f"server storage failed while {what}: {exc.strerror or exc}")


class Backend(ABC):
    @abstractmethod
    def put_file(self, kind: str, name: str, local: Path) -> None:
        """Store a finished, fsynced local file under (kind, name); the local file is consumed."""

    @abstractmethod
    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def size(self, kind: str, name: str) -> int: ...

    @abstractmethod
    def delete(self, kind: str, name: str) -> None: ...

    @abstractmethod
    def list(self, kind: str) -> Iterator[str]: ...

    def get(self, kind: str, name: str) -> bytes:
        return self.get_range(kind, name, 0, self.size(kind, name))


class LocalBackend(Backend):
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, kind: str, name: str) -> Path:
        return self.root / check_object_name(kind) / check_object_name(name)

    def put_file(self, kind: str, name: str, local: Path) -> None:
        path = self._path(kind, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(local, path)
            fsync_dir(path.parent)
        except OSError as exc:
            raise storage_error(exc, f"storing {kind}/{name}") from exc

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        path = self._path(kind, name)
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(length)
        except FileNotFoundError as exc:
            raise NotFound(f"{kind}/{name} is missing from storage") from exc
        except OSError as exc:
            raise storage_error(exc, f"reading {kind}/{name}") from exc
        if len(data) != length:
            raise StorageError(f"{kind}/{name} is shorter than the index says")
        return data

    def size(self, kind: str, name: str) -> int:
        try:
            return self._path(kind, name).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"{kind}/{name} is missing from storage") from exc

    def delete(self, kind: str, name: str) -> None:
        path = self._path(kind, name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error(exc, f"deleting {kind}/{name}") from exc
        fsync_dir(path.parent)

    def list(self, kind: str) -> Iterator[str]:
        base = self.root / check_object_name(kind)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for filename in files:
                if filename.startswith("."):
                    continue
                yield str((Path(dirpath) / filename).relative_to(base))
