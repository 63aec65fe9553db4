"""A first backup hands the helper process runs of a directory's small files and of its leaf
directories: a real spawned helper, a real server, real files.

Runs start once the walk has read ``_ENTRIES_AFTER_FILES`` files; here that is 10 (and runs and
the helper's room are small), so a tree of a few hundred files has many runs and the helper is
sometimes full (the walk then reads entries itself). What each test asserts about which entries
went to the helper holds whatever the timing of its reports."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rpybackup_core import archiver
from rpybackup_core.archiver import HELPER_FILE, Archiver, BackupResult, EntriesRead, FileRead
from rpybackup_core.backup_helper import BackupHelper
from rpybackup_core.client import BackupClient
from rpybackup_core.demo import compare_trees
from rpybackup_core.errors import BackupIncomplete
from rpybackup_core.files_cache import FilesCache
from rpybackup_core.repository import DB_FILE
from rpybackup_core.tree import Node
from tests.conftest import knows_directory, settled

# ---- the tree -------------------------------------------------------------------------------


def _write(path: Path, size: int = 0) -> None:
    """A file whose content no other file has (so none of its chunks is shared)."""
    rng = random.Random(str(path))
    path.write_bytes(f"{path}\n".encode() + rng.randbytes(size))


def _write_latin1(path: Path) -> None:
    """A file named ``path`` with "é.txt" in Latin-1 after it: not valid UTF-8."""
    with open(os.fsencode(path) + b"\xe9.txt", "wb") as handle:
        handle.write(os.fsencode(path) + b" in Latin-1\n")


def _tree(root: Path, large: bool = True) -> Path:
    """Some 300 files, walked in name order, depth first:

    - ``a-first/``: 13 files, the first 10 of which the walk reads itself (then runs start:
      the other three, the last with a name that is not valid UTF-8, are the first run);
    - ``b-leaves/``: 12 directories with no subdirectory and an empty one: the first three
      are handed over whole, the first with a name that is not valid UTF-8 in it (then the
      helper is full; the walk reads the next ones and hands their files in runs while the
      helper has room);
    - ``c-flat/``: 150 small files, one of 3 MiB (several chunks), an empty file and a
      symlink; it has a subdirectory, so its files go in runs;
    - ``d-nested/x/y/z/``: directories with subdirectories (walked here) down to a leaf;
    - ``e-last.txt``: a file after all of them, in the source directory itself, and (with
      ``large``) ``z-large.bin``, which the helper reads as a large file after the runs (while
      it holds a large file it takes no run: one early in the walk would leave how many runs
      it gets to the timing of its report).
    """
    first = root / "a-first"
    first.mkdir(parents=True)
    for index in range(12):
        _write(first / f"f-{index:02d}.txt", index * 100)
    _write_latin1(first / "f-caf")
    leaves = root / "b-leaves"
    for index in range(12):
        leaf = leaves / f"leaf-{index:02d}"
        leaf.mkdir(parents=True)
        for number in range(5):
            _write(leaf / f"n-{number}.txt", number * 11)
    _write_latin1(leaves / "leaf-00" / "n-caf")
    (leaves / "leaf-empty").mkdir()
    flat = root / "c-flat"
    flat.mkdir()
    for index in range(150):
        _write(flat / f"s-{index:03d}.txt", index * 37)
    _write(flat / "m-multi.bin", 3 * 1024 * 1024)
    (flat / "s-empty").write_bytes(b"")
    os.symlink("s-001.txt", flat / "s-link")
    (flat / "t-sub").mkdir()
    _write(flat / "t-sub" / "t.txt", 10)
    deep = root / "d-nested"
    for level in ("x", "x/y", "x/y/z"):
        (deep / level).mkdir(parents=True)
        for number in range(4):
            _write(deep / level / f"d-{number}.txt", 50)
    _write(root / "e-last.txt", 10)
    if large:
        _write(root / "z-large.bin", HELPER_FILE + 1)
    return root


def _on_disk(source: Path) -> list[str]:
    """Every path under ``source`` (not itself), as the snapshot lists them."""
    paths: list[str] = []
    for directory, subdirs, files in os.walk(source):
        paths.extend(os.path.join(directory, name) for name in subdirs + files)
    return sorted(paths)


def _in_snapshot(client: BackupClient, source: Path, snapshot: str = "latest") -> list[str]:
    """Every path under ``source`` in the snapshot, as often as it is stored there."""
    with client.listing(str(source), snapshot) as (_, entries):
        return sorted(entry.path for entry in entries)


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True


def _assert_whole(client: BackupClient, source: Path, result: BackupResult, tmp_path: Path) -> None:
    """The snapshot holds every entry under ``source`` once, restores identical, and counts
    what a backup without a helper counts."""
    assert _in_snapshot(client, source) == _on_disk(source)
    assert _restored(client, source, tmp_path / "out") == []
    alone = _backup(client, source, None)
    assert (result.files, result.dirs, result.bytes) == (alone.files, alone.dirs, alone.bytes)


# ---- backing up -----------------------------------------------------------------------------


def _backup(
    client: BackupClient,
    source: Path,
    helpers: Callable[[], BackupHelper] | None,
    cache: FilesCache | None = None,
    excludes: list[str] | None = None,
) -> BackupResult:
    with client.connection() as remote:
        return Archiver(remote, client.key, cache, excludes or [], helper=helpers).run([source])


def _restored(
    client: BackupClient, source: Path, target: Path, snapshot: str = "latest"
) -> list[str]:
    """How the snapshot's copy of ``source``, restored to ``target``, differs from it."""
    _, result = client.restore(snapshot, target)
    assert result.errors == []
    return compare_trees(source, target / source.relative_to("/"))


