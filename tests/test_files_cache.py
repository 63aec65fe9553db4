"""The files cache on disk: an older format is dropped, never trusted; a run of any size
commits the same cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpybackup_core import files_cache
from rpybackup_core.files_cache import FilesCache


def test_the_first_cache_format_is_removed_rather_than_trusted(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    for name in ("files.sqlite", "files.sqlite-wal", "files.sqlite-shm"):
        (directory / name).write_bytes(b"an old cache with bare sha256 digests")
    FilesCache(directory).close()
    assert not any((directory / name).exists() for name in ("files.sqlite", "files.sqlite-wal"))
    assert (directory / "files-v2.sqlite").exists()


def _files(root: Path, count: int) -> list[tuple[str, os.stat_result]]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        path = root / f"f{index}"
        path.write_bytes(bytes([index]) * 10)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        files.append((str(path), os.stat(path)))
    return files


def test_a_run_larger_than_memory_holds_spills_and_commits_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a bound, staged rows and kept paths wait in temporary tables; the cache a commit
    leaves is the one an in-memory run leaves, and kept entries keep surviving generations."""
    monkeypatch.setattr(files_cache, "_SPILL_STAGED", 3)
    monkeypatch.setattr(files_cache, "_SPILL_KEPT", 2)
    monkeypatch.setattr(files_cache, "_FORGET_AFTER", 3)
    monkeypatch.setattr(files_cache, "_REFRESH_AFTER", 1)
    monkeypatch.setattr(files_cache, "is_racy", lambda st: False)
    files = _files(tmp_path / "src", 10)
    cache = FilesCache(tmp_path / "cache")
    for index, (path, st) in enumerate(files):
        cache.stage(path, st, "blake3:" + "0" * 64, [bytes([index]) * 32])
    cache.commit()
    for _ in range(5):
        # Every later run finds all ten unchanged and keeps them.
        hits = cache.lookup_many(files)
        assert sorted(hits) == sorted(path for path, _ in files)
        for path, entry in hits.items():
            cache.keep(path, entry)
        cache.commit()
    assert cache.lookup_many(files)[files[7][0]].ids == [bytes([7]) * 32]
    cache.close()


def test_what_a_run_stages_is_gone_if_it_never_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_cache, "_SPILL_STAGED", 3)
    monkeypatch.setattr(files_cache, "is_racy", lambda st: False)
    files = _files(tmp_path / "src", 8)
    cache = FilesCache(tmp_path / "cache")
    for path, st in files:
        cache.stage(path, st, "blake3:" + "0" * 64, [b"\x01" * 32])
    cache.close()
    reopened = FilesCache(tmp_path / "cache")
    assert reopened.lookup_many(files) == {}
    reopened.close()


def test_an_entry_is_rewritten_only_once_it_has_aged_and_forgotten_once_long_unseen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that finds a file unchanged leaves its row alone unless the row has grown old;
    a path no run has seen for _FORGET_AFTER runs is dropped."""
    monkeypatch.setattr(files_cache, "_FORGET_AFTER", 4)
    monkeypatch.setattr(files_cache, "_REFRESH_AFTER", 2)
    monkeypatch.setattr(files_cache, "is_racy", lambda st: False)
    (seen, seen_st), (gone, gone_st) = _files(tmp_path / "src", 2)
    cache = FilesCache(tmp_path / "cache")
    cache.stage(seen, seen_st, "blake3:" + "0" * 64, [b"\x01" * 32])
    cache.stage(gone, gone_st, "blake3:" + "0" * 64, [b"\x02" * 32])
    cache.commit()
    generations = []
    for _ in range(8):
        entry = cache.lookup_many([(seen, seen_st)])[seen]
        generations.append(entry.generation)
        cache.keep(seen, entry)
        cache.commit()
    assert generations == [1, 1, 3, 3, 5, 5, 7, 7]
    assert seen in cache.lookup_many([(seen, seen_st)])
    assert cache.lookup_many([(gone, gone_st)]) == {}
    cache.close()


def test_adjacent_files_are_read_as_a_range_and_found_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as one range, a directory's files find the same entries as looked up one by one:
    rows in between that belong to no file asked about (a subdirectory since removed) are not
    taken, and a name kept by its bytes is found too."""
    monkeypatch.setattr(files_cache, "is_racy", lambda st: False)
    files = _files(tmp_path / "src", 6)
    latin1 = os.path.join(os.fsencode(tmp_path / "src"), b"f3\xe9")
    with open(latin1, "wb") as handle:
        handle.write(b"x")
    files.insert(4, (os.fsdecode(latin1), os.stat(latin1)))
    gone = str(tmp_path / "src" / "f2" / "inside-a-removed-directory")
    cache = FilesCache(tmp_path / "cache")
    for index, (path, st) in enumerate([*files, (gone, files[2][1])]):
        cache.stage(path, st, "blake3:" + "0" * 64, [bytes([index]) * 32])
    cache.commit()
    asked = [files[index] for index in (1, 2, 3, 4, 5)]
    changed = files[5][0], os.stat(tmp_path / "src" / "f0")
    text_only = [files[index] for index in (1, 2, 3)]

    for lookup in (asked, text_only, [*text_only, changed]):
        ranged = cache.lookup_many(lookup, adjacent=True)
        assert ranged == cache.lookup_many(lookup)
        assert sorted(ranged) == sorted(path for path, st in lookup if st is not changed[1])
    cache.close()


