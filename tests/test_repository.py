"""The server's repository index: lookups beside writes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rpybackup_core.crypto import storage_hash
from rpybackup_core.repository import Repository


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
