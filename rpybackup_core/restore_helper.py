"""A second process that writes a restore's large files.

One interpreter restoring a tree does its large files and its small ones phase after phase:
the small files are bound by the GIL, and while they are written the bulk work of the large
ones (TLS, AES-GCM, zstd, BLAKE3, direct writes) cannot use the other core. Two processes can.

The restore (restorer.py) keeps every decision about names and places: it creates each large
file exactly as it would write it itself and passes the helper the open descriptor, over a
Unix socket (SCM_RIGHTS). The helper never sees a path. Over its own authenticated connection
it fetches the file's chunks, opens and verifies them and writes them into that descriptor,
then reports what it wrote and its digest; the restore compares that with the snapshot and
finishes the file (mode, times, rename) or removes it.

Messages are datagrams of a SOCK_SEQPACKET pair, so each read is one message:

    restore -> helper:  {"shown", "size", "digest", "ids"} + descriptor, then the ids,
                        raw, in messages of up to 64 KiB
    helper -> restore:  {"shown", "written", "digest"} or {"shown", "error", "integrity"},
                        and a few times a second {}; every message also carries "total",
                        the bytes written so far, for the restore's progress

If the helper cannot start or stops, the restore writes the files it had not finished itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .crypto import ID_SIZE, MasterKey, file_hash
from .directio import DirectWriter
from .errors import IntegrityError, RestoreError, RPyBackupError
from .helper_process import start_helper, take_messages
from .remote import RemoteRepository
from .restorer import (
    _DIRECT_DEPTH,
    _DIRECT_STAGE_BYTES,
    Restorer,
    _LargeFile,
    _OpenDir,
    _Outcome,
    _TempFile,
)
from .tree import FILE, Node

log = logging.getLogger(__name__)

_MESSAGE_BYTES = 64 * 1024
_IDS_PER_MESSAGE = _MESSAGE_BYTES // ID_SIZE
# How often the helper tells how much it has written.
_PROGRESS_SECONDS = 0.2


@dataclass(frozen=True)
class HelperOutcome:
    """The helper's report on one file: what it wrote and its digest, or why it failed."""

    shown: str
    written: int = 0
    digest: str = ""
    error: RPyBackupError | None = None


class LargeFileHelper:
    """The restore's side: starts the helper process, hands it files, collects its reports.

    Not thread-safe (the restore's main thread calls it); a reader thread turns the helper's
    messages into outcomes, so neither side can block the other on a full socket.
    """

    def __init__(self, address: str, fingerprint: str, name: str, token: str, key: MasterKey):
        self.stopped = False
        # Files handed over so far, and the bytes the helper has written.
        self.files = 0
        self.written = 0
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = start_helper(
                serve,
                (theirs, (address, fingerprint, name, token), key.to_text()),
                "rpybackup-restore-helper",
            )
        finally:
            theirs.close()
        self._outcomes: queue.SimpleQueue[HelperOutcome | int | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="restore-helper", daemon=True)
        self._reader.start()

    def hand_over(self, shown: str, fd: int, node: Node) -> None:
        """Have the helper write ``node``'s content into ``fd`` (a duplicate goes across)."""
        header = {
            "shown": shown,
            "size": node.size,
            "digest": node.digest.partition(":")[0],
            "ids": len(node.content),
        }
        socket.send_fds(self._sock, [json.dumps(header).encode()], [fd])
        for start in range(0, len(node.content), _IDS_PER_MESSAGE):
            self._sock.send(b"".join(node.content[start : start + _IDS_PER_MESSAGE]))
        self.files += 1

    def outcomes(self, wait: bool) -> list[HelperOutcome | None]:
        """The reports that arrived; with ``wait``, after at least one message (maybe only
        news of progress). ``None`` means the helper stopped: nothing more will come (the
        reader thread puts it last, whatever ends the helper, since its end of the socket
        closes with it). Once stopped, nothing."""
        if self.stopped:
            return []
        outcomes: list[HelperOutcome | None] = []
        for message in take_messages(self._outcomes, wait):
            if isinstance(message, int):
                self.written = message
                continue
            if message is None:
                self.stopped = True
            outcomes.append(message)
        return outcomes

    def close(self, abandon: bool = False) -> None:
        """Tell the helper to stop and wait for it; ``abandon``: stop it at once."""
        if abandon:
            self._process.kill()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._reader.join()
        self._sock.close()
        log.debug("restore helper: %d large files handed over", self.files)

    def _read(self) -> None:
        """The reader thread: every report, then ``None`` when the helper is gone."""
        try:
            while True:
                message = self._sock.recv(_MESSAGE_BYTES)
                if not message:
                    break
                report = json.loads(message)
                self._outcomes.put(int(report["total"]))
                if "shown" in report:
                    self._outcomes.put(_outcome(report))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("restore helper: %s", exc)
        finally:
            self._outcomes.put(None)


def _outcome(report: dict[str, Any]) -> HelperOutcome:
    shown = str(report["shown"])
    if "error" not in report:
        return HelperOutcome(shown, int(report["written"]), str(report["digest"]))
    kind = IntegrityError if report.get("integrity") else RestoreError
    return HelperOutcome(shown, error=kind(str(report["error"])))


