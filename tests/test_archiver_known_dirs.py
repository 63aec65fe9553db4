"""Known directories: a re-run takes the tree of a directory whose entries all stat as they did
from the files cache, without a node per file; every change below one is still backed up.

Real server on loopback, real files; the files cache's lookups and the archiver's reads are
counted by wrapping the real methods."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpybackup_core import archiver, files_cache
from rpybackup_core.archiver import Archiver
from rpybackup_core.client import BackupClient
from rpybackup_core.demo import compare_trees
from rpybackup_core.files_cache import FilesCache
from tests.conftest import knows_directory, listed, name_a_chunk_never_stored, settled

# ---- the tree -------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    """Files at the top and at several depths, a symlink, an empty directory."""
    for relative, text in [
        ("top.txt", "at the top\n"),
        ("a/one.txt", "one\n" * 40),
        ("a/two.txt", "two\n" * 40),
        ("a/gone.txt", "removed later\n"),
        ("a/b/f1.txt", "first\n" * 90),
        ("a/b/f2.txt", "second\n" * 90),
        ("e/1/2/3/deep.txt", "deep down\n" * 30),
        ("e/1/beside.txt", "beside the deep one\n"),
    ]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "a" / "b" / "link").symlink_to("f1.txt")
    (root / "c").mkdir()
    return root


def _directories(source: Path) -> list[Path]:
    """The directories under ``source`` (and itself) that have entries: an empty one costs a
    run one listing, and the cache does not keep it."""
    return sorted(Path(folder) for folder, dirs, files in os.walk(source) if dirs or files)


def _known(cache_dir: Path, directory: Path) -> bool:
    """Whether the files cache in ``cache_dir`` knows ``directory`` as its entries are now."""
    cache = FilesCache(cache_dir)
    try:
        return knows_directory(cache, directory)
    finally:
        cache.close()


class _Counted:
    """The paths the files cache is asked to look up and the files the archiver reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.looked_up: list[str] = []
        self.read: list[str] = []
        lookup_many, read_content = FilesCache.lookup_many, Archiver.read_content

        def counted_lookup(
            cache: FilesCache, files: list[tuple[str, os.stat_result]], adjacent: bool = False
        ) -> object:
            self.looked_up.extend(path for path, _ in files)
            return lookup_many(cache, files, adjacent)

        def counted_read(archiver: Archiver, path: str) -> object:
            self.read.append(path)
            return read_content(archiver, path)

        monkeypatch.setattr(FilesCache, "lookup_many", counted_lookup)
        monkeypatch.setattr(Archiver, "read_content", counted_read)


def _restores_identical(client: BackupClient, source: Path, target: Path) -> None:
    _, result = client.restore("latest", target)
    assert result.errors == []
    assert compare_trees(source, target / source.relative_to("/")) == []


def _tree_ids(client: BackupClient, directory: Path) -> list[bytes]:
    """The chunk ids of ``directory``'s tree in the latest snapshot."""
    (entry,) = [
        entry for entry in listed(client, str(directory.parent)) if entry.path == str(directory)
    ]
    return entry.node.content


@pytest.fixture
def alice(server) -> BackupClient:
    server.enroll("alice")
    return server.client("alice")


# ---- specifications -------------------------------------------------------------------------


