"""The upload pipeline of a backup run: deduplicate, ask, seal on worker threads, send.

    archiver --items--> upload thread: add() -> batch --ask_has--> asked --answer-->
        seal jobs (threads) --> put

The archiver's thread only reads, chunks and identifies: it hands chunks over in messages of
about a MiB (and asks, out of line, which ids of unchanged files the server lacks), and the
upload thread owns the connection for the whole run (TLS encryption and every wait for the
server happen there, in parallel with the reading). One thread on each socket: OpenSSL does
not allow a read and a write on one connection at once.

Nothing here waits for the server while there is other work to do: a batch's has-question is
answered while the next batch is read, and its seal jobs run on a small thread pool (zstd,
AES-GCM and BLAKE3 release the GIL) while the upload thread goes on. The server answers in
request order, so one connection carries all of it. Every id is asked about at most once per
run, and an id is counted as stored from the moment it joins a batch. No references are sent:
a has-request marked ``reference`` counts what it finds as referenced by the snapshot, and the
server counts every chunk the session puts.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .crypto import SEAL_OVERHEAD, MasterKey, Sealer
from .memory import keep_chunk_buffers, share_malloc_arena
from .progress import Progress
from .protocol import RECORD, Blob, record_parts
from .remote import RemoteRepository

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Call:
    """Run ``action`` on the upload thread after everything before it; ``done`` gets its result."""

    action: Callable[..., Any]
    args: tuple[Any, ...]
    done: Future[Any]


@dataclass(frozen=True)
class _Check:
    """Ask which of ``ids`` the server lacks; ``done`` gets the answer when it is read."""

    ids: list[bytes]
    done: Future[set[bytes]]
    # Whether the ids found join those the run remembers as stored (``RecentIds``).
    remember: bool = True


_Message = list[tuple[bytes, bytes]] | _Call | _Check

# Items go to the upload thread in messages of about this much data; about one message's worth
# waits in line while the thread works on another (four waiting cost 11 MiB of peak RSS for no
# speed). Small messages (has-checks, trees) never wait behind that bound.
_MESSAGE_BYTES = 1024 * 1024
_MESSAGE_ITEMS = 1024
_INBOX_BYTES = 1024 * 1024
# Has-checks of unchanged files on the wire before the oldest answer is read.
_CHECKS_IN_FLIGHT = 32
# The unchanged files of consecutive directories are confirmed in one check of up to this
# many ids or callers: a request per directory cost ~40 us of the walk on deep trees.
_CHECK_IDS = 1024
_CHECK_CALLS = 16


class _Inbox:
    """A FIFO bounded by the bytes of chunk data it holds, not by its length."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: deque[tuple[_Message | None, int]] = deque()
        self._bytes = 0
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)

    def put(self, message: _Message | None, size: int = 0) -> None:
        with self._not_full:
            while size and self._bytes >= self._limit:
                self._not_full.wait()
            self._messages.append((message, size))
            self._bytes += size
            self._not_empty.notify()

    def get(self) -> _Message | None:
        with self._not_empty:
            while not self._messages:
                self._not_empty.wait()
            message, size = self._messages.popleft()
            self._bytes -= size
            if size:
                self._not_full.notify()
            return message

    def empty(self) -> bool:
        return not self._messages


# Chunk ids remembered as stored or sent: between this many and twice as many.
RECENT_IDS = 32768