class _Recording(BackupHelper):
    """A helper that remembers every run it was handed: ``(prefix, names)``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.handed: list[tuple[str, list[str]]] = []

    def back_up(self, prefix: str, names: list[str]) -> None:
        super().back_up(prefix, names)
        self.handed.append((prefix, list(names)))

    def handed_directories(self) -> list[str]:
        """The directories handed over whole whose names are all valid UTF-8 (the files cache
        keeps no directory holding another)."""
        paths = [prefix + name for prefix, names in self.handed for name in names]
        return [
            path
            for path in paths
            if stat.S_ISDIR(os.lstat(path).st_mode)
            and all(_utf8(name) for name in [path, *os.listdir(path)])
        ]

    def handed_files(self) -> list[str]:
        """Every regular file under the entries handed over in runs."""
        paths = [prefix + name for prefix, names in self.handed for name in names]
        for path in list(paths):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                paths.extend(os.path.join(path, name) for name in os.listdir(path))
        return [path for path in paths if stat.S_ISREG(os.lstat(path).st_mode)]


@pytest.fixture
def alice(server) -> BackupClient:
    server.enroll("alice")
    return server.client("alice")


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs after the walk's first 10 files, of at most 16 entries, while the helper holds
    fewer than 64 (a leaf directory counts 16); no file is shared with the helper, so a
    multi-chunk file of 3 MiB goes in a run."""
    monkeypatch.setattr(archiver, "HELPER_SHARED_FILE", HELPER_FILE)
    monkeypatch.setattr(archiver, "_ENTRIES_AFTER_FILES", 10)
    monkeypatch.setattr(archiver, "_HELPER_RUN", 16)
    monkeypatch.setattr(archiver, "_HELPER_ENTRIES", 64)


# ---- specifications -------------------------------------------------------------------------


