"""The server's repository: per-client chunk index, packs and snapshots, in SQLite (WAL).

Every method that touches client data takes the authenticated client's numeric id; nothing a
client sends becomes a path. Commit order: pack durable -> index rows -> snapshot row, so a crash
anywhere leaves every earlier snapshot intact (see docs/repository.md).
"""

from __future__ import annotations

import array
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from .batching import batched
from .crypto import storage_hash_matches
from .errors import (
    AuthenticationFailed,
    EnrollmentFailed,
    IntegrityError,
    InvalidRequest,
    NotFound,
    StorageError,
)
from .faults import crash_point
from .pack import PackWriter
from .rowset import RowSet
from .sqlrows import insert_rows, packed_rows
from .storage import Backend, LocalBackend

log = logging.getLogger(__name__)

PACKS = "packs"
DB_FILE = "repo.sqlite"
_SQL_BATCH = 500
# How long a statement waits for another connection's lock (a CLI prune beside the daemon).
_BUSY_SECONDS = 30
# Row ids a snapshot's reference list is compressed and decompressed by at a time.
_REFS_PIECE = 65536
# In "WHERE +client_id = ? AND id IN (...)" the unary + keeps SQLite from choosing the
# (client_id, chunk_id) index, which would scan every chunk of the client per batch, over the
# row-id lookups (measured: 84 ms -> 3 ms to verify 20,000 references).

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    token_hash BLOB,
    wrapped_key TEXT,
    created REAL NOT NULL,
    enrolled REAL,
    last_seen REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS enroll_codes (
    code_hash BLOB PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    expires REAL NOT NULL,
    used REAL
);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients(id),
    name TEXT UNIQUE NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    client_id INTEGER NOT NULL,
    chunk_id BLOB NOT NULL,
    pack_id INTEGER NOT NULL REFERENCES packs(id),
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (client_id, chunk_id)
);
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks(pack_id);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients(id),
    time REAL NOT NULL,
    tags TEXT NOT NULL,
    sealed_meta TEXT NOT NULL,
    stats TEXT NOT NULL,
    root BLOB NOT NULL,
    parent TEXT,
    refs BLOB NOT NULL,
    ref_count INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_client ON snapshots(client_id, time);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS client_state (
    client_id INTEGER PRIMARY KEY REFERENCES clients(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    last_report REAL NOT NULL,
    last_backup REAL,
    last_result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retention (
    client_id INTEGER PRIMARY KEY REFERENCES clients(id) ON DELETE CASCADE,
    policy TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prunes (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    origin TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS prunes_by_client ON prunes(client_id, time);
CREATE TABLE IF NOT EXISTS pins (
    session TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    PRIMARY KEY (session, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pack_orphans (
    name TEXT PRIMARY KEY,
    first_seen REAL NOT NULL
);
"""


def hash_secret(secret: str) -> bytes:
    """Enrollment codes and tokens are 100+ random bits, so a plain SHA-256 is a safe store."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def make_enrollment_code() -> str:
    raw = secrets.token_bytes(15)
    text = "".join("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[b % 32] for b in raw)
    return "-".join(text[i : i + 5] for i in range(0, 15, 5))


def normalize_code(code: str) -> str:
    return code.strip().upper().replace(" ", "")


def iso_time(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def encode_refs(rowids: Iterable[int], count: int) -> bytes:
    """``count`` chunk row ids given in increasing order, delta-encoded and zstd-compressed (a
    byte or two per reference), compressed as they come so no list of them is ever held."""
    # Told the size, zstd sizes its window and tables to it (as a one-shot compression
    # does); not told, it took ~10 MiB that the server's heap then kept.
    compressor = zstandard.ZstdCompressor(level=9).compressobj(size=count * 8)
    compressed = []
    deltas = array.array("Q")
    previous = 0
    for rowid in rowids:
        deltas.append(rowid - previous)
        previous = rowid
        if len(deltas) == _REFS_PIECE:
            compressed.append(compressor.compress(deltas.tobytes()))
            del deltas[:]
    compressed.append(compressor.compress(deltas.tobytes()))
    compressed.append(compressor.flush())
    return b"".join(compressed)


def decode_refs(blob: bytes) -> Iterator[int]:
    """The row ids of ``encode_refs``, in increasing order, decompressed as they are taken."""
    reader = zstandard.ZstdDecompressor().stream_reader(blob)
    total = 0
    # A read may end inside a delta: its first bytes wait for the next read.
    partial = b""
    while piece := reader.read(_REFS_PIECE * 8):
        piece = partial + piece
        whole = len(piece) - len(piece) % 8
        partial = piece[whole:]
        deltas = array.array("Q")
        deltas.frombytes(piece[:whole])
        for delta in deltas:
            total += delta
            yield total
    if partial:
        raise IntegrityError("a snapshot's reference list is cut short")


def _indexed(db: sqlite3.Connection, client_id: int, ids: list[bytes]) -> dict[bytes, int]:
    """Each of ``ids`` that ``db`` has indexed for the client, with its row id."""
    return {
        chunk_id: rowid
        for rowid, chunk_id in _chunk_rows(db, "client_id = ? AND chunk_id", client_id, ids)
    }


def _chunk_rows(
    db: sqlite3.Connection, where: str, client_id: int, keys: Sequence[Any]
) -> Iterator[tuple[int, bytes]]:
    """(row id, chunk id) of each chunk row with ``where`` (ending in the column that
    ``keys`` are of) ``IN keys``, for the client, in batches."""
    for start in range(0, len(keys), _SQL_BATCH):
        batch = keys[start : start + _SQL_BATCH]
        marks = ",".join("?" * len(batch))
        for rowid, chunk_hex in packed_rows(
            db, "id, hex(chunk_id)", f"FROM chunks WHERE {where} IN ({marks})", [client_id, *batch]
        ):
            yield rowid, bytes.fromhex(chunk_hex)


@dataclass(frozen=True)
class ClientRecord:
    id: int
    name: str
    admin: bool
    created: float
    enrolled: float | None
    last_seen: float | None
    revoked: bool
    has_key: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "admin": self.admin,
            "enrolled": iso_time(self.enrolled) if self.enrolled else None,
            "last_seen": iso_time(self.last_seen) if self.last_seen else None,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class SnapshotRecord:
    id: str
    client_id: int
    time: float
    tags: list[str]
    sealed_meta: str
    stats: dict[str, Any]
    root: list[bytes]
    parent: str | None
    ref_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": iso_time(self.time),
            "tags": self.tags,
            "meta": self.sealed_meta,
            "stats": self.stats,
            "root": [chunk_id.hex() for chunk_id in self.root],
            "parent": self.parent,
            "chunks": self.ref_count,
        }


@dataclass(frozen=True)
class PackUsage:
    id: int
    name: str
    size: int
    live_chunks: int
    live_bytes: int


@dataclass(frozen=True)
class ChunkLocation:
    rowid: int
    chunk_id: bytes
    pack: str
    offset: int
    length: int
    storage_hash: bytes


class Repository:
    """Thread-safe: one SQLite connection behind a lock; pack I/O happens outside it."""

    def __init__(self, data_dir: Path, backend: Backend | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.backend = backend or LocalBackend(data_dir / "storage")
        self.temp_dir = data_dir / "tmp"
        self._lock = threading.RLock()
        db_path = data_dir / DB_FILE
        # SQLite gives its -wal and -shm files the database file's mode: make it private first.
        db_path.touch(mode=0o600, exist_ok=True)
        db_path.chmod(0o600)
        self._db = sqlite3.connect(
            db_path, check_same_thread=False, isolation_level=None, timeout=_BUSY_SECONDS
        )
        # Only takes effect in a database without tables yet: a new repository gives the pages
        # that pins and pruned chunks free back to the file system (see compact()).
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Statement journals (the undo log of a statement that may abort halfway inside a
        # transaction) spill to a temporary file past 64 KiB: a first backup of 47,600 small
        # files wrote 137 MB there in 66,500 writes. In memory each lasts one statement, and
        # the statements that keep one are bounded: index rows go in at most 256 at a time
        # (their pack's foreign key may abort them), deletions 500.
        self._db.execute("PRAGMA temp_store=MEMORY")
        with self._lock:
            self._db.executescript(SCHEMA)
        # Lookups in the chunk index (has-checks, locating chunks to read) on a connection of
        # their own: in WAL mode they run beside a write transaction, where they waited for the
        # lock while a pack's index rows went in (~0.9 s over a first backup of 1 GB).
        self._reader = sqlite3.connect(
            db_path, check_same_thread=False, isolation_level=None, timeout=_BUSY_SECONDS
        )
        self._reader.execute("PRAGMA query_only=ON")
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # "database or disk is full", "disk I/O error", "database is locked".
                raise StorageError(f"server database failed: {exc}") from exc

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def audit(self, event: str, client: str | None, **detail: Any) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO audit(time, client, event, detail) VALUES (?, ?, ?, ?)",
                (time.time(), client, event, json.dumps(detail, sort_keys=True)),
            )

    # ---- clients ----------------------------------------------------------------------------

    _CLIENT_COLUMNS = (
        "id, name, admin, created, enrolled, last_seen, revoked, wrapped_key IS NOT NULL"
    )

    @staticmethod
    def _client(row: tuple[Any, ...]) -> ClientRecord:
        return ClientRecord(
            row[0], row[1], bool(row[2]), row[3], row[4], row[5], bool(row[6]), bool(row[7])
        )

    def client_by_name(self, name: str) -> ClientRecord:
        rows = self._query(f"SELECT {self._CLIENT_COLUMNS} FROM clients WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no client named {name!r}")
        return self._client(rows[0])

    def list_clients(self) -> list[ClientRecord]:
        rows = self._query(f"SELECT {self._CLIENT_COLUMNS} FROM clients ORDER BY name")
        return [self._client(row) for row in rows]

    def add_client(self, name: str, admin: bool, ttl: int, reenroll: bool = False) -> str:
        """Register a client (or re-enroll an existing one) and return a one-time code."""
        code = make_enrollment_code()
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT id, revoked FROM clients WHERE name = ?", (name,)).fetchone()
            if row and not reenroll and not row[1]:
                raise InvalidRequest(
                    f"client {name!r} already exists; use --reenroll to issue a new code"
                )
            if row:
                client_id = row[0]
                db.execute("UPDATE clients SET admin = ? WHERE id = ?", (int(admin), client_id))
            else:
                cursor = db.execute(
                    "INSERT INTO clients(name, admin, created) VALUES (?, ?, ?)",
                    (name, int(admin), now),
                )
                client_id = int(cursor.lastrowid or 0)
            db.execute("DELETE FROM enroll_codes WHERE client_id = ?", (client_id,))
            db.execute(
                "INSERT INTO enroll_codes(code_hash, client_id, expires) VALUES (?, ?, ?)",
                (hash_secret(normalize_code(code)), client_id, now + ttl),
            )
        self.audit("client_add", name, admin=admin, reenroll=bool(row))
        return code

    def remove_client(self, name: str) -> None:
        """Revoke a client's credential; its snapshots stay until retention removes them."""
        client = self.client_by_name(name)
        with self._transaction() as db:
            db.execute(
                "UPDATE clients SET revoked = 1, token_hash = NULL WHERE id = ?", (client.id,)
            )
            db.execute("DELETE FROM enroll_codes WHERE client_id = ?", (client.id,))
        self.audit("client_remove", name)

    def enroll(self, code: str) -> tuple[ClientRecord, str]:
        """Spend a one-time code; returns the client and its new secret token."""
        digest = hash_secret(normalize_code(code))
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT client_id, expires, used FROM enroll_codes WHERE code_hash = ?", (digest,)
            ).fetchone()
            if row is None:
                raise EnrollmentFailed("enrollment code is not valid")
            client_id, expires, used = row
            if used is not None:
                raise EnrollmentFailed("enrollment code was already used")
            if expires < now:
                raise EnrollmentFailed("enrollment code has expired; ask for a new one")
            db.execute("UPDATE enroll_codes SET used = ? WHERE code_hash = ?", (now, digest))
            db.execute(
                "UPDATE clients SET token_hash = ?, enrolled = ?, revoked = 0 WHERE id = ?",
                (hash_secret(token), now, client_id),
            )
            record = self._client(
                db.execute(
                    f"SELECT {self._CLIENT_COLUMNS} FROM clients WHERE id = ?", (client_id,)
                ).fetchone()
            )
        self.audit("enroll", record.name)
        return record, token

    def authenticate(self, name: str, token: str) -> ClientRecord:
        rows = self._query(
            f"SELECT {self._CLIENT_COLUMNS}, token_hash FROM clients WHERE name = ?", (name,)
        )
        # Compare against a dummy digest when the name is unknown, so timing does not tell.
        stored = rows[0][-1] if rows and rows[0][-1] else b"\x00" * 32
        valid = hmac.compare_digest(stored, hash_secret(token))
        if not rows or not valid or rows[0][6]:
            raise AuthenticationFailed("client name or credential not accepted")
        return self._client(rows[0][:-1])

    def touch(self, client_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE clients SET last_seen = ? WHERE id = ?", (time.time(), client_id))

    def set_wrapped_key(self, client_id: int, wrapped: str) -> None:
        """Store the passphrase-wrapped key once; clients can never overwrite it."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT wrapped_key FROM clients WHERE id = ?", (client_id,)
            ).fetchone()
            if row and row[0] is not None:
                raise InvalidRequest("a wrapped key is already stored for this client")
            db.execute("UPDATE clients SET wrapped_key = ? WHERE id = ?", (wrapped, client_id))

    def wrapped_key(self, client_id: int) -> str | None:
        rows = self._query("SELECT wrapped_key FROM clients WHERE id = ?", (client_id,))
        return rows[0][0] if rows else None

    # ---- chunks -----------------------------------------------------------------------------

    def lookup(self, client_id: int, ids: list[bytes]) -> dict[bytes, int]:
        """Map each indexed chunk id of this client to its row id; unknown ids are absent.
        Sees what is committed, beside any write in progress."""
        with self._read_lock:
            return _indexed(self._reader, client_id, ids)

    def new_pack(self) -> PackWriter:
        return PackWriter(self.temp_dir)

    def _store_pack_file(self, client_id: int, writer: PackWriter) -> str:
        """Finish the pack and make it durable in the backend; returns its name."""
        local = writer.finish()
        name = f"{client_id}/{writer.name[:2]}/{writer.name}"
        try:
            self.backend.put_file(PACKS, name, local)
        except StorageError:
            writer.abort()
            raise
        return name

    def commit_pack(
        self, client_id: int, writer: PackWriter, session: str | None = None
    ) -> dict[bytes, int]:
        """Make a pack durable in the backend, then index its chunks; returns their row ids.

        With a session key the returned rows are pinned for that session in the same
        transaction, so GC cannot free them before the session's snapshot refers to them.
        """
        name = self._store_pack_file(client_id, writer)
        crash_point("after_pack_store")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO packs(client_id, name, size, created) VALUES (?, ?, ?, ?)",
                (client_id, name, writer.size, time.time()),
            )
            pack_id = cursor.lastrowid
            # A concurrent session may have indexed the same chunk first; its copy wins and
            # ours becomes garbage for GC.
            insert_rows(
                db,
                "INSERT OR IGNORE INTO chunks(client_id, chunk_id, pack_id, offset, length, "
                "hash) VALUES",
                [
                    (client_id, e.chunk_id, pack_id, e.offset, e.length, e.storage_hash)
                    for e in writer.entries
                ],
            )
            rowids = _indexed(db, client_id, [entry.chunk_id for entry in writer.entries])
            if session is not None:
                self._pin(db, session, rowids.values())
        crash_point("after_index_insert")
        log.debug("pack %s committed: %d chunks, %d bytes", name, len(writer.entries), writer.size)
        return rowids

    def locate(self, client_id: int, ids: list[bytes]) -> dict[bytes, ChunkLocation]:
        found: dict[bytes, ChunkLocation] = {}
        for start in range(0, len(ids), _SQL_BATCH):
            batch = ids[start : start + _SQL_BATCH]
            marks = ",".join("?" * len(batch))
            with self._read_lock:
                rows = packed_rows(
                    self._reader,
                    "c.id, hex(c.chunk_id), p.name, c.offset, c.length, hex(c.hash)",
                    "FROM chunks c JOIN packs p ON p.id = c.pack_id "
                    f"WHERE c.client_id = ? AND c.chunk_id IN ({marks})",
                    [client_id, *batch],
                )
            for rowid, chunk_hex, pack, offset, length, hash_hex in rows:
                chunk_id = bytes.fromhex(chunk_hex)
                found[chunk_id] = ChunkLocation(
                    rowid, chunk_id, pack, offset, length, bytes.fromhex(hash_hex)
                )
        return found

    def read_chunks(
        self, client_id: int, ids: list[bytes], where: dict[bytes, ChunkLocation]
    ) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """Yield (id, sealed blob) in the order asked, each verified against its storage hash;
        ``where`` is what ``locate`` found for every one of ``ids``.

        Chunks that lie back to back in one pack (a restore asks in backup order) are read
        with one backend request per run instead of one per chunk.
        """
        for run in _contiguous_runs(ids, where):
            first, last = run[0][1], run[-1][1]
            try:
                span: bytes | None = self.backend.get_range(
                    PACKS, first.pack, first.offset, last.offset + last.length - first.offset
                )
            except NotFound:
                span = None
            for chunk_id, location in run:
                if span is not None:
                    start = location.offset - first.offset
                    data: bytes | memoryview = memoryview(span)[start : start + location.length]
                else:
                    location, data = self._read_relocated(client_id, chunk_id, location)
                if not storage_hash_matches(data, location.storage_hash):
                    log.error(
                        "chunk %s in pack %s fails its storage hash", chunk_id.hex(), location.pack
                    )
                    raise IntegrityError(
                        f"chunk {chunk_id.hex()[:16]} in pack {location.pack} is damaged on the "
                        "server"
                    )
                yield chunk_id, data

    def _read_relocated(
        self, client_id: int, chunk_id: bytes, location: ChunkLocation
    ) -> tuple[ChunkLocation, bytes]:
        try:
            return location, self.backend.get_range(
                PACKS, location.pack, location.offset, location.length
            )
        except NotFound:
            # GC may have repacked the chunk after it was located: look it up once more.
            moved = self.locate(client_id, [chunk_id]).get(chunk_id)
            if moved is None:
                raise
            return moved, self.backend.get_range(PACKS, moved.pack, moved.offset, moved.length)

    # ---- snapshots --------------------------------------------------------------------------

    def add_snapshot(self, client_id: int, meta: dict[str, Any], refs: RowSet) -> str:
        """Commit a snapshot; every referenced chunk must already be durably indexed."""
        snapshot_id = secrets.token_hex(16)
        with self._transaction() as db:
            present = 0
            for batch in batched(refs, _SQL_BATCH):
                marks = ",".join("?" * len(batch))
                present += db.execute(
                    f"SELECT COUNT(*) FROM chunks WHERE +client_id = ? AND id IN ({marks})",
                    [client_id, *batch],
                ).fetchone()[0]
            if present != len(refs):
                raise InvalidRequest("snapshot references chunks the server does not hold")
            db.execute(
                "INSERT INTO snapshots(id, client_id, time, tags, sealed_meta, stats, root, "
                "parent, refs, ref_count, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    snapshot_id,
                    client_id,
                    meta["time"],
                    json.dumps(meta["tags"]),
                    meta["sealed_meta"],
                    json.dumps(meta["stats"]),
                    b"".join(meta["root"]),
                    meta.get("parent"),
                    encode_refs(refs, len(refs)),
                    len(refs),
                    time.time(),
                ),
            )
            crash_point("before_snapshot_commit")
        return snapshot_id

    _SNAPSHOT_COLUMNS = "id, client_id, time, tags, sealed_meta, stats, root, parent, ref_count"

    @staticmethod
    def _snapshot(row: tuple[Any, ...]) -> SnapshotRecord:
        root = bytes(row[6])
        return SnapshotRecord(
            id=row[0],
            client_id=row[1],
            time=row[2],
            tags=json.loads(row[3]),
            sealed_meta=row[4],
            stats=json.loads(row[5]),
            root=[root[i : i + 32] for i in range(0, len(root), 32)],
            parent=row[7],
            ref_count=row[8],
        )

    def list_snapshots(self, client_id: int) -> list[SnapshotRecord]:
        rows = self._query(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE client_id = ? "
            "ORDER BY time, created",
            (client_id,),
        )
        return [self._snapshot(row) for row in rows]

    def snapshot_refs(self, client_id: int, snapshot_id: str) -> Iterator[int]:
        rows = self._query(
            "SELECT refs FROM snapshots WHERE client_id = ? AND id = ?", (client_id, snapshot_id)
        )
        if not rows:
            raise NotFound(f"no snapshot {snapshot_id}")
        return decode_refs(rows[0][0])

    def chunk_stats(self, client_id: int) -> dict[str, int]:
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM chunks WHERE client_id = ?",
            (client_id,),
        )
        packs = self._query(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM packs WHERE client_id = ?", (client_id,)
        )
        return {
            "chunks": rows[0][0],
            "chunk_bytes": rows[0][1],
            "packs": packs[0][0],
            "stored_bytes": packs[0][1],
        }

    def snapshot_counts(self) -> dict[int, tuple[int, float | None]]:
        rows = self._query(
            "SELECT client_id, COUNT(*), MAX(time) FROM snapshots GROUP BY client_id"
        )
        counts: dict[int, tuple[int, float | None]] = defaultdict(lambda: (0, None))
        for client_id, count, latest in rows:
            counts[client_id] = (count, latest)
        return counts

    # ---- client state (reported by watching clients) ----------------------------------------

    def report_state(
        self, client_id: int, state: str, last_backup: float | None, last_result: str
    ) -> None:
        """Record a client's reported state; a report without a backup time keeps the old one."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO client_state(client_id, state, last_report, last_backup, last_result) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET "
                "state = excluded.state, last_report = excluded.last_report, "
                "last_backup = COALESCE(excluded.last_backup, client_state.last_backup), "
                "last_result = excluded.last_result",
                (client_id, state, time.time(), last_backup, last_result),
            )

    def client_states(self) -> dict[int, dict[str, Any]]:
        """Client id -> {"state", "last_report", "last_backup", "last_result"} (times ISO 8601)."""
        rows = self._query(
            "SELECT client_id, state, last_report, last_backup, last_result FROM client_state"
        )
        return {
            client_id: {
                "state": state,
                "last_report": iso_time(last_report),
                "last_backup": iso_time(last_backup) if last_backup is not None else None,
                "last_result": last_result,
            }
            for client_id, state, last_report, last_backup, last_result in rows
        }

    # ---- retention, pins and garbage collection (see docs/retention.md) ---------------------

    def retention_policy(self, client_id: int) -> dict[str, Any] | None:
        """The client's own policy document, or None when it follows the server default."""
        rows = self._query("SELECT policy FROM retention WHERE client_id = ?", (client_id,))
        return json.loads(rows[0][0]) if rows else None

    def set_retention_policy(self, client_id: int, policy: dict[str, Any] | None) -> None:
        with self._transaction() as db:
            if policy is None:
                db.execute("DELETE FROM retention WHERE client_id = ?", (client_id,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO retention(client_id, policy, updated) VALUES (?, ?, ?)",
                    (client_id, json.dumps(policy, sort_keys=True), time.time()),
                )

    @staticmethod
    def _pin(db: sqlite3.Connection, session: str, rowids: Iterable[int]) -> None:
        # One statement, one step (see sqlrows.py).
        db.execute(
            "INSERT OR IGNORE INTO pins(session, chunk) SELECT ?, value FROM json_each(?)",
            (session, json.dumps(list(rowids))),
        )

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Commits inside need no disk flush: pins matter only while this process lives (a
        starting daemon clears them), and the next synced commit flushes them anyway."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                yield
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def lookup_pinned(self, client_id: int, ids: list[bytes], session: str) -> dict[bytes, int]:
        """lookup(), and pin what was found for the session, atomically with respect to GC.

        The lookup by chunk id runs before the write transaction; inside it, the rows found are
        confirmed by row id (a cheap primary-key probe, not a second lookup by chunk id), so a
        chunk a prune deleted in between is neither pinned nor reported as stored.
        """
        found = self.lookup(client_id, ids)
        if not found:
            return {}
        by_rowid = {rowid: chunk_id for chunk_id, rowid in found.items()}
        ordered = sorted(by_rowid)
        confirmed: dict[bytes, int] = {}
        with self._unsynced(), self._transaction() as db:
            for rowid, chunk_id in _chunk_rows(db, "+client_id = ? AND id", client_id, ordered):
                # Row ids can be reused after a delete: the chunk id must match too.
                if by_rowid[rowid] == chunk_id:
                    confirmed[chunk_id] = rowid
            self._pin(db, session, confirmed.values())
        return confirmed

    def release_pins(self, session: str) -> None:
        with self._unsynced(), self._transaction() as db:
            released = db.execute("DELETE FROM pins WHERE session = ?", (session,)).rowcount
        if released:
            self.compact()

    def compact(self) -> None:
        """Give free pages and the write-ahead log back to the file system: after a backup
        (its pins, ~25 bytes a chunk) and a prune (its chunk rows). Without it a first backup
        left a log of a few MiB and its pins' pages behind (2-3 % of a repository of small
        files). Never waits: while another process writes or a reader is in the log, it is
        left for the next time."""
        with self._lock:
            self._db.execute("PRAGMA busy_timeout=0")
            try:
                # Run to its end: the pragma yields a row per page freed, and execute() would
                # stop at the first.
                self._db.executescript("PRAGMA incremental_vacuum;")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.OperationalError as exc:
                log.info("server database not compacted now: %s", exc)
            finally:
                self._db.execute(f"PRAGMA busy_timeout={_BUSY_SECONDS * 1000}")

    def clear_pins(self) -> None:
        """Forget every pin; only for a daemon that is starting, when no session is live."""
        with self._transaction() as db:
            db.execute("DELETE FROM pins")

    def discard_temp_packs(self) -> int:
        """Delete packs a crash left half-written in the temp directory; only for a daemon that
        is starting (a repack of a prune in another process would fail safely, unindexed)."""
        removed = 0
        for path in self.temp_dir.glob("*.pack.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    def iter_snapshot_refs(self, client_id: int) -> Iterator[tuple[str, Iterator[int]]]:
        """(snapshot id, the chunk row ids it references, in increasing order), one snapshot
        at a time: each snapshot's ids are read as they are taken."""
        ids = self._query("SELECT id FROM snapshots WHERE client_id = ?", (client_id,))
        for (snapshot_id,) in ids:
            rows = self._query("SELECT refs FROM snapshots WHERE id = ?", (snapshot_id,))
            if rows:
                yield snapshot_id, decode_refs(rows[0][0])

    def chunk_rowids(self, client_id: int) -> Iterator[int]:
        """The client's chunk row ids in increasing order, read a page at a time (each page in
        one step, see sqlrows.py)."""
        last = -1
        while True:
            (page,) = self._query(
                "SELECT json_group_array(id) FROM (SELECT id FROM chunks "
                "WHERE +client_id = ? AND id > ? ORDER BY id LIMIT ?)",
                (client_id, last, _REFS_PIECE),
            )[0]
            rowids: list[int] = json.loads(page)
            if not rowids:
                return
            yield from rowids
            last = rowids[-1]

    def chunk_bytes(self, rowids: Iterable[int]) -> int:
        total = 0
        for batch in batched(rowids, _SQL_BATCH):
            marks = ",".join("?" * len(batch))
            total += self._query(
                f"SELECT COALESCE(SUM(length), 0) FROM chunks WHERE id IN ({marks})", batch
            )[0][0]
        return total

    def delete_snapshots(self, client_id: int, snapshot_ids: list[str]) -> int:
        with self._transaction() as db:
            removed = 0
            for snapshot_id in snapshot_ids:
                removed += db.execute(
                    "DELETE FROM snapshots WHERE client_id = ? AND id = ?",
                    (client_id, snapshot_id),
                ).rowcount
        return removed

    def delete_dead_chunks(
        self, client_id: int, candidates: RowSet, seen_snapshots: set[str]
    ) -> tuple[int, int]:
        """Delete candidate chunk rows that no snapshot and no live session needs.

        ``candidates`` were computed from the snapshots in ``seen_snapshots``; snapshots
        committed since then and every pin are re-checked here under the write lock, so a
        backup that commits meanwhile keeps its chunks. Returns (rows, bytes) deleted.
        """
        with self._transaction() as db:
            dead = candidates.copy()
            for (snapshot_id,) in db.execute(
                "SELECT id FROM snapshots WHERE client_id = ?", (client_id,)
            ).fetchall():
                if snapshot_id not in seen_snapshots:
                    refs = db.execute("SELECT refs FROM snapshots WHERE id = ?", (snapshot_id,))
                    dead.difference_update(decode_refs(refs.fetchone()[0]))
            dead.difference_update(row[0] for row in db.execute("SELECT chunk FROM pins"))
            rows = size = 0
            for batch in batched(dead, _SQL_BATCH):
                marks = ",".join("?" * len(batch))
                where = f"FROM chunks WHERE +client_id = ? AND id IN ({marks})"
                size += db.execute(
                    f"SELECT COALESCE(SUM(length), 0) {where}", [client_id, *batch]
                ).fetchone()[0]
                rows += db.execute(f"DELETE {where}", [client_id, *batch]).rowcount
        crash_point("during_prune")
        return rows, size

    def pack_usage(self, client_id: int) -> list[PackUsage]:
        rows = self._query(
            "SELECT p.id, p.name, p.size, COUNT(c.id), COALESCE(SUM(c.length), 0) FROM packs p "
            "LEFT JOIN chunks c ON c.pack_id = p.id WHERE p.client_id = ? GROUP BY p.id "
            "ORDER BY p.id",
            (client_id,),
        )
        return [PackUsage(*row) for row in rows]

    def pack_chunks(self, pack_id: int) -> list[ChunkLocation]:
        rows = self._query(
            "SELECT c.id, c.chunk_id, p.name, c.offset, c.length, c.hash FROM chunks c "
            "JOIN packs p ON p.id = c.pack_id WHERE c.pack_id = ? ORDER BY c.offset",
            (pack_id,),
        )
        return [
            ChunkLocation(row[0], bytes(row[1]), row[2], row[3], row[4], bytes(row[5]))
            for row in rows
        ]

    def drop_empty_pack(self, pack_id: int) -> bool:
        """Unindex a pack no chunk row points into; the caller then deletes its file."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM chunks WHERE pack_id = ? LIMIT 1", (pack_id,)).fetchone():
                return False
            return db.execute("DELETE FROM packs WHERE id = ?", (pack_id,)).rowcount == 1

    def commit_repack(
        self,
        client_id: int,
        writer: PackWriter,
        moves: list[tuple[int, int, int]],
        old_packs: list[int],
    ) -> list[int]:
        """Store a repacked pack, re-point (rowid, old pack id, new offset) rows to it in one
        transaction, and unindex the old packs left empty (returned; their files go next)."""
        name = self._store_pack_file(client_id, writer)
        emptied = []
        with self._transaction() as db:
            new_id = db.execute(
                "INSERT INTO packs(client_id, name, size, created) VALUES (?, ?, ?, ?)",
                (client_id, name, writer.size, time.time()),
            ).lastrowid
            # A row GC deleted meanwhile is not moved: its copy is dead data in the new pack.
            db.executemany(
                "UPDATE chunks SET pack_id = ?, offset = ? WHERE id = ? AND pack_id = ?",
                ((new_id, offset, rowid, old) for rowid, old, offset in moves),
            )
            for pack_id in old_packs:
                if not db.execute(
                    "SELECT 1 FROM chunks WHERE pack_id = ? LIMIT 1", (pack_id,)
                ).fetchone():
                    db.execute("DELETE FROM packs WHERE id = ?", (pack_id,))
                    emptied.append(pack_id)
        crash_point("during_repack")
        return emptied

    def pack_names(self) -> set[str]:
        return {row[0] for row in self._query("SELECT name FROM packs")}

    def age_orphans(self, prefix: str, orphans: set[str], grace: float) -> list[str]:
        """Note pack files under ``prefix`` that no index row names; return those unindexed
        for longer than ``grace`` seconds (a pack being committed is unindexed for a moment)."""
        now = time.time()
        with self._transaction() as db:
            known = {
                name: first
                for name, first in db.execute(
                    "SELECT name, first_seen FROM pack_orphans WHERE substr(name, 1, ?) = ?",
                    (len(prefix), prefix),
                ).fetchall()
            }
            db.executemany(
                "DELETE FROM pack_orphans WHERE name = ?",
                ((name,) for name in known if name not in orphans),
            )
            db.executemany(
                "INSERT INTO pack_orphans(name, first_seen) VALUES (?, ?)",
                ((name, now) for name in orphans if name not in known),
            )
        return sorted(name for name in orphans if name in known and known[name] <= now - grace)

    def forget_orphan(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM pack_orphans WHERE name = ?", (name,))

    def record_prune(self, client_id: int, origin: str, result: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO prunes(time, client_id, origin, result) VALUES (?, ?, ?, ?)",
                (time.time(), client_id, origin, json.dumps(result, sort_keys=True)),
            )

    def prune_history(
        self, client_id: int | None = None, limit: int = 100
    ) -> list[tuple[float, str, str, dict[str, Any]]]:
        """Newest first: (time, client name, origin, result document)."""
        where = "WHERE p.client_id = ?" if client_id is not None else ""
        params: list[Any] = [client_id] if client_id is not None else []
        rows = self._query(
            "SELECT p.time, c.name, p.origin, p.result FROM prunes p "
            f"JOIN clients c ON c.id = p.client_id {where} ORDER BY p.time DESC, p.id DESC "
            "LIMIT ?",
            [*params, limit],
        )
        return [(row[0], row[1], row[2], json.loads(row[3])) for row in rows]

    def last_prune_time(self, origin: str) -> float | None:
        return self._query("SELECT MAX(time) FROM prunes WHERE origin = ?", (origin,))[0][0]


_RUN_BYTES = 8 * 1024 * 1024


def _contiguous_runs(
    ids: list[bytes], where: dict[bytes, ChunkLocation]
) -> Iterator[list[tuple[bytes, ChunkLocation]]]:
    """The asked ids in order, grouped into runs that are adjacent in one pack."""
    run: list[tuple[bytes, ChunkLocation]] = []
    for chunk_id in ids:
        location = where.get(chunk_id)
        if location is None:
            yield from [run] if run else []
            raise NotFound(f"chunk {chunk_id.hex()[:16]} is not stored")
        if run:
            previous = run[-1][1]
            adjacent = (
                location.pack == previous.pack
                and location.offset == previous.offset + previous.length
                and location.offset + location.length - run[0][1].offset <= _RUN_BYTES
            )
            if not adjacent:
                yield run
                run = []
        run.append((chunk_id, location))
    if run:
        yield run