class RecentIds:
    """The chunk ids a run has seen stored or sent, the most recent ones only: forgetting an
    older one costs no more than asking the server about it again (it answers for what this
    session put), and a run of millions of chunks must not hold them all (~100 bytes each)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._young: set[bytes] = set()
        self._old: set[bytes] = set()

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self._young or chunk_id in self._old

    def add(self, chunk_id: bytes) -> None:
        self._young.add(chunk_id)
        if len(self._young) >= self._limit:
            self._old, self._young = self._young, set()


BATCH_BYTES = 2 * 1024 * 1024
BATCH_CHUNKS = 1024
_ASKED_DEPTH = 1
# A seal job is a run of chunks worth sealing on one thread in one go: small chunks are grouped
# so the per-job overhead stays small next to the work.
_JOB_BYTES = 1024 * 1024
# Small chunks' records are sealed side by side into a buffer of this size that each sealing
# thread keeps, and sent a run at a time. As a blob, a header and a join each they cost first
# backups ~2 % more CPU, up to 9 % while this VM was slow (docs/performance.md, finding 90):
# the objects, the copies, and a write that lets the GIL go every 64 KiB instead of 256.
RUN_BYTES = 256 * 1024


@dataclass(frozen=True)
class SealedJob:
    """A put payload ready to send (its parts, blobs not copied together), and what it holds."""

    parts: list[Blob]
    chunks: int
    sealed_bytes: int


def seal_records(sealer: Sealer, runs: memoryview, job: list[tuple[bytes, bytes]]) -> SealedJob:
    """A put payload of the job's records. Records of small chunks are sealed into ``runs``,
    a buffer the caller keeps, and go out a run at a time (a copy of it); a chunk that does not
    fit there is a part of its own, its blob not copied."""
    parts: list[Blob] = []
    end = sealed_bytes = 0
    for chunk_id, plain in job:
        room = RECORD.size + SEAL_OVERHEAD + len(plain)
        if end + room > len(runs) and end:
            parts.append(bytes(runs[:end]))
            end = 0
        if room > len(runs):
            sealed = sealer.seal(chunk_id, plain)
            parts += record_parts([(chunk_id, sealed)])
            sealed_bytes += len(sealed)
            continue
        length = sealer.seal_into(chunk_id, plain, runs[end + RECORD.size :])
        RECORD.pack_into(runs, end, chunk_id, length)
        end += RECORD.size + length
        sealed_bytes += length
    if end:
        parts.append(bytes(runs[:end]))
    return SealedJob(parts, len(job), sealed_bytes)


def seal_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ChunkUploader:
    """The archiver's end of the upload: not thread-safe, call it from one thread.

    Chunks are queued in order and sent to the upload thread in messages;
    ``finish`` waits for it, ``ask_missing`` answers later. A failure on the upload thread is
    raised by the next call here.
    """

    def __init__(
        self,
        remote: RemoteRepository,
        key: MasterKey,
        progress: Progress,
        workers: int | None = None,
    ) -> None:
        self._pipeline = UploadPipeline(remote, key, progress, workers)
        self._inbox = _Inbox(_INBOX_BYTES)
        self._items: list[tuple[bytes, bytes]] = []
        self._items_bytes = 0
        self._check: _Check | None = None
        self._check_calls = 0
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="upload", daemon=True)
        self._thread.start()

    @property
    def uploaded_chunks(self) -> int:
        return self._pipeline.uploaded_chunks

    def add(self, chunk_id: bytes, data: bytes | memoryview) -> None:
        """Store a chunk unless the server has it; references it for the snapshot as well."""
        self._items.append((chunk_id, data if isinstance(data, bytes) else bytes(data)))
        self._items_bytes += len(data)
        if self._items_bytes >= _MESSAGE_BYTES or len(self._items) >= _MESSAGE_ITEMS:
            self._post_items()

    def ask_missing(self, ids: list[bytes]) -> Future[set[bytes]]:
        """Which of these ids the server lacks (see ``UploadPipeline.check``); answered while
        later work goes on. The question is gathered with the next few callers' into one
        (the answer may hold their ids too) and sent when full or by ``send_checks``, which
        must come before waiting for the answer."""
        if self._check is None:
            self._check = _Check([], Future())
        self._check.ids.extend(ids)
        self._check_calls += 1
        done = self._check.done
        if len(self._check.ids) >= _CHECK_IDS or self._check_calls >= _CHECK_CALLS:
            self.send_checks()
        return done

    def confirm(self, ids: list[bytes]) -> Future[set[bytes]]:
        """``ask_missing`` for ids another process of the backup stored: asked on their own
        and not remembered as stored here, where they would push out this run's own ids (a
        first backup's helper sends some 20,000 of /usr/share's)."""
        self.send_checks()
        done: Future[set[bytes]] = Future()
        self._post_items()
        self._inbox.put(_Check(ids, done, remember=False))
        return done

    def send_checks(self) -> None:
        """Send the question being gathered, after everything queued before it."""
        if self._check is not None:
            self._post_items()
            self._inbox.put(self._check)
            self._check, self._check_calls = None, 0

    def finish(self) -> None:
        """Send everything queued and wait for the server."""
        self.send_checks()
        self._ask(self._pipeline.finish).result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join()
        self._pipeline.close()

    def _post_items(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._items:
            self._inbox.put(self._items, self._items_bytes)
            self._items, self._items_bytes = [], 0

    def _ask(self, action: Callable[..., _T], *args: Any) -> Future[_T]:
        self._post_items()
        done: Future[_T] = Future()
        self._inbox.put(_Call(action, args, done))
        return done

    def _serve(self) -> None:
        """The upload thread: messages in order until told to stop; after a failure it keeps
        taking (and dropping) messages, so the archiver never blocks on a full inbox. With
        nothing to do it reads the answers to has-checks (the archiver may be waiting)."""
        while True:
            while self._failure is None and self._inbox.empty() and self._pipeline.checking:
                self._guarded(self._pipeline.collect_check)
            message = self._inbox.get()
            if message is None:
                break
            if self._failure is not None:
                if not isinstance(message, list):
                    message.done.set_exception(self._failure)
            elif isinstance(message, list):
                self._guarded(self._take, message)
            elif isinstance(message, _Check):
                self._guarded(self._pipeline.check, message.ids, message.done, message.remember)
            else:
                try:
                    message.done.set_result(message.action(*message.args))
                except BaseException as exc:
                    message.done.set_exception(exc)
                    self._fail(exc)

    def _guarded(self, action: Callable[..., object], *args: Any) -> None:
        try:
            action(*args)
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """From now on every call and check fails with ``exc``, those waiting included."""
        self._failure = exc
        self._pipeline.fail_checks(exc)

    def _take(self, items: list[tuple[bytes, bytes]]) -> None:
        for chunk_id, data in items:
            self._pipeline.add(chunk_id, data)


class UploadPipeline:
    """Not thread-safe: driven from the upload thread; sealing happens on its own pool."""

    def __init__(
        self,
        remote: RemoteRepository,
        key: MasterKey,
        progress: Progress,
        workers: int | None = None,
    ) -> None:
        self.remote = remote
        self.progress = progress
        self._key = key
        self._local = threading.local()
        self._workers = workers or seal_workers()
        share_malloc_arena()
        keep_chunk_buffers()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="seal")
        self.on_server = RecentIds(RECENT_IDS)
        self.uploaded_chunks = 0
        self._batch: dict[bytes, bytes] = {}
        self._batch_bytes = 0
        self._asked: deque[tuple[int, list[bytes], dict[bytes, bytes]]] = deque()
        self._sealing: deque[Future[SealedJob]] = deque()
        # Checks on the wire: (request id, ids) per batch, who waits, whether to remember.
        self._checks: deque[tuple[list[tuple[int, list[bytes]]], Future[set[bytes]], bool]] = (
            deque()
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ---- what the archiver calls ------------------------------------------------------------

    def add(self, chunk_id: bytes, data: bytes | memoryview) -> None:
        """Store a chunk unless it is known to be on the server; ``data`` is copied if kept.

        The snapshot references it either way: the has-request that finds it stored says so,
        and the server counts every chunk this session puts."""
        if chunk_id not in self.on_server:
            self.on_server.add(chunk_id)
            self._batch[chunk_id] = bytes(data)
            self._batch_bytes += len(data)
            if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_CHUNKS:
                self._ask()

    def check(self, ids: list[bytes], done: Future[set[bytes]], remember: bool = True) -> None:
        """Ask which of these ids (believed stored) the server lacks, without waiting; ``done``
        gets those ids once the answer is read (``collect_check``). The rest count as
        referenced by the snapshot and, if ``remember``, as stored.

        The ids found are referenced in the same request, so unchanged files cost the server
        one lookup, not two, and the archiver sends no references for them.
        """
        unknown = [i for i in dict.fromkeys(ids) if i not in self.on_server]
        asked = []
        try:
            for start in range(0, len(unknown), BATCH_CHUNKS * 16):
                batch = unknown[start : start + BATCH_CHUNKS * 16]
                asked.append((self.remote.ask_has(batch, reference=True), batch))
        except BaseException as exc:
            done.set_exception(exc)
            raise
        self._checks.append((asked, done, remember))
        while len(self._checks) > _CHECKS_IN_FLIGHT:
            self.collect_check()

    @property
    def checking(self) -> bool:
        return bool(self._checks)

    def collect_check(self) -> None:
        """Read the answer to the oldest check and hand it over."""
        asked, done, remember = self._checks.popleft()
        missing: set[bytes] = set()
        try:
            for request_id, batch in asked:
                answer = self.remote.has_answer(request_id, len(batch))
                for chunk_id, present in zip(batch, answer, strict=True):
                    if not present:
                        missing.add(chunk_id)
                    elif remember:
                        self.on_server.add(chunk_id)
        except BaseException as exc:
            done.set_exception(exc)
            raise
        done.set_result(missing)

    def fail_checks(self, exc: BaseException) -> None:
        while self._checks:
            self._checks.popleft()[1].set_exception(exc)

    def finish(self) -> None:
        """Send everything still queued; then wait for the server."""
        while self._checks:
            self.collect_check()
        self._drain()
        self.remote.flush()

    # ---- the pipeline -----------------------------------------------------------------------

    def _ask(self) -> None:
        if self._batch:
            ids = list(self._batch)
            self._asked.append((self.remote.ask_has(ids, reference=True), ids, self._batch))
            self._batch = {}
            self._batch_bytes = 0
        while len(self._asked) > _ASKED_DEPTH:
            self._seal_oldest()

    def _seal_oldest(self) -> None:
        request_id, ids, data = self._asked.popleft()
        present = self.remote.has_answer(request_id, len(ids))
        job: list[tuple[bytes, bytes]] = []
        job_bytes = 0
        for chunk_id, is_present in zip(ids, present, strict=True):
            if is_present:
                continue
            job.append((chunk_id, data[chunk_id]))
            job_bytes += len(data[chunk_id])
            if job_bytes >= _JOB_BYTES:
                self._sealing.append(self._pool.submit(self._seal_job, job))
                job, job_bytes = [], 0
        if job:
            self._sealing.append(self._pool.submit(self._seal_job, job))
        while len(self._sealing) > self._workers:
            self._send_oldest()

    def _seal_job(self, job: list[tuple[bytes, bytes]]) -> SealedJob:
        """Runs on a pool thread: seal and frame, so the main thread only sends."""
        sealer = getattr(self._local, "sealer", None)
        if sealer is None:
            sealer = self._local.sealer = Sealer(self._key)
            self._local.runs = memoryview(bytearray(RUN_BYTES))
        return seal_records(sealer, self._local.runs, job)

    def _send_oldest(self) -> None:
        job = self._sealing.popleft().result()
        self.remote.put_parts(job.parts)
        self.uploaded_chunks += job.chunks
        self.progress.uploaded_bytes += job.sealed_bytes

    def _drain(self) -> None:
        self._ask()
        while self._asked:
            self._seal_oldest()
        while self._sealing:
            self._send_oldest()
