"""The client's files cache: lets a run skip reading files unchanged since an earlier run.

Keyed on path (a name that is not valid UTF-8 by its bytes); an entry is used only if size,
mtime_ns, ctime_ns and inode all still match. Entries are staged during a run and written only
after the snapshot is committed, so a failed run never leaves the cache pointing at chunks the
server did not accept. Past a few MiB of staged rows, what a run stages waits in temporary
tables (SQLite spills them to disk), so the client's memory does not grow with the number of
files in the tree.

It also knows directories: a directory whose entries all still stat as they did (names, kinds,
modes, owners, times, sizes, inodes) and whose subdirectories' trees are the same has the same
tree, so a run takes its tree ids and its files' chunk ids from one row instead of building a
node per file (``KnownDirectory``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .crypto import ID_SIZE
from .sqlrows import insert_rows

# A path unseen for this many runs is forgotten. A path seen again has its generation moved on
# only once it is _REFRESH_AFTER runs old: rewriting every row on every run made an unchanged
# run's commit (and the WAL checkpoint at close) rewrite the whole cache.
_FORGET_AFTER = 16
_REFRESH_AFTER = 8
_SQL_BATCH = 500
# Staged rows (~500 bytes with their objects) and kept paths (~100) held in memory before they
# go to the temporary tables; a run that stays below both writes straight into the cache at
# commit. 16,384 staged rows were 8 MiB of the 29 MiB Python held at a first backup's peak
# (/usr/share, tracemalloc): 4,096 took 2-5 MiB off the client's peak.
_SPILL_STAGED = 4096
_SPILL_KEPT = 65536
# Staged directory rows hold their files' chunk ids: spilled past about this many bytes
# (counting a row's objects as _DIRECTORY_ROW_BYTES besides its ids).
_SPILL_DIRECTORY_BYTES = 2 * 1024 * 1024
_DIRECTORY_ROW_BYTES = 512
# What of an entry's lstat a directory's tree shows (mode, owner, size, mtime) or that moves
# when its content does (ctime, inode), packed for its listing's digest; a text format cost
# four times as much (2.1 against 0.5 µs an entry).
_ENTRY_STAT = struct.Struct("<IIIqqqQ")
_RACY_FINE_NS = 100_000_000
_RACY_COARSE_NS = 2_000_000_000
_STALE_FILES = ("files.sqlite", "files.sqlite-wal", "files.sqlite-shm")


# Not frozen: a no-change run makes one per file, and a frozen dataclass sets each field
# through object.__setattr__ (1.8 against 0.55 µs). Its ids are a list of its own.
@dataclass(slots=True)
class CachedFile:
    digest: str
    size: int
    ids: list[bytes]
    # The run that last recorded the entry.
    generation: int


@dataclass(frozen=True)
class KnownDirectory:
    """What the cache holds of a directory: the ``ListingDigest`` of its entries when it
    learnt it (one digest per slice), its tree's chunk ids, a digest of its subdirectories'
    tree ids, its regular files' chunk ids and how many files and bytes they are. While its
    entries have that digest and its subdirectories' trees that one, its tree is the same."""

    listing: bytes
    tree: list[bytes]
    subtrees: bytes
    ids: list[bytes]
    files: int
    bytes: int
    generation: int


def is_racy(st: os.stat_result) -> bool:
    """Changed so recently that a same-size rewrite could still share its timestamps.

    Any write moves ctime, so ctime is what counts. Whole-second ctimes mean a filesystem with
    coarse timestamps (FAT, some network filesystems): a wider window applies there.
    """
    coarse = st.st_ctime_ns % 1_000_000_000 == 0
    window = _RACY_COARSE_NS if coarse else _RACY_FINE_NS
    return st.st_ctime_ns > time.time_ns() - window