def _directory(cache: FilesCache, prefix: str, listing: bytes, ids: bytes) -> None:
    cache.stage_directory(
        files_cache.DirectoryRow(prefix, listing, b"s" * 32, b"t" * 32, ids, len(ids) // 32, 10)
    )


def test_a_known_directory_is_found_only_by_its_listing_and_only_once_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged directories wait (past a bound, in temporary tables) for the commit; a run that
    never commits leaves none; a committed one is found by its path and listing digest."""
    monkeypatch.setattr(files_cache, "_SPILL_DIRECTORY_BYTES", 64)
    cache = FilesCache(tmp_path / "cache")
    for index in range(5):
        _directory(cache, f"/d{index}/", bytes([index]) * 32, bytes([index]) * 96)
    cache.close()
    cache = FilesCache(tmp_path / "cache")
    assert cache.known_directory("/d1/", b"\x01" * 32) is None
    for index in range(5):
        _directory(cache, f"/d{index}/", bytes([index]) * 32, bytes([index]) * 96)
    cache.commit()
    known = cache.known_directory("/d3/", b"\x03" * 32)
    assert known is not None
    assert (known.tree, known.subtrees, known.ids) == ([b"t" * 32], b"s" * 32, [b"\x03" * 32] * 3)
    assert (known.files, known.bytes) == (3, 10)
    assert cache.known_directory("/d3/", b"\x04" * 32) is None
    cache.close()


def test_a_kept_directory_and_its_files_outlive_runs_an_unseen_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that finds a directory known keeps its row and its files' rows, refreshing them
    once they have aged; a directory no run has seen for _FORGET_AFTER runs is dropped."""
    monkeypatch.setattr(files_cache, "_FORGET_AFTER", 4)
    monkeypatch.setattr(files_cache, "_REFRESH_AFTER", 2)
    monkeypatch.setattr(files_cache, "is_racy", lambda st: False)
    files = _files(tmp_path / "src", 2)
    cache = FilesCache(tmp_path / "cache")
    for path, st in files:
        cache.stage(path, st, "blake3:" + "0" * 64, [b"\x01" * 32])
    _directory(cache, "/seen/", b"s" * 32, b"\x01" * 64)
    _directory(cache, "/gone/", b"g" * 32, b"")
    cache.commit()
    generations = []
    for _ in range(8):
        known = cache.known_directory("/seen/", b"s" * 32)
        assert known is not None
        generations.append(known.generation)
        cache.keep_directory("/seen/", known, [path for path, _ in files])
        cache.commit()
    assert generations == [1, 1, 3, 3, 5, 5, 7, 7]
    assert cache.known_directory("/gone/", b"g" * 32) is None
    assert sorted(cache.lookup_many(files)) == sorted(path for path, _ in files)
    cache.close()
