"""The storage backend: where pack files live. A small interface and the local directory backend.

Objects are addressed by kind ("packs") and a name the repository chose (hex, with a client
directory prefix); no name from the network is ever used here. Every backend keeps the same
contract, pinned by tests/storage/test_conformance.py:

* ``put`` and ``put_file`` replace an object whole: a reader sees the old object or the new one,
  never a part, and a returned call means the object is durable.
* ``get``, ``get_range`` and ``stat`` of a missing object raise NotFound; a range past the end
  raises StorageError.
* ``delete`` of a missing object succeeds (GC may retry a delete that already happened).
* ``list(kind)`` yields every stored name of that kind, and nothing half-written.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .durable import atomic_write_bytes, fsync_dir
from .errors import NotFound, StorageError

if TYPE_CHECKING:
    from .config import ServerConfig

_SAFE_NAME = re.compile(r"^[0-9a-z][0-9a-z_/.-]*$")


def check_object_name(name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name or "//" in name or name.endswith("/"):
        raise StorageError(f"refusing unsafe object name {name!r}")
    return name


def storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"server storage is full while {what}")
    return StorageError(f"server storage failed while {what}: {exc.strerror or exc}")


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Backend(ABC):
    """Objects by (kind, name). Implementations are safe to call from many threads at once."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live, for messages and logs (never holds a credential)."""

    @abstractmethod
    def put(self, kind: str, name: str, data: bytes) -> None:
        """Store a small object from memory."""

    @abstractmethod
    def put_file(self, kind: str, name: str, local: Path) -> None:
        """Store a finished, fsynced local file under (kind, name); the local file is consumed.

        On failure the local file is left in place, so the caller can retry or remove it.
        """

    @abstractmethod
    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def stat(self, kind: str, name: str) -> ObjectInfo: ...

    @abstractmethod
    def delete(self, kind: str, name: str) -> None: ...

    @abstractmethod
    def list(self, kind: str) -> Iterator[str]: ...

    def size(self, kind: str, name: str) -> int:
        return self.stat(kind, name).size

    def prepare(self) -> tuple[str, ...]:
        """Get ready for a new repository and prove that we may write and delete here.

        Returns notes for the admin about anything that was set up.
        """
        probe = f"probe-{secrets.token_hex(8)}"
        self.put("init", probe, b"")
        self.delete("init", probe)
        return ()

    def get(self, kind: str, name: str) -> bytes:
        return self.get_range(kind, name, 0, self.size(kind, name))


class LocalBackend(Backend):
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def location(self) -> str:
        return str(self.root)

    def _path(self, kind: str, name: str) -> Path:
        return self.root / check_object_name(kind) / check_object_name(name)

    def put(self, kind: str, name: str, data: bytes) -> None:
        path = self._path(kind, name)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise storage_error(exc, f"storing {kind}/{name}") from exc

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

    def stat(self, kind: str, name: str) -> ObjectInfo:
        try:
            return ObjectInfo(name, self._path(kind, name).stat().st_size)
        except FileNotFoundError as exc:
            raise NotFound(f"{kind}/{name} is missing from storage") from exc
        except OSError as exc:
            raise storage_error(exc, f"reading {kind}/{name}") from exc

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
                # Temp files of an unfinished atomic write start with a dot.
                if filename.startswith("."):
                    continue
                yield str((Path(dirpath) / filename).relative_to(base))


def open_backend(config: ServerConfig) -> Backend:
    """The backend a server config names: its data directory by default, or an S3 bucket."""
    if config.storage_url == "local":
        return LocalBackend(config.data_dir / "storage")
    # Imported here because s3storage builds on this module (and boto3 is slow to import).
    from .s3storage import S3Backend

    return S3Backend.from_config(config)