@pytest.mark.usefixtures("small_runs")
def test_a_first_backup_hands_runs_to_the_helper_and_stores_every_entry_once(
    server, alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """The helper takes runs of small files and leaf directories (and a large file after
    them); the snapshot holds each entry once, references every chunk stored and restores
    identical, and the backup counts each file, directory and byte once, as the walk alone
    counts them."""
    source = _tree(tmp_path / "src")
    helpers = helper_starter(alice, _Recording)

    result = _backup(alice, source, helpers)

    helper = helpers.started[0]
    assert helper.runs > 0 and helper.run_files > 0 and helper.files == 1
    # The tenth file read starts the runs; the first leaf directories go over whole.
    handed = [prefix + name for prefix, names in helper.handed for name in names]
    first = sorted(str(path) for path in (source / "a-first").iterdir())
    assert [path for path in handed if path in first] == first[10:]
    leaves = [str(source / "b-leaves" / f"leaf-{index:02d}") for index in range(3)]
    assert [path for path in handed if path in leaves] == leaves
    assert result.errors == []
    # Every chunk stored (no file shares one with another) is counted once as uploaded and
    # referenced by the snapshot, those the helper stored too (so a prune keeps them).
    client_id = server.repo.client_by_name("alice").id
    stored = sorted(server.repo.chunk_rowids(client_id))
    assert result.uploaded_chunks == len(stored)
    assert sorted(server.repo.snapshot_refs(client_id, result.snapshot)) == stored
    _assert_whole(alice, source, result, tmp_path)


@pytest.mark.usefixtures("small_runs")
def test_the_files_cache_learns_the_files_the_helper_read_so_a_re_run_reads_none(
    alice: BackupClient, tmp_path: Path, helper_starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh files cache (a first backup) gets the rows of the files read and of the
    directories stored in runs from the helper's syncs: after the commit it knows each of them,
    and the next run reads no file."""
    source = _tree(tmp_path / "src", large=False)
    settled(source)
    cache = FilesCache(tmp_path / "cache")
    try:
        assert cache.generation == 1
        helpers = helper_starter(alice, _Recording)
        _backup(alice, source, helpers, cache)
        in_runs = helpers.started[0].handed_files()
        assert len(in_runs) > 20

        unknown = [path for path in in_runs if cache.lookup(path, os.lstat(path)) is None]
        assert unknown == []
        stored = helpers.started[0].handed_directories()
        assert len(stored) >= 2
        assert [path for path in stored if not knows_directory(cache, path)] == []

        read: list[str] = []
        read_content = Archiver.read_content

        def recorded(self: Archiver, path: str) -> tuple[Node, os.stat_result, os.stat_result]:
            read.append(path)
            return read_content(self, path)

        monkeypatch.setattr(Archiver, "read_content", recorded)
        helpers = helper_starter(alice, BackupHelper)
        second = _backup(alice, source, helpers, cache)
    finally:
        cache.close()
    assert read == [] and helpers.started == []
    assert second.errors == []
    assert _restored(alice, source, tmp_path / "out") == []


@pytest.mark.usefixtures("small_runs")
def test_directories_the_helper_stores_after_its_first_sync_are_known_too(
    alice: BackupClient, tmp_path: Path, helper_starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More files than the helper syncs at once (1,024), in leaf directories handed over
    whole (once the walk has read the files before them): the directories of every sync
    reach the files cache, not only the first's."""
    monkeypatch.setattr(archiver, "_HELPER_ENTRIES", 36 * archiver._DIRECTORY_ENTRIES)
    source = tmp_path / "src"
    source.mkdir()
    for index in range(12):
        _write(source / f"a{index:02d}")
    for leaf in range(36):
        (source / f"leaf-{leaf:02d}").mkdir(parents=True)
        for index in range(60):
            _write(source / f"leaf-{leaf:02d}" / f"f{index:02d}", 16)
    settled(source)
    cache = FilesCache(tmp_path / "cache")
    try:
        helpers = helper_starter(alice, _Recording)
        _backup(alice, source, helpers, cache)
        stored = helpers.started[0].handed_directories()
        assert len(stored) * 60 > 1024
        assert [path for path in stored if not knows_directory(cache, path)] == []
    finally:
        cache.close()


@pytest.mark.usefixtures("small_runs")
@pytest.mark.parametrize("large", [False, True], ids=["no-large-file", "a-large-file"])
def test_a_re_run_hands_no_runs_to_the_helper(
    alice: BackupClient,
    tmp_path: Path,
    helper_starter,
    monkeypatch: pytest.MonkeyPatch,
    used_cache: FilesCache,
    large: bool,
) -> None:
    """With a files cache that has seen a run, entries are the walk's own: no helper starts for
    them, and one started for a large file (at the first, here) gets that file only."""
    source = _tree(tmp_path / "src", large=large)
    monkeypatch.setattr(archiver, "HELPER_START", 1)
    helpers = helper_starter(alice, BackupHelper)

    result = _backup(alice, source, helpers, used_cache)

    assert [(helper.files, helper.runs) for helper in helpers.started] == (
        [(1, 0)] if large else []
    )
    assert result.errors == []
    assert _restored(alice, source, tmp_path / "out") == []


@pytest.mark.usefixtures("small_runs")
def test_runs_of_a_helper_that_dies_are_backed_up_by_the_backup_itself(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """The helper is killed right after its third run is handed over: that run and those
    after it are backed up here, and the snapshot is whole, each entry in it once."""
    source = _tree(tmp_path / "src")

    class DiesAfterThreeRuns(BackupHelper):
        def back_up(self, prefix: str, names: list[str]) -> None:
            super().back_up(prefix, names)
            if self.runs == 3:
                self._process.kill()
                self._process.join(timeout=60)

    helpers = helper_starter(alice, DiesAfterThreeRuns)

    result = _backup(alice, source, helpers)

    assert helpers.started[0].stopped and helpers.started[0].runs >= 3
    assert result.errors == []
    _assert_whole(alice, source, result, tmp_path)


@pytest.mark.usefixtures("small_runs")
def test_a_file_gone_before_the_helper_backs_it_up_is_one_error_and_the_rest_stored(
    alice: BackupClient, tmp_path: Path, helper_starter, caplog: pytest.LogCaptureFixture
) -> None:
    """The helper meets an error in a run (a file removed after the walk listed it): it comes
    back with the run's report, once among the backup's errors and once in its log."""
    source = _tree(tmp_path / "src", large=False)
    gone: list[str] = []

    class RemovesOneFirst(BackupHelper):
        def back_up(self, prefix: str, names: list[str]) -> None:
            files = [prefix + name for name in names if os.path.isfile(prefix + name)]
            if not gone and files:
                directory = os.lstat(prefix)
                os.unlink(files[0])
                # The directory as it was listed, so the restore can be compared with it.
                os.utime(prefix, ns=(directory.st_atime_ns, directory.st_mtime_ns))
                gone.append(files[0])
            super().back_up(prefix, names)

    helpers = helper_starter(alice, RemovesOneFirst)
    with caplog.at_level(logging.WARNING, logger=archiver.__name__):
        result = _backup(alice, source, helpers)

    assert len(gone) == 1
    assert result.errors == [f"{gone[0]}: No such file or directory"]
    assert len([r for r in caplog.records if gone[0] in r.getMessage()]) == 1
    assert _in_snapshot(alice, source) == _on_disk(source)
    assert _restored(alice, source, tmp_path / "out") == []


@pytest.mark.usefixtures("small_runs")
def test_an_unreadable_file_in_a_directory_the_helper_backs_up_is_one_error(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """The first leaf directory goes to the helper whole: a file in it that cannot be read is
    named once among the backup's errors, and the rest is stored."""
    source = _tree(tmp_path / "src", large=False)
    locked = source / "b-leaves" / "leaf-00" / "n-2.txt"
    locked.chmod(0)
    if _readable(locked):
        locked.chmod(0o644)
        pytest.skip("this process reads a file whatever its mode (root)")
    helpers = helper_starter(alice, _Recording)
    try:
        result = _backup(alice, source, helpers)
    finally:
        locked.chmod(0o644)

    handed = [prefix + name for prefix, names in helpers.started[0].handed for name in names]
    assert str(locked.parent) in handed
    assert result.errors == [f"{locked}: Permission denied"]
    assert _in_snapshot(alice, source) == [p for p in _on_disk(source) if p != str(locked)]


@pytest.mark.usefixtures("small_runs")
def test_a_backup_whose_server_lost_a_chunk_of_the_helpers_runs_is_not_committed(
    server, alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """The server's index loses a chunk that a run's report refers to, after the helper synced
    it (a damaged repository): the backup fails before its commit instead of committing a
    snapshot that refers to it."""
    source = _tree(tmp_path / "src", large=False)
    lost: list[bytes] = []

    class IndexLosesOne(BackupHelper):
        def reports(self, wait: bool) -> list[FileRead | EntriesRead | None]:
            taken = super().reports(wait)
            if self.references and not lost:
                lost.append(self.references[-1])
                index = sqlite3.connect(server.repo.data_dir / DB_FILE, timeout=30)
                with contextlib.closing(index), index:
                    index.execute("DELETE FROM chunks WHERE chunk_id = ?", (lost[0],))
            return taken

    with pytest.raises(BackupIncomplete, match="lacks 1 chunk"):
        _backup(alice, source, helper_starter(alice, IndexLosesOne))

    assert len(lost) == 1
    assert alice.snapshots() == []


@pytest.mark.usefixtures("small_runs")
def test_entries_the_backup_excludes_are_excluded_in_runs_too(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """The helper skips what the backup's patterns exclude, in directories it backs up whole
    and among the files of runs."""
    source = _tree(tmp_path / "src", large=False)
    for leaf in sorted((source / "b-leaves").iterdir()):
        _write(leaf / "scratch.tmp", 5)
    _write(source / "c-flat" / "s-140.tmp", 5)
    helpers = helper_starter(alice, _Recording)

    result = _backup(alice, source, helpers, excludes=["*.tmp"])

    assert helpers.started[0].runs > 0
    assert result.errors == []
    stored = _in_snapshot(alice, source)
    assert [path for path in stored if path.endswith(".tmp")] == []
    assert stored == [path for path in _on_disk(source) if not path.endswith(".tmp")]


def test_a_helper_that_cannot_log_in_leaves_its_work_to_the_backup_whatever_its_excludes(
    alice: BackupClient, tmp_path: Path, helper_starter
) -> None:
    """A helper that cannot log in leaves its work to the backup (test_backup_helper.py), also
    when the exclude patterns sent to it at its start do not fit in the pipe's buffer: the
    backup waits on the pipe until the helper gives up, and must then go on without it."""
    source = _tree(tmp_path / "src")
    helpers = helper_starter(alice, BackupHelper)
    helpers.token = "not-the-token"
    # Some 150 KiB of patterns, none of which matches: more than a pipe holds (64 KiB).
    excludes = [f"/no/such/place-{index:05d}/*.cache" for index in range(5000)]

    result = _backup(alice, source, helpers, excludes=excludes)

    assert result.errors == [] and helpers.started[0].stopped
    assert _restored(alice, source, tmp_path / "out") == []
