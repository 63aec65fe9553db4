"""A second process that reads a backup's large files and, in a first backup, some of its
small files and directories.

One interpreter backing up a tree reads its large files and its small ones phase after phase:
the small files are bound by the GIL (every system call hands it to a seal or upload thread
and waits to get it back), and while they are read the bulk work of the large ones (FastCDC,
BLAKE3, zstd, AES-GCM, TLS) cannot use the other core. Two processes can.

The backup (archiver.py) walks, decides what to read and reads the small files; each large
file it hands to the helper by path. The helper reads, chunks, identifies, seals and uploads
it over a connection of its own, exactly as the archiver would (it runs an archiver itself),
and reports the file's node and its stat after reading. In a first backup (nothing to look up
in the files cache) it also takes runs of a directory's entries (small files, directories
without subdirectories) by the directory's path and their names: it backs them up as the
archiver would (a directory whole, to its stored tree) and reports their nodes, and with each
sync the files-cache rows of the files it read and every chunk id those entries refer to,
which the backup's own connection references for the snapshot. It reports only once what it
reports on is durable and indexed on the server (a `sync` request, after every 256 MiB or
1,024 files and whenever it has nothing else to do; it tells of each job it finishes before
that, so the backup can hand it more): the backup's own connection can then reference it,
and if the helper stops, what it had not reported is read by the backup itself. The helper
stays connected until the backup has committed, so what it stored stays pinned. Its
connection follows the backup's (`follow`): a chunk either has sent counts as present for the
other, so a copy of a file the other just read is not put twice (the server makes the
backup's commit wait until the helper has indexed what the backup counted on).

Two one-way pipes carry the messages (first the backup's excludes and link, then paths one
way; the other way, per sync, the reports, the rows and ids and what was uploaded for them,
and between syncs each finished job and how much has been read, for the backup's progress and
so a cancelled backup hears of it), so a closed job pipe ends the helper and the end of the
helper ends the report reader.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .archiver import Archiver, EntriesRead, FileRead
from .crypto import MasterKey
from .errors import RPyBackupError
from .files_cache import DirectoryRow, file_row
from .helper_process import start_helper, take_messages
from .progress import Progress
from .remote import RemoteRepository

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

# Bytes read and uploaded, and files read in runs of entries, between two syncs while more work
# is waiting: the backup's directories wait for the reports that a sync sends, but it hands
# more work as jobs finish. A sync cost the helper ~0.1 s (the pipeline drained, a pack sealed
# and fsynced on the server): every 512 files it took 3.6 s of its 8.8 on /usr/share. Every
# 2,048 files the backup's peak grew by the runs waiting for reports (95-102 against 94-97
# MiB here).
_SYNC_BYTES = 256 * 1024 * 1024
_SYNC_FILES = 1024
# With nothing to do for this long it syncs (the backup may be waiting for its reports); a
# backup that hands over its next run a moment later costs no sync.
_IDLE_SECONDS = 0.02
# How often the helper tells how much it has read.
_PROGRESS_SECONDS = 0.2


class _Synced(NamedTuple):
    """What the helper made durable in one sync: its reports, the files-cache rows of the
    files it read and the directories it stored in runs, the chunk ids those runs refer to,
    and the chunks and sealed bytes it uploaded."""

    reads: list[FileRead | EntriesRead]
    rows: list[tuple[object, ...]]
    directories: list[DirectoryRow]
    references: list[bytes]
    chunks: int
    sealed_bytes: int
    bytes_read: int


class _Setup(NamedTuple):
    """The backup's exclude patterns, for the entries the helper walks, and its connection's
    link, so a copy of what the backup has sent is not sent again."""

    excludes: list[str]
    link: str


class _Reading(NamedTuple):
    """How much the helper has read so far (of reported files and those still in hand), and
    how many jobs it has finished (reported or not)."""

    bytes_read: int
    jobs_done: int


class BackupHelper:
    """The backup's side: starts the helper process, hands it paths, collects its reports.

    Not thread-safe (the archiver's thread calls it); a reader thread takes the helper's
    reports as they come, so neither side can block the other on a full pipe.
    """

    def __init__(self, address: str, fingerprint: str, name: str, token: str, key: MasterKey):
        self.stopped = False
        # Large files and runs of entries handed over so far, the files read in those runs as
        # reported, and what the helper uploaded for what it reported.
        self.files = 0
        self.runs = 0
        self.run_files = 0
        self.uploaded_chunks = 0
        self.uploaded_bytes = 0
        # Bytes read so far, and as of the last report (the rest belongs to unreported files).
        self.bytes_read = 0
        self.bytes_reported = 0
        # Jobs the helper has finished, and jobs it has reported on (those synced).
        self.jobs_done = 0
        self.jobs_reported = 0
        # Imported here, as in helper_process: only a backup with a helper needs it.
        from multiprocessing import Pipe

        jobs, self._jobs = Pipe(duplex=False)
        self._reports, reports = Pipe(duplex=False)
        try:
            self._process = start_helper(
                serve,
                [jobs.fileno(), reports.fileno()],
                {"connect": [address, fingerprint, name, token], "key": key.to_text()},
                "rpybackup-backup-helper",
            )
        finally:
            jobs.close()
            reports.close()
        self._received: queue.SimpleQueue[_Synced | _Reading | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="backup-helper", daemon=True)
        self._reader.start()
        # What the reports so far brought besides themselves, until the backup takes it.
        self.rows: list[tuple[object, ...]] = []
        self.directories: list[DirectoryRow] = []
        self.references: list[bytes] = []

    def setup(self, excludes: list[str], link: str) -> None:
        """Before any job: skip what the backup skips in the directories it hands over, and
        follow the backup's connection by its ``link`` (raises OSError if the helper is
        gone)."""
        self._jobs.send(_Setup(excludes, link))

    def read(self, path: str) -> None:
        """Hand a file over (raises OSError if the helper is gone)."""
        self._jobs.send((path, None))
        self.files += 1

    def back_up(self, prefix: str, names: list[str]) -> None:
        """Hand over entries of the directory ``prefix`` (ending in "/"), to be backed up
        (raises OSError if the helper is gone)."""
        self._jobs.send((prefix, names))
        self.runs += 1

    def has_news(self) -> bool:
        """Whether a message has arrived that ``reports`` would take."""
        return not self.stopped and not self._received.empty()

    def reports(self, wait: bool) -> list[FileRead | EntriesRead | None]:
        """The reports that arrived, in the order the paths were handed over; with ``wait``,
        after at least one message (maybe only news of progress). ``None`` means the helper
        stopped: nothing more will come. Once stopped, nothing. The rows and references that
        came with them are added to ``rows`` and ``references``."""
        if self.stopped:
            return []
        reports: list[FileRead | EntriesRead | None] = []
        for message in take_messages(self._received, wait):
            if message is None:
                self.stopped = True
                # What it read of files it never reported does not count: they are read again.
                self.bytes_read = self.bytes_reported
                self.jobs_done = self.jobs_reported
                reports.append(None)
                break
            self.bytes_read = message.bytes_read
            if isinstance(message, _Reading):
                self.jobs_done = message.jobs_done
            else:
                self.jobs_reported += len(message.reads)
                self.bytes_reported = message.bytes_read
                self.uploaded_chunks += message.chunks
                self.uploaded_bytes += message.sealed_bytes
                self.rows.extend(message.rows)
                self.directories.extend(message.directories)
                self.references.extend(message.references)
                self.run_files += sum(r.files for r in message.reads if isinstance(r, EntriesRead))
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
        log.debug(
            "backup helper: %d large files and %d runs of entries (%d files) handed over",
            self.files,
            self.runs,
            self.run_files,
        )

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


def serve(fds: list[int], args: dict[str, Any]) -> None:
    """The helper process: read each file and back up each directory handed over on the pipe
    ``fds[0]``, reporting on the pipe ``fds[1]``, until the backup closes the first."""
    from multiprocessing.connection import Connection

    jobs, reports = Connection(fds[0], writable=False), Connection(fds[1], readable=False)
    warnings = _Captured()
    archiver_log = logging.getLogger(Archiver.__module__)
    archiver_log.addHandler(warnings)
    # The backup logs them when it takes the report, where its logging goes.
    archiver_log.propagate = False
    try:
        address, fingerprint, name, token = (str(part) for part in args["connect"])
        with RemoteRepository.connect(address, fingerprint, name, token) as remote:
            key = MasterKey.from_text(str(args["key"]))
            staged = _Staged()
            notes = _Notes(reports)
            archiver = Archiver(
                remote,
                key,
                None,
                [],
                notes.send_progress,
                stage=staged.file,
                stage_directory=staged.directory,
            )
            archiver.references = []
            try:
                _serve(archiver, remote, jobs, reports, notes, staged, warnings)
            finally:
                archiver.close()
    except (OSError, RPyBackupError) as exc:
        log.info("backup helper: %s", exc)
    finally:
        jobs.close()
        reports.close()


def _serve(
    archiver: Archiver,
    remote: RemoteRepository,
    jobs: Connection,
    reports: Connection,
    notes: _Notes,
    staged: _Staged,
    warnings: _Captured,
) -> None:
    done: list[FileRead | EntriesRead] = []
    synced_bytes = synced_files = 0
    chunks = sealed_bytes = 0
    progress = archiver.progress
    while True:
        if done and (
            progress.bytes_done - synced_bytes >= _SYNC_BYTES
            or progress.files_done - synced_files >= _SYNC_FILES
            or not jobs.poll(_IDLE_SECONDS)
        ):
            archiver.uploader.finish()
            remote.sync()
            uploaded = archiver.uploader.uploaded_chunks, progress.uploaded_bytes
            assert archiver.references is not None
            reports.send(
                _Synced(
                    done,
                    staged.files,
                    staged.directories,
                    archiver.references,
                    uploaded[0] - chunks,
                    uploaded[1] - sealed_bytes,
                    progress.bytes_done,
                )
            )
            (chunks, sealed_bytes), done = uploaded, []
            synced_bytes, synced_files = progress.bytes_done, progress.files_done
            staged.files, staged.directories = [], []
            archiver.references = []
        try:
            job = jobs.recv()
        except EOFError:
            return
        if isinstance(job, _Setup):
            archiver.exclude(job.excludes)
            # The first message: the upload thread has nothing to send yet.
            remote.follow(job.link)
            continue
        path, names = job
        if names is None:
            done.append(_read(archiver, path))
        else:
            done.append(_back_up(archiver, path, names, warnings))
        notes.finished(progress)


def _read(archiver: Archiver, path: str) -> FileRead:
    # The backup references a file's chunk ids from its node.
    references, archiver.references = archiver.references, None
    try:
        node, before, after = archiver.read_content(path)
    except OSError as exc:
        return FileRead(path, None, None, None, exc.strerror or str(exc))
    finally:
        archiver.references = references
    return FileRead(path, node, before, after)


def _back_up(archiver: Archiver, prefix: str, names: list[str], warnings: _Captured) -> EntriesRead:
    progress = archiver.progress
    files, dirs = progress.files_done, archiver.dirs
    nodes = archiver.back_up_here(prefix, names)
    errors, progress.errors = progress.errors, []
    logged, warnings.messages = warnings.messages, []
    return EntriesRead(
        prefix, nodes, progress.files_done - files, archiver.dirs - dirs, errors, logged
    )


class _Captured(logging.Handler):
    """The helper archiver's warnings, kept for the report on the entries they are about."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class _Staged:
    """What the helper's archiver would have the files cache remember of the files it read
    and the directories it stored: sent to the backup with the sync that made their chunks
    durable."""

    files: list[tuple[object, ...]] = field(default_factory=list)
    directories: list[DirectoryRow] = field(default_factory=list)

    def file(self, path: str, st: os.stat_result, digest: str, ids: list[bytes]) -> None:
        row = file_row(path, st, digest, ids)
        if row is not None:
            self.files.append(row)

    def directory(self, row: DirectoryRow) -> None:
        # Not the list's own append: each sync sends the lists and starts new ones.
        self.directories.append(row)


class _Notes:
    """What the helper tells between syncs: how much it has read, a few times a second (the
    backup's progress), and each job it finishes (the backup hands more once it has room)."""

    def __init__(self, reports: Connection) -> None:
        self._reports = reports
        self._jobs_done = 0
        self._sent = 0.0

    def send_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._sent >= _PROGRESS_SECONDS:
            self._sent = now
            self._reports.send(_Reading(progress.bytes_done, self._jobs_done))

    def finished(self, progress: Progress) -> None:
        self._jobs_done += 1
        self._sent = time.monotonic()
        self._reports.send(_Reading(progress.bytes_done, self._jobs_done))
