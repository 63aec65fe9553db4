"""One upload session's pack writing, on a thread of its own.

The connection thread checks each put and hands the new records over; this thread hashes them
(the storage hash the pack trailer and the index keep), appends them to the open pack and, when
the pack is full, makes it durable and indexes it. Meanwhile the connection thread goes back to
the socket (TLS decryption, the next request): on two cores the two overlap, and the fsync of a
full pack no longer stalls the client's pipeline.

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
# What the connection thread may hand over before it waits for the writer: with the client's
# puts in flight, enough to cover the fsync of a full pack; small enough that many sessions at
# once stay bounded (see protocol._KEPT_BYTES).
MAX_QUEUED_BYTES = 4 * 1024 * 1024
MAX_QUEUED_RECORDS = 4096


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
        self._jobs: deque[tuple[Future[list[dict[bytes, int]]], int, int]] = deque()
        self._queued_bytes = 0
        self._queued_records = 0
        self._pack: PackWriter | None = None
        self._broken = False

    def submit(self, records: Sequence[Record]) -> list[dict[bytes, int]]:
        """Queue records for the open pack; returns the packs committed since the last call.

        Waits while more than the queue bound is in flight. Raises the StorageError of a
        failed write once, after which nothing not yet returned was stored.
        """
        size = sum(len(sealed) for _, sealed in records)
        self._jobs.append((self._pool.submit(self._write, records), size, len(records)))
        self._queued_bytes += size
        self._queued_records += len(records)
        committed: list[dict[bytes, int]] = []
        while self._jobs and (
            self._jobs[0][0].done()
            or self._queued_bytes > MAX_QUEUED_BYTES
            or self._queued_records > MAX_QUEUED_RECORDS
        ):
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

    def _take_oldest(self) -> list[dict[bytes, int]]:
        future, size, count = self._jobs.popleft()
        self._queued_bytes -= size
        self._queued_records -= count
        try:
            return future.result()
        except StorageError:
            # The jobs behind it were skipped; once they are done the writer may start afresh.
            while self._jobs:
                self._jobs.popleft()[0].result()
            self._queued_bytes = self._queued_records = 0
            self._broken = False
            raise

    # ---- the writer thread ------------------------------------------------------------------

    def _write(self, records: Sequence[Record]) -> list[dict[bytes, int]]:
        if self._broken:
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

    def _seal(self) -> list[dict[bytes, int]]:
        if self._broken or self._pack is None:
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

    def _commit(self) -> dict[bytes, int]:
        assert self._pack is not None
        pack, self._pack = self._pack, None
        return self._repo.commit_pack(self._client_id, pack, self._pin_key)

    def _fail(self) -> None:
        """After a write failure the open pack cannot be trusted: discard it."""
        self._broken = True
        if self._pack is not None:
            self._pack.abort()
            self._pack = None