# ---- the helper process ---------------------------------------------------------------------


def serve(sock: socket.socket, connect: tuple[str, str, str, str], key_text: str) -> None:
    """The helper process: write each file handed over until the restore hangs up."""
    try:
        with RemoteRepository.connect(*connect) as remote:
            _Writer(remote, MasterKey.from_text(key_text), sock).serve()
    except (OSError, RPyBackupError) as exc:
        log.info("restore helper: %s", exc)
    finally:
        sock.close()


class _Writer(Restorer):
    """A restorer that writes into descriptors it is given and reports instead of counting."""

    def __init__(self, remote: RemoteRepository, key: MasterKey, sock: socket.socket) -> None:
        super().__init__(remote, key)
        self._sock = sock
        # Files here belong to no directory of this process.
        self._nowhere = _OpenDir(-1, "")
        # Files being written, and the bytes of those finished.
        self._active: dict[str, _Content] = {}
        self._finished = 0
        self._told = 0.0

    def serve(self) -> None:
        with self._running():
            while True:
                if not select.select([self._sock], [], [], 0)[0]:
                    # Nothing waiting: finish what is in hand, so its reports go out now.
                    self._settle_fetches()
                    self._drain()
                job = self._receive_job()
                if job is None:
                    return
                self._write_received(*job)

    def _receive_job(self) -> tuple[str, int, Node] | None:
        message, fds, _, _ = socket.recv_fds(self._sock, _MESSAGE_BYTES, 1)
        if not message:
            return None
        if len(fds) != 1:
            raise RestoreError("restore helper: a file came without its descriptor")
        header = json.loads(message)
        ids: list[bytes] = []
        while len(ids) < header["ids"]:
            raw = self._sock.recv(_MESSAGE_BYTES)
            if not raw or len(raw) % ID_SIZE:
                os.close(fds[0])
                raise RestoreError("restore helper: a file's chunk ids were cut short")
            ids.extend(raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE))
        node = Node(name="-", kind=FILE, mode=0, mtime_ns=0, size=int(header["size"]))
        node.digest, node.content = f"{header['digest']}:", ids
        return str(header["shown"]), fds[0], node

    def _write_received(self, shown: str, fd: int, node: Node) -> None:
        try:
            content = _Content(fd, node, shown, self._key.id_key)
        except OSError as exc:
            os.close(fd)
            self._fail(shown, exc)
            return
        self._active[shown] = content
        self._write_into(self._nowhere, content, follow_existing=False)

    def _write_part(
        self,
        where: _OpenDir,
        large: _LargeFile,
        batch: list[bytes],
        sealed: dict[bytes, memoryview],
    ) -> None:
        now = time.monotonic()
        if now - self._told >= _PROGRESS_SECONDS:
            self._told = now
            self._report({})
        super()._write_part(where, large, batch, sealed)

    def _merge(self, outcomes: list[_Outcome]) -> None:
        for outcome in outcomes:
            content = self._active.pop(outcome.shown, None)
            self._finished += content.written if content is not None else 0
            if outcome.error is None:
                self._report(
                    {"shown": outcome.shown, "written": outcome.written, "digest": outcome.digest}
                )
            else:
                self._fail(outcome.shown, outcome.error)

    def _fail(self, shown: str, exc: OSError | RPyBackupError) -> None:
        reason = str(exc) if isinstance(exc, RPyBackupError) else (exc.strerror or str(exc))
        integrity = isinstance(exc, IntegrityError)
        self._report({"shown": shown, "error": reason, "integrity": integrity})

    def _report(self, report: dict[str, Any]) -> None:
        # Each pool thread counts its own file's bytes; this thread only reads the counts.
        total = self._finished + sum(content.written for content in self._active.values())
        self._sock.send(json.dumps({**report, "total": total}).encode())


class _Content(_TempFile):
    """A restore's file as the helper sees it: content goes into a descriptor the restore
    opened, and the digest goes back with the outcome, to be checked there. Nothing else of
    the file (name, mode, times) is the helper's business."""

    def __init__(self, fd: int, node: Node, shown: str, id_key: bytes) -> None:
        self.out = fd
        self.node = node
        self.shown = shown
        self.digest = file_hash(node.digest, id_key)
        self.written = 0
        self.error: OSError | RPyBackupError | None = None
        self.direct = DirectWriter(fd, _DIRECT_STAGE_BYTES, _DIRECT_DEPTH)

    def finish(self, follow_existing: bool) -> _Outcome:
        assert self.direct is not None
        try:
            if self.error is not None:
                raise self.error
            self.direct.close()
        except (OSError, RPyBackupError) as exc:
            self.abort()
            return _Outcome(self.shown, error=exc)
        os.close(self.out)
        return _Outcome(self.shown, self.written, digest=self.digest.hexdigest())

    def abort(self) -> None:
        """Let the descriptor go; removing the file is the restore's part."""
        if self.direct is not None:
            self.direct.abandon()
        with contextlib.suppress(OSError):
            os.close(self.out)
