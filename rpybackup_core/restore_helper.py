"""A second process that writes part of a restore.

One interpreter restoring a tree is bound by the GIL: a small file costs an open, a write,
a utime and a close, each a hand-off of the GIL between the threads that fetch and write, and
a large file's bulk work (TLS, AES-GCM, zstd, BLAKE3, direct writes) waits behind them. Two
processes use both cores (two restores at once took 1.1-1.5x the time of one: finding 58).

The restore (restorer.py) keeps every decision about where files go and hands the helper
open descriptors over a Unix socket (SCM_RIGHTS); the helper never sees a path of the
target. It works over its own authenticated connection, two kinds of job:

* a large file: the restore creates the file exactly as it would write it itself and hands
  its descriptor; the helper fetches the file's chunks, opens and verifies them and writes
  them into it, then reports what it wrote and its digest; the restore compares that with
  the snapshot and finishes the file (mode, times, rename) or removes it;
* a slice of small files: the restore hands the descriptor of their directory (one it opened
  with O_NOFOLLOW) and the files' entries; the helper writes them there entirely, exactly as
  the restore would (in place in a directory the restore created, else under a temporary
  name renamed after the digest matches), and reports how many it wrote and which failed.
  The directory's own metadata goes on in the restore once its slices are reported.

Messages are datagrams of a SOCK_SEQPACKET pair, so each read is one message:

    restore -> helper:  {"shown", "size", "digest", "ids"} + a file's descriptor, then the
                        ids, raw, in messages of up to 64 KiB; or
                        {"slice", "shown", "fresh", "bytes"} + a directory's descriptor, then
                        the entries (a tree's encoding) in messages of up to 64 KiB
    helper -> restore:  {"shown", "written", "digest"} or {"shown", "error", "integrity"}
                        for a large file; {"slice", "failed", "error", "integrity"} for a
                        small file that failed, then {"slice", "files", "written"} when a
                        slice is done; and a few times a second {}; every message also
                        carries "total", the bytes written so far, for the restore's progress

If the helper cannot start or stops, the restore writes what it had not finished itself.
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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .crypto import ID_SIZE, MasterKey, file_hash
from .directio import DirectWriter
from .errors import IntegrityError, RestoreError, RPyBackupError
from .helper_process import start_helper, take_messages
from .remote import RemoteRepository
from .restore_files import (
    DIRECT_DEPTH,
    DIRECT_STAGE_BYTES,
    HelperOutcome,
    OpenDir,
    Outcome,
    SliceOutcome,
    TempFile,
)
from .restorer import Restorer, _LargeFile
from .tree import FILE, Node, decode_tree, encode_tree

log = logging.getLogger(__name__)

_MESSAGE_BYTES = 64 * 1024
_IDS_PER_MESSAGE = _MESSAGE_BYTES // ID_SIZE
# How often the helper tells how much it has written.
_PROGRESS_SECONDS = 0.2


class RestoreHelper:
    """The restore's side: starts the helper process, hands it work, collects its reports.

    Not thread-safe (the restore's main thread calls it); a reader thread turns the helper's
    messages into outcomes, so neither side can block the other on a full socket.
    """

    def __init__(self, address: str, fingerprint: str, name: str, token: str, key: MasterKey):
        self.stopped = False
        # Large files, slices and their small files handed over so far, and the bytes the
        # helper has written.
        self.files = 0
        self.slices = 0
        self.small_files = 0
        self.written = 0
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = start_helper(
                serve,
                [theirs.fileno()],
                {"connect": [address, fingerprint, name, token], "key": key.to_text()},
                "rpybackup-restore-helper",
            )
        finally:
            theirs.close()
        self._outcomes: queue.SimpleQueue[HelperOutcome | SliceOutcome | int | None] = (
            queue.SimpleQueue()
        )
        # Failures in slices not reported done yet, by slice (the reader thread's).
        self._failures: dict[int, list[tuple[str, RPyBackupError]]] = {}
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
        # A message of ids at a time: a very large file's would be many MiB joined.
        ids = node.content
        self._send_job(
            header,
            fd,
            (b"".join(ids[i : i + _IDS_PER_MESSAGE]) for i in range(0, len(ids), _IDS_PER_MESSAGE)),
        )
        self.files += 1

    def hand_slice(self, number: int, fd: int, fresh: bool, prefix: str, nodes: list[Node]) -> None:
        """Have the helper write these small files of the directory open as ``fd``."""
        encoded = encode_tree(nodes)
        header = {"slice": number, "shown": prefix, "fresh": fresh, "bytes": len(encoded)}
        view = memoryview(encoded)
        self._send_job(
            header, fd, (view[i : i + _MESSAGE_BYTES] for i in range(0, len(view), _MESSAGE_BYTES))
        )
        self.slices += 1
        self.small_files += len(nodes)

    def _send_job(
        self, header: dict[str, Any], fd: int, messages: Iterator[bytes | memoryview]
    ) -> None:
        """A job: its header with the descriptor, then its payload, a message of at most 64
        KiB at a time."""
        socket.send_fds(self._sock, [json.dumps(header).encode()], [fd])
        for message in messages:
            self._sock.send(message)

    def outcomes(self, wait: bool) -> list[HelperOutcome | SliceOutcome | None]:
        """The reports that arrived; with ``wait``, after at least one message (maybe only
        news of progress). ``None`` means the helper stopped: nothing more will come (the
        reader thread puts it last, whatever ends the helper, since its end of the socket
        closes with it). Once stopped, nothing."""
        if self.stopped:
            return []
        outcomes: list[HelperOutcome | SliceOutcome | None] = []
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
        log.debug(
            "restore helper: %d large files and %d slices of %d small files handed over",
            self.files,
            self.slices,
            self.small_files,
        )

    def _read(self) -> None:
        """The reader thread: every report, then ``None`` when the helper is gone."""
        try:
            while True:
                message = self._sock.recv(_MESSAGE_BYTES)
                if not message:
                    break
                report = json.loads(message)
                self._outcomes.put(int(report["total"]))
                if "failed" in report:
                    failed = (str(report["failed"]), _error(report))
                    self._failures.setdefault(int(report["slice"]), []).append(failed)
                elif "slice" in report:
                    number = int(report["slice"])
                    self._outcomes.put(
                        SliceOutcome(
                            number,
                            int(report["files"]),
                            int(report["written"]),
                            self._failures.pop(number, []),
                        )
                    )
                elif "shown" in report:
                    self._outcomes.put(_outcome(report))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("restore helper: %s", exc)
        finally:
            self._outcomes.put(None)


def _outcome(report: dict[str, Any]) -> HelperOutcome:
    shown = str(report["shown"])
    if "error" not in report:
        return HelperOutcome(shown, int(report["written"]), str(report["digest"]))
    return HelperOutcome(shown, error=_error(report))


def _error(report: dict[str, Any]) -> RPyBackupError:
    kind = IntegrityError if report.get("integrity") else RestoreError
    return kind(str(report["error"]))


# ---- the helper process ---------------------------------------------------------------------


def serve(fds: list[int], args: dict[str, Any]) -> None:
    """The helper process: write each file handed over on the socket ``fds[0]`` until the
    restore hangs up."""
    sock = socket.socket(fileno=fds[0])
    try:
        address, fingerprint, name, token = (str(part) for part in args["connect"])
        with RemoteRepository.connect(address, fingerprint, name, token) as remote:
            _Writer(remote, MasterKey.from_text(str(args["key"])), sock).serve()
    except (OSError, RPyBackupError) as exc:
        log.info("restore helper: %s", exc)
    finally:
        sock.close()


@dataclass(eq=False)
class _SliceDir(OpenDir):
    """A directory of the restore's, open here for one slice of its small files."""

    number: int = 0
    files: int = 0
    written: int = 0


class _Writer(Restorer):
    """A restorer that writes into descriptors it is given and reports instead of counting."""

    def __init__(self, remote: RemoteRepository, key: MasterKey, sock: socket.socket) -> None:
        super().__init__(remote, key)
        self._sock = sock
        # Large files here belong to no directory of this process.
        self._nowhere = OpenDir(-1, "")
        # Large files being written, and the bytes of those finished.
        self._active: dict[str, _Content] = {}
        self._finished = 0
        # Small files being written, by shown path: their slice.
        self._small: dict[str, _SliceDir] = {}
        self._told = 0.0

    def serve(self) -> None:
        with self._running():
            while True:
                # Nothing waiting: go on with what is in hand, so its reports go out soon.
                while not select.select([self._sock], [], [], 0)[0] and self._advance():
                    pass
                if not self._receive_job():
                    return

    def _advance(self) -> bool:
        """One step of the work in hand; False when there is none."""
        if self._batch.segments:
            self._fetch_batch()
        elif self._fetches:
            self._receive_fetch()
        elif self._jobs:
            self._collect()
        else:
            return False
        return True

    def _receive_job(self) -> bool:
        """Take the next job and start it; False when the restore hung up."""
        message, fds, _, _ = socket.recv_fds(self._sock, _MESSAGE_BYTES, 1)
        if not message:
            return False
        if len(fds) != 1:
            raise RestoreError("restore helper: a job came without its descriptor")
        header = json.loads(message)
        if "slice" in header:
            self._restore_slice(header, fds[0])
        else:
            self._write_received(header, fds[0])
        return True

    def _receive_raw(self, size: int, fd: int, what: str) -> bytes:
        received = bytearray()
        while len(received) < size:
            raw = self._sock.recv(_MESSAGE_BYTES)
            if not raw:
                break
            received += raw
        if len(received) != size:
            os.close(fd)
            raise RestoreError(f"restore helper: {what} came cut short or too long")
        return bytes(received)

    def _write_received(self, header: dict[str, Any], fd: int) -> None:
        raw = self._receive_raw(int(header["ids"]) * ID_SIZE, fd, "a file's chunk ids")
        node = Node(name="-", kind=FILE, mode=0, mtime_ns=0, size=int(header["size"]))
        node.digest = f"{header['digest']}:"
        node.content = [raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)]
        shown = str(header["shown"])
        try:
            content = _Content(fd, node, shown, self._key.id_key)
        except OSError as exc:
            os.close(fd)
            self._fail(shown, exc)
            return
        self._active[shown] = content
        self._write_into(self._nowhere, content, follow_existing=False)

    def _restore_slice(self, header: dict[str, Any], fd: int) -> None:
        raw = self._receive_raw(int(header["bytes"]), fd, "a slice's entries")
        prefix = str(header["shown"])
        where = _SliceDir(fd, prefix, fresh=bool(header["fresh"]), number=int(header["slice"]))
        if where.fresh:
            self._note_new_file_defaults(where)
        files = decode_tree(raw)
        if any(node.kind != FILE for node in files):
            os.close(fd)
            raise RestoreError("restore helper: a slice held more than files")
        for node in files:
            self._small[f"{prefix}/{node.name}"] = where
        self._restore_files(where, files, prefix)
        where.walked = True
        self._finish_if_done(where)

    def _finish_if_done(self, where: OpenDir) -> None:
        if not isinstance(where, _SliceDir):
            super()._finish_if_done(where)
            return
        if where.walked and not where.pending:
            os.close(where.fd)
            self._report({"slice": where.number, "files": where.files, "written": where.written})

    def _write_part(
        self,
        where: OpenDir,
        large: _LargeFile,
        batch: list[bytes],
        sealed: dict[bytes, memoryview],
    ) -> None:
        self._tell_progress()
        super()._write_part(where, large, batch, sealed)

    def _merge(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is not None:
                self._fail(outcome.shown, outcome.error)
                continue
            where = self._small.pop(outcome.shown, None)
            if where is not None:
                where.files += 1
                where.written += outcome.written
                self._finished += outcome.written
                continue
            content = self._active.pop(outcome.shown, None)
            self._finished += content.written if content is not None else 0
            self._report(
                {"shown": outcome.shown, "written": outcome.written, "digest": outcome.digest}
            )
        self._tell_progress()

    def _fail(self, shown: str, exc: OSError | RPyBackupError) -> None:
        reason = str(exc) if isinstance(exc, RPyBackupError) else (exc.strerror or str(exc))
        report: dict[str, Any] = {"error": reason, "integrity": isinstance(exc, IntegrityError)}
        where = self._small.pop(shown, None)
        if where is not None:
            self._report({"slice": where.number, "failed": shown, **report})
            return
        content = self._active.pop(shown, None)
        self._finished += content.written if content is not None else 0
        self._report({"shown": shown, **report})

    def _tell_progress(self) -> None:
        now = time.monotonic()
        if now - self._told >= _PROGRESS_SECONDS:
            self._told = now
            self._report({})

    def _report(self, report: dict[str, Any]) -> None:
        # Each pool thread counts its own file's bytes; this thread only reads the counts.
        total = self._finished + sum(content.written for content in self._active.values())
        self._sock.send(json.dumps({**report, "total": total}).encode())


class _Content(TempFile):
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
        self.direct = DirectWriter(fd, DIRECT_STAGE_BYTES, DIRECT_DEPTH)

    def finish(self, follow_existing: bool) -> Outcome:
        assert self.direct is not None
        try:
            if self.error is not None:
                raise self.error
            self.direct.close()
        except (OSError, RPyBackupError) as exc:
            self.abort()
            return Outcome(self.shown, error=exc)
        os.close(self.out)
        return Outcome(self.shown, self.written, digest=self.digest.hexdigest())

    def abort(self) -> None:
        """Let the descriptor go; removing the file is the restore's part."""
        if self.direct is not None:
            self.direct.abandon()
        with contextlib.suppress(OSError):
            os.close(self.out)