class ListingDigest:
    """What a directory's entries (path and lstat, in name order, given a slice at a time)
    are, as far as its tree can tell: a digest per slice, so a directory of several slices
    that changed shows it at its first changed slice. Equal digests, equal entries
    (subdirectories' contents aside)."""

    def __init__(self) -> None:
        self._digests = bytearray()
        self.entries = 0
        self.slices = 0
        self._trusted = True

    def add(self, listed: list[tuple[str, os.stat_result]]) -> bytes | None:
        """The next slice's digest; ``None`` if an entry of it changed too recently to trust
        (``is_racy``) or a name is not valid UTF-8 (then the directory has no digest)."""
        self.entries += len(listed)
        self.slices += 1
        digest = _slice_digest(listed)
        if digest is None:
            self._trusted = False
        elif self._trusted:
            self._digests += digest
        return digest

    def digest(self) -> bytes | None:
        """Every slice's, joined: ``None`` if one of them had none."""
        return bytes(self._digests) if self._trusted else None


def _slice_digest(listed: list[tuple[str, os.stat_result]]) -> bytes | None:
    parts: list[bytes] = []
    pack = _ENTRY_STAT.pack
    try:
        for path, st in listed:
            if is_racy(st):
                return None
            parts.append(path.encode())
            parts.append(
                pack(
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                )
            )
    except (UnicodeEncodeError, struct.error):
        return None
    # A path holds no NUL byte and each stat is of one size: the joined bytes are unambiguous.
    return hashlib.blake2b(b"\0".join(parts), digest_size=32).digest()


def subtrees_digest(contents: list[list[bytes]]) -> bytes:
    """A digest of subdirectories' tree ids, in name order."""
    digest = hashlib.blake2b(digest_size=32)
    for ids in contents:
        digest.update(len(ids).to_bytes(4, "big"))
        digest.update(b"".join(ids))
    return digest.digest()


