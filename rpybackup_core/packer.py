"""One upload session's pack writing, on a thread of its own.

The connection thread checks each put and hands the new records over; this thread hashes them
(the storage hash the pack trailer and the index keep) and appends them to the open pack.
Meanwhile the connection thread goes back to the socket (TLS decryption, the next request): on
two cores the two overlap. A full pack is made durable and indexed on a third thread, the
committer, while the writer goes on with the next pack: the fsync had stalled the writer, and
behind the writer's queue bound the connection thread and the client's pipeline
(docs/performance.md, finding 101).

Results come back in submission order as the row ids of each pack committed. After a storage
failure the jobs already queued are skipped and the failure is raised once, to the connection
thread, which then counts every chunk not yet indexed as lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .crypto import storage_hash
from .errors import StorageError
from .pack import PackWriter
from .repository import Repository

# A new blob: its chunk id and its sealed bytes.
Record = tuple[bytes, memoryview]
# A full pack's commit on the committer thread (the row ids of its chunks once indexed), and
# how many entries the pack holds.
_Commit = tuple[Future[dict[bytes, int]], int]
# What the connection thread may hand over before it waits for the writer: with the client's
# puts in flight, enough to cover the fsync of a full pack; small enough that many sessions at
# once stay bounded (see protocol._KEPT_BYTES).
MAX_QUEUED_BYTES = 4 * 1024 * 1024
MAX_QUEUED_RECORDS = 4096
# Entries of full packs waiting for their commit while the writer fills the next one: their
# bytes are on disk, but their entries in memory (a flood of tiny chunks fills a pack with
# MAX_PACK_ENTRIES of them); beyond this the connection thread waits.
_COMMITTING_ENTRIES = 4096


class Packer:
    """Owned by one session's connection thread; the open pack belongs to the writer thread."""

    def __init__(
        self,
        repo: Repository,
        client_id: int,
        pin_key: str,
        pack_size: int,
        max_entries: int,
    ) -> None:
        self._repo = repo
        self._client_id = client_id
        self._pin_key = pin_key
        self._pack_size = pack_size
        self._max_entries = max_entries
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="packer")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="pack-commit")
        # Each write's future gives the commits of the packs it filled, in order.
        self._jobs: deque[tuple[Future[list[_Commit]], int, int]] = deque()
        self._pack: PackWriter | None = None
        # A write or commit failed: queued writes are skipped. A commit failed: so are the
        # commits queued behind it.
        self._broken = False
        self._commit_failed = False

    def submit(self, records: Sequence[Record]) -> list[dict[bytes, int]]:
        """Queue records for the open pack; returns the packs committed since the last call.

        Waits while more than the queue bounds wait to be written or committed. Raises the
        StorageError of a failed write or commit once, after which nothing not yet returned
        was stored.
        """
        size = sum(len(sealed) for _, sealed in records)
        self._jobs.append((self._pool.submit(self._write, records), size, len(records)))
        committed: list[dict[bytes, int]] = []
        while self._jobs and (_settled(self._jobs[0][0]) or self._backlogged()):
            committed.extend(self._take_oldest())
        return committed

    def drain(self, seal: bool) -> list[dict[bytes, int]]:
        """Wait for every queued write; with ``seal`` also commit the open pack."""
        committed: list[dict[bytes, int]] = []
        if seal:
            self._jobs.append((self._pool.submit(self._seal), 0, 0))
        while self._jobs:
            committed.extend(self._take_oldest())
        return committed

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._committer.shutdown(wait=True)

    def _backlogged(self) -> bool:
        """Whether the records not yet written, or the full packs not yet committed, are over
        their bounds."""
        unwritten_bytes = unwritten_records = committing = 0
        for future, size, count in self._jobs:
            if not future.done():
                unwritten_bytes += size
                unwritten_records += count
            elif future.exception() is None:
                committing += sum(
                    entries for commit, entries in future.result() if not commit.done()
                )
        return (
            unwritten_bytes > MAX_QUEUED_BYTES
            or unwritten_records > MAX_QUEUED_RECORDS
            or committing > _COMMITTING_ENTRIES
        )

    def _take_oldest(self) -> list[dict[bytes, int]]:
        future = self._jobs.popleft()[0]
        commits: list[_Commit] = []
        try:
            commits = future.result()
            return [commit.result() for commit, _ in commits]
        except StorageError:
            for commit, _ in commits:
                commit.exception()
            self._skip_queued()
            raise

    def _skip_queued(self) -> None:
        """After a failure the jobs behind it were skipped; once they are done, and the open
        pack they may have started is discarded, the writer may start afresh."""
        while self._jobs:
            future = self._jobs.popleft()[0]
            if future.exception() is None:
                for commit, _ in future.result():
                    commit.exception()
        self._pool.submit(self._discard_open_pack).result()
        self._broken = self._commit_failed = False

    # ---- the writer thread ------------------------------------------------------------------

    def _write(self, records: Sequence[Record]) -> list[_Commit]:
        if self._broken:
            self._discard_open_pack()
            return []
        committed = []
        try:
            start = 0
            while start < len(records):
                if self._pack is None:
                    self._pack = self._repo.new_pack()
                end = self._fitting(records, start)
                self._pack.append_many(
                    [
                        (chunk_id, storage_hash(sealed), sealed)
                        for chunk_id, sealed in records[start:end]
                    ]
                )
                start = end
                if self._full():
                    committed.append(self._commit())
        except StorageError:
            self._fail()
            raise
        return committed

    def _fitting(self, records: Sequence[Record], start: int) -> int:
        """Where the run of records from ``start`` that the open pack takes ends: up to and
        including the one that fills it."""
        assert self._pack is not None
        size = self._pack.size
        room = self._max_entries - len(self._pack.entries)
        end = start
        while end < len(records) and end - start < room and size < self._pack_size:
            size += len(records[end][1])
            end += 1
        return end

    def _full(self) -> bool:
        assert self._pack is not None
        return self._pack.size >= self._pack_size or len(self._pack.entries) >= self._max_entries

    def _seal(self) -> list[_Commit]:
        if self._broken:
            self._discard_open_pack()
            return []
        if self._pack is None:
            return []
        if not self._pack.entries:
            self._pack.abort()
            self._pack = None
            return []
        try:
            return [self._commit()]
        except StorageError:
            self._fail()
            raise

    def _commit(self) -> _Commit:
        """Hand the full pack to the committer thread; the writer starts a new one."""
        assert self._pack is not None
        pack, self._pack = self._pack, None
        return self._committer.submit(self._commit_pack, pack), len(pack.entries)

    def _fail(self) -> None:
        """After a write failure the open pack cannot be trusted: discard it."""
        self._broken = True
        self._discard_open_pack()

    def _discard_open_pack(self) -> None:
        if self._pack is not None:
            self._pack.abort()
            self._pack = None

    # ---- the committer thread ---------------------------------------------------------------

    def _commit_pack(self, pack: PackWriter) -> dict[bytes, int]:
        """Make a full pack durable and index it, in the order the writer filled them. After a
        failure here, the packs and writes queued behind it are skipped."""
        if self._commit_failed:
            pack.abort()
            raise StorageError("an earlier pack of this session could not be stored")
        try:
            return self._repo.commit_pack(self._client_id, pack, self._pin_key)
        except StorageError:
            self._commit_failed = self._broken = True
            raise


def _settled(future: Future[list[_Commit]]) -> bool:
    """Whether a write is done, and so are the commits of the packs it filled."""
    if not future.done():
        return False
    return future.exception() is not None or all(commit.done() for commit, _ in future.result())
