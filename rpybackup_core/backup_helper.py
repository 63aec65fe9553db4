"""A second process that reads a backup's large files.

One interpreter backing up a tree reads its large files and its small ones phase after phase:
the small files are bound by the GIL (every system call hands it to a seal or upload thread
and waits to get it back), and while they are read the bulk work of the large ones (FastCDC,
BLAKE3, zstd, AES-GCM, TLS) cannot use the other core. Two processes can.

The backup (archiver.py) walks, decides what to read and reads the small files; each large
file it hands to the helper by path. The helper reads, chunks, identifies, seals and uploads
it over a connection of its own, exactly as the archiver would (it runs an archiver itself),
and reports the file's node and its stat after reading. It reports files only once their
chunks are durable and indexed on the server (a `sync` request, after every 256 MiB and
whenever it has nothing else to do): the backup's own connection can then reference them,
and if the helper stops, the files it had not reported are read by the backup itself. The
helper stays connected until the backup has committed, so what it stored stays pinned.

Two one-way pipes carry the messages (paths one way; the other way, per sync, the reports and
what was uploaded for them, and between syncs how much has been read, for the backup's
progress and so a cancelled backup hears of it), so a closed job pipe ends the helper and the
end of the helper ends the report reader.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .archiver import Archiver
from .crypto import MasterKey
from .errors import RPyBackupError
from .helper_process import start_helper, take_messages
from .progress import Progress
from .remote import RemoteRepository
from .tree import Node

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

# Bytes read and uploaded between two syncs while more files are waiting.
_SYNC_BYTES = 256 * 1024 * 1024
# How often the helper tells how much it has read.
_PROGRESS_SECONDS = 0.2


class FileRead(NamedTuple):
    """The helper's report on one file: its node and its stat after reading, or why not."""

    path: str
    node: Node | None
    before: os.stat_result | None
    after: os.stat_result | None
    error: str = ""


class _Synced(NamedTuple):
    """What the helper made durable in one sync: its files, and the chunks and sealed bytes
    it uploaded for them."""

    reads: list[FileRead]
    chunks: int
    sealed_bytes: int
    bytes_read: int


class _Reading(NamedTuple):
    """How much the helper has read so far (of reported files and those still in hand)."""

    bytes_read: int


class LargeFileReader:
    """The backup's side: starts the helper process, hands it paths, collects its reports.

    Not thread-safe (the archiver's thread calls it); a reader thread takes the helper's
    reports as they come, so neither side can block the other on a full pipe.
    """

    def __init__(self, address: str, fingerprint: str, name: str, token: str, key: MasterKey):
        self.stopped = False
        # Files handed over so far, and what the helper uploaded for those it reported.
        self.files = 0
        self.uploaded_chunks = 0
        self.uploaded_bytes = 0
        # Bytes read so far, and as of the last report (the rest belongs to unreported files).
        self.bytes_read = 0
        self.bytes_reported = 0
        # Imported here, as in helper_process: only a backup with a helper needs it.
        from multiprocessing import Pipe

        jobs, self._jobs = Pipe(duplex=False)
        self._reports, reports = Pipe(duplex=False)
        try:
            self._process = start_helper(
                serve,
                (jobs, reports, (address, fingerprint, name, token), key.to_text()),
                "rpybackup-backup-helper",
            )
        finally:
            jobs.close()
            reports.close()
        self._received: queue.SimpleQueue[_Synced | _Reading | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="backup-helper", daemon=True)
        self._reader.start()

    def read(self, path: str) -> None:
        """Hand a file over (raises OSError if the helper is gone)."""
        self._jobs.send(path)
        self.files += 1

    def reports(self, wait: bool) -> list[FileRead | None]:
        """The reports that arrived, in the order the files were handed over; with ``wait``,
        after at least one message (maybe only news of progress). ``None`` means the helper
        stopped: nothing more will come. Once stopped, nothing."""
        if self.stopped:
            return []
        reports: list[FileRead | None] = []
        for message in take_messages(self._received, wait):
            if message is None:
                self.stopped = True
                # What it read of files it never reported does not count: they are read again.
                self.bytes_read = self.bytes_reported
                reports.append(None)
                break
            self.bytes_read = message.bytes_read
            if isinstance(message, _Synced):
                self.bytes_reported = message.bytes_read
                self.uploaded_chunks += message.chunks
                self.uploaded_bytes += message.sealed_bytes
                reports.extend(message.reads)
        return reports

    def close(self, abandon: bool = False) -> None:
        """End the helper: after the backup committed (until then it pins what it stored),
        or at once when the backup is ``abandon``ed."""
        if abandon:
            self._process.kill()
        self._jobs.close()
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._reader.join()
        self._reports.close()
        log.debug("backup helper: %d large files handed over", self.files)

    def _read(self) -> None:
        """The reader thread: every report, then ``None`` when the helper is gone."""
        try:
            while True:
                self._received.put(self._reports.recv())
        except (EOFError, OSError):
            pass
        finally:
            self._received.put(None)


# ---- the helper process ---------------------------------------------------------------------


def serve(
    jobs: Connection, reports: Connection, connect: tuple[str, str, str, str], key_text: str
) -> None:
    """The helper process: read each file handed over until the backup closes the pipe."""
    try:
        with RemoteRepository.connect(*connect) as remote:
            key = MasterKey.from_text(key_text)
            archiver = Archiver(remote, key, None, [], _progress_sender(reports))
            try:
                _serve(archiver, remote, jobs, reports)
            finally:
                archiver.close()
    except (OSError, RPyBackupError) as exc:
        log.info("backup helper: %s", exc)
    finally:
        jobs.close()
        reports.close()


def _serve(
    archiver: Archiver, remote: RemoteRepository, jobs: Connection, reports: Connection
) -> None:
    done: list[FileRead] = []
    unsynced = 0
    chunks = sealed_bytes = 0
    while True:
        if done and (unsynced >= _SYNC_BYTES or not jobs.poll()):
            archiver.uploader.finish()
            remote.sync()
            uploaded = archiver.uploader.uploaded_chunks, archiver.progress.uploaded_bytes
            bytes_read = archiver.progress.bytes_done
            reports.send(
                _Synced(done, uploaded[0] - chunks, uploaded[1] - sealed_bytes, bytes_read)
            )
            (chunks, sealed_bytes), done, unsynced = uploaded, [], 0
        try:
            path = jobs.recv()
        except EOFError:
            return
        try:
            node, before, after = archiver.read_content(path)
        except OSError as exc:
            done.append(FileRead(path, None, None, None, exc.strerror or str(exc)))
            continue
        done.append(FileRead(path, node, before, after))
        unsynced += node.size


def _progress_sender(reports: Connection) -> Callable[[Progress], None]:
    """The helper's progress callback: how much it has read, a few times a second."""
    last = 0.0

    def send(progress: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= _PROGRESS_SECONDS:
            last = now
            reports.send(_Reading(progress.bytes_done))

    return send