def _unchanged(st: os.stat_result, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bool:
    return (
        st.st_mtime_ns == mtime_ns
        and st.st_ctime_ns == ctime_ns
        and st.st_size == size
        and st.st_ino == inode
    )


def _key(path: str) -> str | bytes:
    """A path as the cache stores it: its text, or its bytes for a name that is not valid
    UTF-8 (a surrogate escape, which SQLite refuses as text)."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def file_row(
    path: str, st: os.stat_result, digest: str, ids: list[bytes]
) -> tuple[object, ...] | None:
    """A file's entry as the cache stores it (without its generation), or ``None`` if it
    changed too recently to trust.

    A file rewritten at the same size within one timestamp tick of being read would match
    its entry and keep stale content (git's "racy" files); such files are read again.
    """
    if is_racy(st):
        return None
    return (
        _key(path),
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        digest,
        b"".join(ids),
    )


def _path(key: str | bytes) -> str:
    return key if isinstance(key, str) else os.fsdecode(key)


class DirectoryRow(NamedTuple):
    """A directory as the cache stores it (without its generation): its prefix (ending in
    "/"), ``ListingDigest``, ``subtrees_digest``, tree ids and its regular files' chunk ids
    (each joined), how many files and bytes they are."""

    path: str
    listing: bytes
    subtrees: bytes
    tree: bytes
    ids: bytes
    files: int
    bytes: int


def _split_ids(ids: bytes) -> list[bytes]:
    # Most files are one chunk: no slicing loop for them (a no-change run looks up every file).
    if len(ids) == ID_SIZE:
        return [ids]
    return [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]


class FilesCache:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The first cache kept bare SHA-256 digests; its entries cannot fill a node now.
        for stale in _STALE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (directory / stale).unlink()
        self._db = sqlite3.connect(directory / "files-v2.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS files (
                path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
                inode INTEGER, digest TEXT, ids BLOB, generation INTEGER);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
            CREATE TEMP TABLE staged (
                path TEXT, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
                inode INTEGER, digest TEXT, ids BLOB, generation INTEGER);
            CREATE TEMP TABLE kept (path TEXT);
            CREATE TABLE IF NOT EXISTS dirs (
                path TEXT PRIMARY KEY, listing BLOB, subtrees BLOB, tree BLOB, ids BLOB,
                files INTEGER, bytes INTEGER, generation INTEGER);
            CREATE TEMP TABLE staged_dirs (
                path TEXT, listing BLOB, subtrees BLOB, tree BLOB, ids BLOB,
                files INTEGER, bytes INTEGER, generation INTEGER);
            CREATE TEMP TABLE kept_dirs (path TEXT);
            """
        )
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        self.generation = (row[0] if row else 0) + 1
        self._staged: list[tuple[object, ...]] = []
        self._kept: list[str | bytes] = []
        self._staged_dirs: list[tuple[object, ...]] = []
        self._staged_dir_bytes = 0
        self._kept_dirs: list[str] = []
        self._spilled = False

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def lookup(self, path: str, st: os.stat_result) -> CachedFile | None:
        return self.lookup_many([(path, st)]).get(path)

    def lookup_many(
        self, files: list[tuple[str, os.stat_result]], adjacent: bool = False
    ) -> dict[str, CachedFile]:
        """``lookup`` for many files (a directory's) with one query per few hundred paths.

        ``adjacent`` files are consecutive entries of one directory in sorted order with no
        subdirectory among them: between the first and the last the cache holds only their
        rows (and those of paths since gone), so they are read as one range of the key rather
        than looked up path by path, in about half the time."""
        found: dict[str, CachedFile] = {}
        keys = [_key(path) for path, _ in files]
        # A name kept by its bytes sorts after every text key: not within a range of text.
        if adjacent and keys and all(isinstance(key, str) for key in keys):
            self._collect(found, dict(files), "path >= ? AND path <= ?", [keys[0], keys[-1]])
            return found
        for start in range(0, len(files), _SQL_BATCH):
            batch = keys[start : start + _SQL_BATCH]
            where = f"path IN ({','.join('?' * len(batch))})"
            self._collect(found, dict(files[start : start + _SQL_BATCH]), where, batch)
        return found

    def _collect(
        self,
        found: dict[str, CachedFile],
        stats: dict[str, os.stat_result],
        where: str,
        keys: list[str | bytes],
    ) -> None:
        """Into ``found``: the rows ``where`` selects that are for a path of ``stats`` and
        still match its stat."""
        for key, size, mtime_ns, ctime_ns, inode, digest, ids, generation in self._db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode, digest, ids, generation FROM files "
            f"WHERE {where}",
            keys,
        ):
            path = _path(key)
            st = stats.get(path)
            if st is not None and _unchanged(st, size, mtime_ns, ctime_ns, inode):
                found[path] = CachedFile(digest, size, _split_ids(ids), generation)

    def known_directory(self, prefix: str, listing: bytes | None = None) -> KnownDirectory | None:
        """The directory ``prefix`` (ending in "/") as the cache learnt it, if it did (and if
        its entries then had the ``ListingDigest`` ``listing``, when given)."""
        row = self._db.execute(
            "SELECT listing, subtrees, tree, ids, files, bytes, generation FROM dirs "
            "WHERE path = ? AND listing = coalesce(?, listing)",
            (prefix, listing),
        ).fetchone()
        if row is None:
            return None
        listing, subtrees, tree, ids, files, size, generation = row
        return KnownDirectory(
            listing, _split_ids(tree), subtrees, _split_ids(ids), files, size, generation
        )

    def keep_directory(self, prefix: str, known: KnownDirectory, paths: list[str]) -> None:
        """A known directory stays as it is, and so do the entries of its ``paths`` (its
        non-directories); at commit their generation moves on if it has grown old."""
        if known.generation > self.generation - _REFRESH_AFTER:
            return
        self._kept_dirs.append(prefix)
        self._kept.extend(_key(path) for path in paths)
        if len(self._kept) + len(self._kept_dirs) >= _SPILL_KEPT:
            self._spill()

    def stage_directory(self, row: DirectoryRow) -> None:
        """Remember a directory for the next run."""
        self._staged_dirs.append((*row, self.generation))
        self._staged_dir_bytes += len(row.ids) + len(row.tree) + _DIRECTORY_ROW_BYTES
        if self._staged_dir_bytes >= _SPILL_DIRECTORY_BYTES:
            self._spill()

    def keep(self, path: str, entry: CachedFile) -> None:
        """An entry ``lookup`` matched stays as it is; at commit its generation moves on if it
        has grown old."""
        if entry.generation > self.generation - _REFRESH_AFTER:
            return
        self._kept.append(_key(path))
        if len(self._kept) >= _SPILL_KEPT:
            self._spill()

    def stage(self, path: str, st: os.stat_result, digest: str, ids: list[bytes]) -> None:
        """Remember a file for the next run, unless it changed too recently to trust
        (``file_row``)."""
        row = file_row(path, st, digest, ids)
        if row is not None:
            self.stage_row(row)

    def stage_row(self, row: tuple[object, ...]) -> None:
        """Remember a file by its ``file_row`` (one the backup's helper made)."""
        self._staged.append((*row, self.generation))
        if len(self._staged) >= _SPILL_STAGED:
            self._spill()

    def _spill(self) -> None:
        """Move what is held in memory to the temporary tables (one transaction)."""
        self._db.execute("BEGIN")
        insert_rows(self._db, "INSERT INTO temp.staged VALUES", self._staged)
        insert_rows(self._db, "INSERT INTO temp.kept VALUES", [(path,) for path in self._kept])
        insert_rows(self._db, "INSERT INTO temp.staged_dirs VALUES", self._staged_dirs)
        insert_rows(
            self._db, "INSERT INTO temp.kept_dirs VALUES", [(path,) for path in self._kept_dirs]
        )
        self._db.execute("COMMIT")
        self._forget_held()
        self._spilled = True

    def _forget_held(self) -> None:
        self._staged = []
        self._kept = []
        self._staged_dirs = []
        self._staged_dir_bytes = 0
        self._kept_dirs = []

    def commit(self) -> None:
        """Record the staged entries after a committed snapshot; forget long-unseen paths."""
        self._db.execute("BEGIN")
        insert_rows(self._db, "INSERT OR REPLACE INTO files VALUES", self._staged)
        insert_rows(self._db, "INSERT OR REPLACE INTO dirs VALUES", self._staged_dirs)
        self._refresh("files", self._kept)
        self._refresh("dirs", self._kept_dirs)
        if self._spilled:
            self._db.execute("INSERT OR REPLACE INTO files SELECT * FROM temp.staged")
            self._db.execute("INSERT OR REPLACE INTO dirs SELECT * FROM temp.staged_dirs")
            for table, kept in (("files", "kept"), ("dirs", "kept_dirs")):
                self._db.execute(
                    f"UPDATE {table} SET generation = ? "
                    f"WHERE path IN (SELECT path FROM temp.{kept})",
                    (self.generation,),
                )
            for temporary in ("staged", "kept", "staged_dirs", "kept_dirs"):
                self._db.execute(f"DELETE FROM temp.{temporary}")
        for table in ("files", "dirs"):
            self._db.execute(
                f"DELETE FROM {table} WHERE generation <= ?", (self.generation - _FORGET_AFTER,)
            )
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (self.generation,))
        self._db.execute("COMMIT")
        self._forget_held()
        self._spilled = False
        self.generation += 1

    def _refresh(self, table: str, paths: list[str] | list[str | bytes]) -> None:
        for start in range(0, len(paths), _SQL_BATCH):
            batch = paths[start : start + _SQL_BATCH]
            self._db.execute(
                f"UPDATE {table} SET generation = ? WHERE path IN ({','.join('?' * len(batch))})",
                [self.generation, *batch],
            )
