"""The server's repository index: lookups beside writes, reference lists, row listings."""

from __future__ import annotations

import array
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard

from rpybackup_core import repository
from rpybackup_core.crypto import storage_hash
from rpybackup_core.errors import IntegrityError
from rpybackup_core.repository import Repository, decode_refs, encode_refs


def test_a_lookup_runs_beside_a_write_transaction_and_sees_what_is_committed(
    tmp_path: Path,
) -> None:
    """A has-check or a restore's locate does not wait while a pack's index rows go in
    (a write transaction holds the repository's lock), and sees the rows once committed."""
    repo = Repository(tmp_path / "data")
    try:
        repo.add_client("alice", admin=False, ttl=3600)
        alice = repo.client_by_name("alice").id
        stored, pending = b"\x01" * 32, b"\x02" * 32
        pack = repo.new_pack()
        pack.append_many([(stored, storage_hash(b"sealed"), b"sealed")])
        repo.commit_pack(alice, pack)
        inside, release = threading.Event(), threading.Event()

        def index_a_pack_slowly() -> None:
            with repo._transaction() as db:
                db.execute(
                    "INSERT INTO packs(id, client_id, name, size, created) "
                    "VALUES (99, ?, 'slow', 1, 0)",
                    (alice,),
                )
                db.execute(
                    "INSERT INTO chunks(client_id, chunk_id, pack_id, offset, length, hash) "
                    "VALUES (?, ?, 99, 0, 1, ?)",
                    (alice, pending, b"\x00" * 32),
                )
                inside.set()
                release.wait(60)

        writer = threading.Thread(target=index_a_pack_slowly)
        writer.start()
        try:
            assert inside.wait(60)
            with ThreadPoolExecutor(1) as pool:
                found = pool.submit(repo.lookup, alice, [stored, pending]).result(timeout=30)
                located = pool.submit(repo.locate, alice, [stored, pending]).result(timeout=30)
        finally:
            release.set()
            writer.join(60)

        assert set(found) == set(located) == {stored}
        assert set(repo.lookup(alice, [stored, pending])) == {stored, pending}
    finally:
        repo.close()


def test_reference_lists_round_trip_across_pieces_and_read_the_older_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot's references are compressed and read back a piece at a time; lists written
    whole, as before, read the same."""
    monkeypatch.setattr(repository, "_REFS_PIECE", 3)
    rowids = [1, 2, 3, 10, 11, 1 << 40, (1 << 40) + 5]
    blob = encode_refs(iter(rowids), len(rowids))
    assert list(decode_refs(blob)) == rowids
    assert list(decode_refs(encode_refs([], 0))) == []

    deltas = array.array("Q", (b - a for a, b in zip([0, *rowids], rowids, strict=False)))
    older = zstandard.ZstdCompressor(level=9).compress(deltas.tobytes())
    assert list(decode_refs(older)) == rowids

    cut = zstandard.ZstdCompressor().compress(deltas.tobytes()[:-3])
    with pytest.raises(IntegrityError, match="cut short"):
        list(decode_refs(cut))


def test_a_clients_chunk_rows_are_read_in_order_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "_REFS_PIECE", 2)
    repo = Repository(tmp_path / "data")
    try:
        for name in ("alice", "bob"):
            repo.add_client(name, admin=False, ttl=3600)
        alice, bob = (repo.client_by_name(name).id for name in ("alice", "bob"))
        rows: dict[int, list[int]] = {alice: [], bob: []}
        for number in range(7):
            client = alice if number % 3 else bob
            pack = repo.new_pack()
            chunk_id = bytes([number]) * 32
            pack.append_many([(chunk_id, storage_hash(b"sealed"), b"sealed")])
            rows[client] += repo.commit_pack(client, pack).values()

        assert list(repo.chunk_rowids(alice)) == sorted(rows[alice])
        assert list(repo.chunk_rowids(bob)) == sorted(rows[bob])
    finally:
        repo.close()


def test_a_finished_session_leaves_neither_free_pages_nor_a_log_behind(tmp_path: Path) -> None:
    """Pins are written for every chunk of a backup and deleted at its end: a new repository
    gives their pages back, and the write-ahead log is emptied, while the server runs on."""
    repo = Repository(tmp_path / "data")
    try:
        repo.add_client("alice", admin=False, ttl=3600)
        alice = repo.client_by_name("alice").id
        pack = repo.new_pack()
        pack.append_many(
            [(i.to_bytes(32, "big"), storage_hash(b"sealed"), b"sealed") for i in range(20_000)]
        )
        repo.commit_pack(alice, pack, session="session-key")
        log_file = tmp_path / "data" / (repository.DB_FILE + "-wal")
        assert log_file.stat().st_size > 0

        repo.release_pins("session-key")

        assert log_file.stat().st_size == 0
        assert repo._query("PRAGMA freelist_count") == [(0,)]
        assert len(repo.lookup(alice, [(7).to_bytes(32, "big")])) == 1
    finally:
        repo.close()


def test_compacting_does_not_wait_for_another_process_writing(tmp_path: Path) -> None:
    """A CLI prune holding the write lock (30 s of patience for statements) must not hold up
    the end of a backup's session: compacting is left for the next time instead."""
    repo = Repository(tmp_path / "data")
    other = sqlite3.connect(tmp_path / "data" / repository.DB_FILE, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with ThreadPoolExecutor(1) as pool:
            pool.submit(repo.compact).result(timeout=10)
        other.execute("ROLLBACK")
        repo.add_client("alice", admin=False, ttl=3600)
        assert repo.client_by_name("alice").name == "alice"
    finally:
        other.close()
        repo.close()
