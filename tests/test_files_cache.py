"""The files cache on disk: an older format is dropped, never trusted."""

from __future__ import annotations

from pathlib import Path

from rpybackup_core.files_cache import FilesCache


def test_the_first_cache_format_is_removed_rather_than_trusted(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    for name in ("files.sqlite", "files.sqlite-wal", "files.sqlite-shm"):
        (directory / name).write_bytes(b"an old cache with bare sha256 digests")
    FilesCache(directory).close()
    assert not any((directory / name).exists() for name in ("files.sqlite", "files.sqlite-wal"))
    assert (directory / "files-v2.sqlite").exists()
