"""The backup's helper process for large files: a real spawned process, a real server."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rpybackup_core import archiver
from rpybackup_core.archiver import HELPER_FILE, Archiver, BackupResult
from rpybackup_core.backup_helper import BackupHelper
from rpybackup_core.client import BackupClient
from rpybackup_core.crypto import Sealer
from rpybackup_core.demo import compare_trees
from rpybackup_core.errors import Cancelled, NotFound
from rpybackup_core.files_cache import FilesCache
from rpybackup_core.progress import Progress
from rpybackup_core.protocol import record_parts
from rpybackup_core.remote import RemoteRepository

MIB = 1024 * 1024


def _tree(root: Path) -> Path:
    """Large files (read by the helper) in two directories, among small ones."""
    rng = random.Random(31)
    (root / "sub").mkdir(parents=True)
    for index, size in enumerate((HELPER_FILE + 1, 9 * MIB + 17, 13 * MIB)):
        (root / f"large-{index}.bin").write_bytes(rng.randbytes(size))
    (root / "sub" / "large.log").write_bytes(b"a line of a log that compresses\n" * 200_000)
    (root / "sub" / "copy.bin").write_bytes((root / "large-1.bin").read_bytes())
    for index in range(40):
        (root / "sub" / f"small-{index:02d}.txt").write_text(f"small file {index}\n" * index)
    return root


def _backup(
    client: BackupClient,
    source: Path,
    helpers: Callable[[], BackupHelper],
    cache: FilesCache | None = None,
) -> BackupResult:
    with client.connection() as remote:
        archiver = Archiver(remote, client.key, cache, [], helper=helpers)
        return archiver.run([source])


def _restored(client: BackupClient, source: Path, target: Path) -> list[str]:
    _, result = client.restore("latest", target)
    assert result.errors == []
    return compare_trees(source, target / source.relative_to("/"))


@pytest.fixture
def alice(server) -> BackupClient:
    server.enroll("alice")
    return server.client("alice")


@pytest.mark.parametrize(("start", "handed"), [(20 * MIB, [3]), (64 * MIB, [])])
def test_a_re_run_starts_the_helper_once_the_large_files_to_read_are_worth_its_start(
    alice: BackupClient,
    tmp_path: Path,
    helper_starter,
    monkeypatch: pytest.MonkeyPatch,
    used_cache: FilesCache,
    start: int,
    handed: list[int],
) -> None:
    """Large files come in name order: 4 MiB, 9 MiB, then 13 MiB passes 20 MiB, and the helper
    takes that one and the two in sub/ (the first two were read by the backup itself); all of
    them (about 42 MiB) never reach 64 MiB, and no helper starts."""
    source = _tree(tmp_path / "src")
    monkeypatch.setattr(archiver, "HELPER_START", start)
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers, used_cache)

    assert result.errors == [] and result.files == 45
    assert [helper.files for helper in helpers.started] == handed
    assert _restored(alice, source, tmp_path / "out") == []


def test_a_copy_of_a_file_read_before_the_helper_started_is_not_stored_again(
    server,
    alice: BackupClient,
    tmp_path: Path,
    helper_starter,
    monkeypatch: pytest.MonkeyPatch,
    used_cache: FilesCache,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(random.Random(5).randbytes(6 * MIB))
    (source / "b.bin").write_bytes((source / "a.bin").read_bytes())
    monkeypatch.setattr(archiver, "HELPER_START", 10 * MIB)
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers, used_cache)

    assert [helper.files for helper in helpers.started] == [1]
    stats = server.repo.chunk_stats(server.repo.client_by_name("alice").id)
    assert result.uploaded_chunks == stats["chunks"]
    assert _restored(alice, source, tmp_path / "out") == []


def test_a_first_backup_starts_the_helper_at_its_first_large_file(
    alice: BackupClient, tmp_path: Path, helper_starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its files cache knows nothing, so everything is read: the helper is worth its start."""
    source = _tree(tmp_path / "src")
    monkeypatch.setattr(archiver, "HELPER_START", 64 * MIB)
    cache = FilesCache(tmp_path / "cache")
    try:
        helpers = helper_starter(alice, BackupHelper)
        result = _backup(alice, source, helpers, cache)
    finally:
        cache.close()

    assert result.errors == [] and [helper.files for helper in helpers.started] == [5]


