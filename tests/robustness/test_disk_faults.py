"""Disk full and I/O errors under the server's storage (faults.FaultyBackend around the local
backend): a clear one-line error, a consistent repository, earlier snapshots restore, and the
next backup after the disk recovers succeeds. A real full filesystem (a small tmpfs) is
tests/test_bad_input.py::test_disk_full_on_the_server_fails_cleanly_and_keeps_earlier_snapshots.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpybackup_core.checker import Checker
from rpybackup_core.config import ServerConfig
from rpybackup_core.crypto import MasterKey, Sealer
from rpybackup_core.errors import NotFound, RPyBackupError
from rpybackup_core.faults import FaultyBackend
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.repository import Repository
from rpybackup_core.server import BackupServer
from rpybackup_core.storage import LocalBackend
from rpybackup_core.tls import create_identity
from tests.conftest import ServerHarness, commit_header

from .conftest import Profile
from .harness import ChangingTree, assert_clean, manifest, restored_manifest


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[ServerHarness, FaultyBackend]]:
    root = tmp_path / "srv"
    config = ServerConfig(path=root / "server.toml", data_dir=root / "data", listen_port=0)
    config.pack_size = 1024 * 1024
    harness = ServerHarness(root, config, create_identity(config.tls_dir))
    backend = FaultyBackend(LocalBackend(config.data_dir / "storage"))
    harness.server = BackupServer(config, Repository(config.data_dir, backend))
    harness.thread = threading.Thread(target=harness.server.serve_forever, daemon=True)
    harness.thread.start()
    try:
        yield harness, backend
    finally:
        harness.stop()


@pytest.mark.parametrize(
    ("code", "after", "says"),
    [
        (errno.ENOSPC, 0, "server storage is full"),
        (errno.ENOSPC, 2, "server storage is full"),
        (errno.EIO, 0, "server storage failed"),
    ],
    ids=["full-at-once", "full-mid-run", "io-error"],
)
def test_a_failing_disk_fails_the_backup_cleanly_and_loses_nothing(
    faulty: tuple[ServerHarness, FaultyBackend],
    tmp_path: Path,
    profile: Profile,
    code: int,
    after: int,
    says: str,
) -> None:
    harness, backend = faulty
    harness.enroll("alice")
    tree = ChangingTree(tmp_path / "source", profile.rng(f"disk-{code}-{after}"))
    tree.change(new_files=2)
    first_want = manifest(tree.root)
    first = harness.client("alice").backup([str(tree.root)])

    backend.fail("put_file", code, after=after)
    tree.change(new_files=4)
    want = manifest(tree.root)
    with pytest.raises(RPyBackupError) as failure:
        harness.client("alice").backup([str(tree.root)])
    assert says in str(failure.value) and "\n" not in str(failure.value)
    assert backend.injected >= 1
    assert [snap.id for snap in harness.client("alice").snapshots()] == [first.snapshot]
    assert_clean(Checker(harness.repo).run(read_data=True))
    harness.client("alice").restore(first.snapshot, tmp_path / "first")
    assert restored_manifest(tmp_path / "first", tree.root) == first_want

    backend.heal()
    second = harness.client("alice").backup([str(tree.root)])
    harness.client("alice").restore(second.snapshot, tmp_path / "second")
    assert restored_manifest(tmp_path / "second", tree.root) == want
    assert_clean(Checker(harness.repo).run(read_data=True))
    assert harness.thread is not None and harness.thread.is_alive()


def test_a_read_error_fails_the_restore_clearly_and_passes(
    faulty: tuple[ServerHarness, FaultyBackend], tmp_path: Path, profile: Profile
) -> None:
    harness, backend = faulty
    harness.enroll("alice")
    tree = ChangingTree(tmp_path / "source", profile.rng("read-error"))
    tree.change(new_files=3)
    want = manifest(tree.root)
    snapshot = harness.client("alice").backup([str(tree.root)]).snapshot

    backend.fail("get_range", errno.EIO)
    with pytest.raises(RPyBackupError) as failure:
        harness.client("alice").restore(snapshot, tmp_path / "during")
    assert "server storage failed" in str(failure.value)

    backend.heal()
    harness.client("alice").restore(snapshot, tmp_path / "after")
    assert restored_manifest(tmp_path / "after", tree.root) == want


@pytest.mark.parametrize("stored_meanwhile", [False, True], ids=["put-again", "stored-meanwhile"])
def test_a_commit_waits_until_chunks_lost_to_a_storage_failure_are_put_again(
    faulty: tuple[ServerHarness, FaultyBackend], stored_meanwhile: bool
) -> None:
    """Every chunk a session puts counts as referenced by its snapshot; one whose pack failed
    to store is not there, so the commit is refused until the client puts it again. Put
    again once another connection has stored it, it is referenced, not stored twice."""
    harness, backend = faulty
    config = harness.enroll("alice")
    sealer = Sealer(MasterKey.from_text(config.key))
    plain = b"a chunk whose first pack never reached the disk"
    chunk_id = sealer.chunk_id(plain)
    snapshot = commit_header(sealer, [chunk_id])

    def connect() -> RemoteRepository:
        return RemoteRepository.connect(
            config.server, config.fingerprint, config.name, config.token
        )

    with connect() as remote:
        backend.fail("put_file", errno.EIO)
        remote.put([(chunk_id, sealer.seal(chunk_id, plain))])
        with pytest.raises(RPyBackupError, match="server storage failed"):
            remote.sync()
        backend.heal()
        with pytest.raises(NotFound, match="lost to a storage failure"):
            remote.commit(snapshot)
        if stored_meanwhile:
            with connect() as other:
                other.put([(chunk_id, sealer.seal(chunk_id, plain))])
                other.sync()

        remote.put([(chunk_id, sealer.seal(chunk_id, plain))])
        snapshot_id = remote.commit(snapshot)
    alice = harness.repo.client_by_name("alice").id
    [row] = harness.repo.lookup(alice, [chunk_id]).values()
    assert list(harness.repo.snapshot_refs(alice, snapshot_id)) == [row]
