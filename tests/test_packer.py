"""One upload session's pack writing: the writer thread, and a committer beside it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpybackup_core.errors import StorageError
from rpybackup_core.pack import PackWriter
from rpybackup_core.packer import Packer, Record
from rpybackup_core.repository import Repository

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[Repository, int]]:
    repository = Repository(tmp_path / "data")
    repository.add_client("alice", admin=False, ttl=3600)
    yield repository, repository.client_by_name("alice").id
    repository.close()


def _records(count: int) -> list[Record]:
    """``count`` blobs of 64 KiB: sixteen of them fill a pack of 1 MiB."""
    return [(os.urandom(32), memoryview(os.urandom(64 * KIB))) for _ in range(count)]


def _indexed(committed: list[dict[bytes, int]]) -> set[bytes]:
    return {chunk_id for rows in committed for chunk_id in rows}


def test_the_writer_fills_the_next_pack_while_a_full_one_is_made_durable(
    repo: tuple[Repository, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pack's commit (its fsync and index rows) is held back; the writer still
    starts the next pack with the records that follow, and once the commit goes on every
    chunk is indexed, each pack in the order it was filled."""
    repository, alice = repo
    release, second_pack = threading.Event(), threading.Event()
    commit_pack, new_pack = repository.commit_pack, repository.new_pack
    committed_packs: list[int] = []
    made: list[PackWriter] = []

    def held_commit(client_id: int, writer: PackWriter, session: str | None = None):
        if not committed_packs:
            release.wait(60)
        committed_packs.append(made.index(writer))
        return commit_pack(client_id, writer, session)

    def counted_new_pack() -> PackWriter:
        made.append(new_pack())
        if len(made) == 2:
            second_pack.set()
        return made[-1]

    monkeypatch.setattr(repository, "commit_pack", held_commit)
    monkeypatch.setattr(repository, "new_pack", counted_new_pack)
    records = _records(40)
    packer = Packer(repository, alice, "pin", pack_size=MIB, max_entries=1024)
    try:
        committed = packer.submit(records[:16]) + packer.submit(records[16:24])
        assert second_pack.wait(60), "the writer waited for the first pack's commit"
        release.set()
        committed += packer.submit(records[24:]) + packer.drain(seal=True)
    finally:
        release.set()
        packer.close()

    assert committed_packs == [0, 1, 2]
    assert _indexed(committed) == {chunk_id for chunk_id, _ in records}
    assert set(repository.lookup(alice, [chunk_id for chunk_id, _ in records])) == _indexed(
        committed
    )


def test_a_failed_commit_is_raised_once_and_the_next_records_are_stored(
    repo: tuple[Repository, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packs queued behind a commit that failed are not stored (their chunks count as
    lost), and the packer starts afresh for what comes next."""
    repository, alice = repo
    commit_pack = repository.commit_pack
    calls: list[int] = []

    def failing_first(client_id: int, writer: PackWriter, session: str | None = None):
        calls.append(1)
        if len(calls) == 1:
            writer.abort()
            raise StorageError("the disk is full")
        return commit_pack(client_id, writer, session)

    monkeypatch.setattr(repository, "commit_pack", failing_first)
    lost, kept = _records(32), _records(16)
    packer = Packer(repository, alice, "pin", pack_size=MIB, max_entries=1024)
    try:
        with pytest.raises(StorageError, match="disk is full"):
            packer.submit(lost[:16])
            packer.submit(lost[16:])
            packer.drain(seal=True)
        committed = packer.submit(kept) + packer.drain(seal=True)
    finally:
        packer.close()

    assert _indexed(committed) == {chunk_id for chunk_id, _ in kept}
    assert repository.lookup(alice, [chunk_id for chunk_id, _ in lost]) == {}