def _raw_photos(root: Path, count: int) -> Path:
    """``count`` incompressible files just over HELPER_FILE, one directory: large files alone."""
    rng = random.Random(13)
    root.mkdir(parents=True)
    for index in range(count):
        (root / f"RAW_{index:04d}.dng").write_bytes(rng.randbytes(HELPER_FILE + MIB))
    return root


@pytest.mark.parametrize(("held", "read_here"), [(1024**4, True), (0, False)])
def test_a_walk_done_in_little_memory_reads_large_files_waiting_for_the_helper(
    server,
    alice: BackupClient,
    tmp_path: Path,
    helper_starter,
    monkeypatch: pytest.MonkeyPatch,
    held: int,
    read_here: bool,
) -> None:
    """The helper holds two large files at a time and the others wait. Where the walk, done,
    would wait for the helper it reads a waiting one itself, if it holds less memory than the
    bound (here far more, or none); each file is still stored once and restores whole."""
    source = _raw_photos(tmp_path / "src", 8)
    monkeypatch.setattr(archiver, "_HELPER_LARGE_BYTES", 0)
    monkeypatch.setattr(archiver, "_READ_WAITING_RSS", held)
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 8
    assert len(helpers.started) == 1
    read_by_helper = helpers.started[0].files
    assert 2 <= read_by_helper < 8 if read_here else read_by_helper == 8
    stats = server.repo.chunk_stats(server.repo.client_by_name("alice").id)
    assert result.uploaded_chunks == stats["chunks"]
    assert _restored(alice, source, tmp_path / "out") == []


def _photos(root: Path, count: int) -> Path:
    """``count`` incompressible files of 2 MiB: over HELPER_SHARED_FILE, under HELPER_FILE."""
    rng = random.Random(11)
    root.mkdir(parents=True)
    for index in range(count):
        (root / f"IMG_{index:04d}.jpg").write_bytes(rng.randbytes(2 * MIB))
    return root