def test_a_re_run_of_an_unchanged_tree_takes_every_directory_from_the_cache(
    alice: BackupClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first backup teaches the cache every directory; the next run looks up no file,
    reads none, and stores the same tree with the same counts."""
    source = _tree(tmp_path / "src")
    settled(source)
    first = alice.backup([str(source)])
    assert all(_known(alice.config.cache_path, folder) for folder in _directories(source))
    tree = _tree_ids(alice, source)

    counted = _Counted(monkeypatch)
    second = alice.backup([str(source)])
    assert counted.looked_up == [] and counted.read == []
    assert _tree_ids(alice, source) == tree
    assert (second.files, second.dirs, second.bytes) == (first.files, first.dirs, first.bytes)
    _restores_identical(alice, source, tmp_path / "out")


def test_every_kind_of_change_below_known_directories_is_backed_up(
    alice: BackupClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed, added, removed, re-moded and re-linked entries, a touched directory and a
    change three levels below untouched ones: what changed is read again (a new mode moves a
    file's ctime), the rest comes from the cache, and the snapshot restores identical. The run
    after that knows every directory again."""
    source = _tree(tmp_path / "src")
    settled(source)
    alice.backup([str(source)])

    (source / "a" / "b" / "f1.txt").write_text("FIRST\n" * 90)
    (source / "a" / "two.txt").chmod(0o600)
    (source / "a" / "gone.txt").unlink()
    (source / "c" / "new.txt").write_text("added\n")
    (source / "a" / "b" / "link").unlink()
    (source / "a" / "b" / "link").symlink_to("f2.txt")
    os.utime(source / "e" / "1" / "2", ns=(1_000_000_000, 1_000_000_000))
    (source / "e" / "1" / "2" / "3" / "deep.txt").write_text("changed deep down\n" * 30)
    settled(source)
    counted = _Counted(monkeypatch)
    alice.backup([str(source)])
    assert sorted(counted.read) == sorted(
        str(source / relative)
        for relative in ["a/b/f1.txt", "a/two.txt", "c/new.txt", "e/1/2/3/deep.txt"]
    )
    _restores_identical(alice, source, tmp_path / "out")

    assert all(_known(alice.config.cache_path, folder) for folder in _directories(source))
    counted.looked_up.clear()
    counted.read.clear()
    alice.backup([str(source)])
    assert counted.looked_up == [] and counted.read == []


def test_a_file_of_a_known_directory_whose_chunk_the_server_lacks_is_read_again(
    alice: BackupClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache names a chunk the server never stored (as if lost) for one file of an
    unchanged directory: that file, and only that one, is read and stored again."""
    source = _tree(tmp_path / "src")
    settled(source)
    alice.backup([str(source)])
    lacking = source / "a" / "b" / "f2.txt"
    name_a_chunk_never_stored(alice.config.cache_path, lacking)

    counted = _Counted(monkeypatch)
    alice.backup([str(source)])
    assert counted.read == [str(lacking)]
    _restores_identical(alice, source, tmp_path / "out")


def test_a_directory_with_an_entry_changed_moments_ago_is_not_remembered(
    alice: BackupClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry changed within the racy window could change again without its stat showing
    it: its directory is left to the next run to learn (the other directories are known)."""
    source = _tree(tmp_path / "src")
    settled(source)
    fresh = source / "a" / "b" / "f2.txt"
    # The backup takes longer than the window: the file counts as changed moments ago.
    fresh_inode, racy = fresh.stat().st_ino, files_cache.is_racy
    monkeypatch.setattr(files_cache, "is_racy", lambda st: st.st_ino == fresh_inode or racy(st))
    alice.backup([str(source)])
    monkeypatch.undo()
    assert not _known(alice.config.cache_path, fresh.parent)
    assert _known(alice.config.cache_path, source / "e" / "1" / "2" / "3")


def _wide(source: Path) -> Path:
    """A directory of 11 entries (three slices of four): nine files and two subdirectories,
    each with a file."""
    wide = source / "wide"
    for sub in ("s1", "s2"):
        (wide / sub).mkdir(parents=True)
        (wide / sub / "inner.txt").write_text(f"inside {sub}\n")
    for index in range(9):
        (wide / f"w{index}").write_text(f"{index}\n" * 30)
    return wide


def test_a_directory_walked_in_slices_is_known_and_its_changes_are_backed_up(
    alice: BackupClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory of several slices is learnt whole and known on the next run; when one of
    its files changed it is walked as any directory (its subdirectories, walked while its
    entries were compared, are not walked twice); when only a subdirectory changed, its tree
    is built again. Each time only what changed is read, and the snapshot restores identical."""
    monkeypatch.setattr(archiver, "_WALK_SLICE", 4)
    source = tmp_path / "src"
    wide = _wide(source)
    settled(source)
    alice.backup([str(source)])
    assert _known(alice.config.cache_path, wide)

    counted = _Counted(monkeypatch)
    alice.backup([str(source)])
    assert counted.looked_up == [] and counted.read == []

    for changed in (wide / "w5", wide / "s2" / "inner.txt"), (wide / "s1" / "inner.txt",):
        for path in changed:
            path.write_text(f"{path.name} changed\n")
        settled(source)
        counted.read.clear()
        alice.backup([str(source)])
        assert sorted(counted.read) == sorted(str(path) for path in changed)
        _restores_identical(alice, source, tmp_path / f"out-{len(changed)}")
        assert _known(alice.config.cache_path, wide)

    counted.looked_up.clear()
    alice.backup([str(source)])
    assert counted.looked_up == []


def test_a_directory_of_more_entries_than_the_cache_learns_is_looked_up_file_by_file(
    alice: BackupClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archiver, "_WALK_SLICE", 4)
    monkeypatch.setattr(archiver, "_LEARN_ENTRIES", 6)
    source = tmp_path / "src"
    wide = _wide(source)
    (source / "narrow").mkdir()
    (source / "narrow" / "n").write_text("one\n")
    settled(source)
    alice.backup([str(source)])
    assert not _known(alice.config.cache_path, wide)
    assert _known(alice.config.cache_path, source / "narrow")

    counted = _Counted(monkeypatch)
    alice.backup([str(source)])
    assert sorted(counted.looked_up) == sorted(
        str(path) for path in wide.iterdir() if path.is_file()
    )
    assert counted.read == []
