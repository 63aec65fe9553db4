"""Deterministic fault injection for the robustness suite (tests/robustness); off by default.

Crash points sit on the durable steps of the commit path. They do nothing unless the process
was started with ``RPYBACKUP_FAULTS`` set, which is read once, at import:

    RPYBACKUP_FAULTS="POINT[@N],..."    e.g. "after_index_insert@2"

The N-th time (default: the first) the named point is reached, the process sends itself
SIGKILL: to the repository that is a power cut at exactly that step. When the variable is unset,
``crash_point`` is one truth test of an empty dict.

``FaultyBackend`` wraps any storage backend (restic's and kopia's faulty-backend idea) and
makes chosen operations fail with ENOSPC or EIO, the way a full or dying disk would.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .storage import Backend, ObjectInfo, storage_error

ENV = "RPYBACKUP_FAULTS"

POINTS = (
    "after_pack_write",  # a blob was appended to the open pack (not yet fsynced)
    "before_pack_fsync",  # the pack's trailer is written, fsync has not run
    "after_pack_store",  # the pack is durable in the backend, no index row names it yet
    "after_index_insert",  # the pack's index rows are committed, no snapshot refers to them
    "before_snapshot_commit",  # the snapshot row is inserted, its transaction not committed
    "during_prune",  # dead chunk rows are deleted, their packs are not dropped or repacked yet
    "during_repack",  # a repacked pack is indexed, the old packs' files are not deleted yet
)


@dataclass
class _Fault:
    at: int
    hits: int = 0


def parse(spec: str) -> dict[str, _Fault]:
    """``POINT[@N],...`` -> armed crash points; an unknown point is an error."""
    armed: dict[str, _Fault] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, count = item.partition("@")
        if point not in POINTS or (count and not count.isdigit()):
            raise ConfigError(
                f"{ENV}: {item!r} is not POINT[@N] with POINT one of {', '.join(POINTS)}"
            )
        armed[point] = _Fault(max(1, int(count or 1)))
    return armed


_ARMED = parse(os.environ.get(ENV, ""))
_LOCK = threading.Lock()


def crash_point(name: str) -> None:
    """A durable step was reached: die here if this point is armed and due."""
    if _ARMED:
        _fire(name)


def _fire(name: str) -> None:
    fault = _ARMED.get(name)
    if fault is None:
        return
    with _LOCK:
        fault.hits += 1
        due = fault.hits == fault.at
    if due:
        os.kill(os.getpid(), signal.SIGKILL)


class FaultyBackend(Backend):
    """Any backend, with chosen operations failing until ``heal()``.

    ``fail("put_file", errno.ENOSPC)`` makes every later ``put_file`` fail as a full disk would
    (the wrapped backend is not called, so nothing is written); ``after`` lets that many calls
    through first.
    """

    OPERATIONS = ("put", "put_file", "get_range", "stat", "delete", "list")

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[int, int]] = {}
        self.injected = 0

    def fail(self, operation: str, code: int, after: int = 0) -> None:
        if operation not in self.OPERATIONS:
            raise ValueError(f"no backend operation {operation!r}")
        with self._lock:
            self._faults[operation] = (code, after)

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def _check(self, operation: str, what: str) -> None:
        with self._lock:
            fault = self._faults.get(operation)
            if fault is None:
                return
            code, after = fault
            if after > 0:
                self._faults[operation] = (code, after - 1)
                return
            self.injected += 1
        raise storage_error(OSError(code, os.strerror(code)), what)

    @property
    def location(self) -> str:
        return f"faulty({self.inner.location})"

    def put(self, kind: str, name: str, data: bytes) -> None:
        self._check("put", f"storing {kind}/{name}")
        self.inner.put(kind, name, data)

    def put_file(self, kind: str, name: str, local: Path) -> None:
        self._check("put_file", f"storing {kind}/{name}")
        self.inner.put_file(kind, name, local)

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        self._check("get_range", f"reading {kind}/{name}")
        return self.inner.get_range(kind, name, offset, length)

    def stat(self, kind: str, name: str) -> ObjectInfo:
        self._check("stat", f"reading {kind}/{name}")
        return self.inner.stat(kind, name)

    def delete(self, kind: str, name: str) -> None:
        self._check("delete", f"deleting {kind}/{name}")
        self.inner.delete(kind, name)

    def list(self, kind: str) -> Iterator[str]:
        self._check("list", f"listing {kind}")
        return self.inner.list(kind)