def test_files_between_the_shared_and_the_large_size_are_shared_with_the_helper(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """The first 7 are read by the backup itself: the helper starts as the 8th brings them to
    16 MiB, and takes some of the rest (one while it holds less than 32 MiB of them)."""
    source = _photos(tmp_path / "src", 40)
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 40
    assert len(helpers.started) == 1 and 0 < helpers.started[0].files <= 40 - 7
    assert _restored(alice, source, tmp_path / "out") == []


def test_a_few_files_between_the_shared_and_the_large_size_start_no_helper(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = _photos(tmp_path / "src", 7)
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 7 and helpers.started == []


def test_large_files_read_by_the_helper_are_stored_once_and_restore_whole(
    server, alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = _tree(tmp_path / "src")
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 45
    # Five large files went to the helper; one of them is a copy, stored once.
    assert [helper.files for helper in helpers.started] == [5]
    assert not helpers.started[0].stopped
    stats = server.repo.chunk_stats(server.repo.client_by_name("alice").id)
    assert result.uploaded_chunks == stats["chunks"]
    assert _restored(alice, source, tmp_path / "out") == []


def test_the_helpers_files_enter_the_files_cache_so_a_re_run_reads_nothing(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = _tree(tmp_path / "src")
    cache = FilesCache(tmp_path / "cache")
    try:
        _backup(alice, source, helper_starter(alice, BackupHelper), cache)
        helpers = helper_starter(alice, BackupHelper)
        second = _backup(alice, source, helpers, cache)
    finally:
        cache.close()
    assert second.uploaded_chunks == 0 and second.files == 45
    assert helpers.started == []


def test_a_helper_that_cannot_log_in_leaves_its_files_to_the_backup(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = _tree(tmp_path / "src")
    helpers = helper_starter(alice, BackupHelper)
    helpers.token = "not-the-token"

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 45
    assert helpers.started[0].stopped
    assert _restored(alice, source, tmp_path / "out") == []


def test_a_helper_that_cannot_start_leaves_its_files_to_the_backup(
    alice: BackupClient, tmp_path: Path, helper_starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _tree(tmp_path / "src")
    helpers = helper_starter(alice, BackupHelper)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 45
    assert helpers.started[0].stopped
    assert _restored(alice, source, tmp_path / "out") == []


class _DiesAfterTwoFiles(BackupHelper):
    def read(self, path: str) -> None:
        super().read(path)
        if self.files == 2:
            self._process.kill()
            self._process.join(timeout=60)


def test_files_of_a_helper_that_dies_are_read_by_the_backup_itself(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = _tree(tmp_path / "src")
    helpers = helper_starter(alice, _DiesAfterTwoFiles)

    result = _backup(alice, source, helpers)

    assert result.errors == [] and result.files == 45
    assert helpers.started[0].stopped
    assert _restored(alice, source, tmp_path / "out") == []


def test_a_large_file_gone_before_the_helper_reads_it_is_named_and_the_rest_stored(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = _tree(tmp_path / "src")
    doomed = source / "large-2.bin"
    listed = source.stat()

    class RemovesOneFirst(BackupHelper):
        def read(self, path: str) -> None:
            if path == str(doomed):
                doomed.unlink()
                # The directory as it was listed, so the restore can be compared with it.
                os.utime(source, ns=(listed.st_atime_ns, listed.st_mtime_ns))
            super().read(path)

    result = _backup(alice, source, helper_starter(alice, RemovesOneFirst))

    assert len(result.errors) == 1 and "large-2.bin" in result.errors[0]
    assert result.files == 44
    assert _restored(alice, source, tmp_path / "out") == []


def test_another_connection_may_reference_chunks_only_once_they_are_synced(
    server, alice: BackupClient
) -> None:
    """What the helper relies on: a put is the uploading connection's until it syncs."""
    config = alice.config
    sealer = Sealer(alice.key)
    plain = b"a chunk put by one connection"
    chunk_id = sealer.chunk_id(plain)
    with (
        RemoteRepository.connect(
            config.server, config.fingerprint, config.name, config.token
        ) as helper,
        RemoteRepository.connect(
            config.server, config.fingerprint, config.name, config.token
        ) as backup,
    ):
        helper.put_parts(record_parts([(chunk_id, sealer.seal(chunk_id, plain))]))
        helper.flush()
        with pytest.raises(NotFound):
            backup.refs([chunk_id])
        helper.sync()
        backup.refs([chunk_id])
        assert backup.has([chunk_id]) == [True]


def test_progress_comes_from_the_helper_and_a_cancel_stops_it_at_once(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    # Sparse: gigabytes for the helper to read, none on disk; the run is cancelled long before.
    with (source / "disk.img").open("wb") as handle:
        handle.truncate(16 * 1024**3)
    helpers = helper_starter(alice, BackupHelper)
    seen: list[int] = []

    def cancel_after_some(progress: Progress) -> None:
        seen.append(progress.bytes_done)
        if progress.bytes_done >= 64 * MIB:
            raise Cancelled("cancelled")

    with alice.connection() as remote:
        archiver = Archiver(remote, alice.key, None, [], cancel_after_some, helper=helpers)
        with pytest.raises(Cancelled):
            archiver.run([source])

    assert max(seen) < 16 * 1024**3
    assert not helpers.started[0]._process.is_alive()
    assert alice.snapshots() == []
