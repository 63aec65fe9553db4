"""Pack files: sealed blobs back to back, with a trailer that indexes them.

    pack    = magic "RPBPACK2" | blob* | trailer | trailer_len:u32be | magic "RPBPEND2"
    trailer = (chunk_id:32 length:u32be)*

The trailer makes each pack self-describing, so the index can be rebuilt from packs alone and
``check`` can compare the two. Blobs lie back to back from the end of the magic, so each one's
offset follows from the lengths before it; a blob's storage hash is kept in the index only
(packs written before, "RPBPACK1", also carry offsets and storage hashes: 76 bytes an entry
against 36, 2 % of a repository of small files). A pack is written under a temp name, fsynced,
then handed to the storage backend; only then are its index rows committed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .directio import write_all
from .errors import IntegrityError
from .faults import crash_point
from .storage import storage_error

MAGIC = b"RPBPACK2"
END_MAGIC = b"RPBPEND2"
ENTRY = struct.Struct(">32sI")
TAIL = struct.Struct(">I8s")
# The first format, still read: offsets and storage hashes in the trailer too.
MAGIC_V1 = b"RPBPACK1"
END_MAGIC_V1 = b"RPBPEND1"
ENTRY_V1 = struct.Struct(">32sQI32s")


@dataclass(frozen=True, slots=True)
class PackEntry:
    chunk_id: bytes
    offset: int
    length: int
    # Only in packs of the first format; the index holds every blob's.
    storage_hash: bytes | None = None


class PackWriter:
    """An open pack in the server's temp directory. Not thread-safe: one per upload session."""

    def __init__(self, temp_dir: Path) -> None:
        temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name = secrets.token_hex(16)
        self.path = temp_dir / f"{self.name}.pack.tmp"
        self.entries: list[PackEntry] = []
        try:
            # Unbuffered: blobs are gathered into one writev per batch instead.
            self._handle = self.path.open("xb", buffering=0)
            write_all(self._handle.fileno(), [MAGIC])
        except OSError as exc:
            raise storage_error(exc, "opening a new pack") from exc
        self.size = len(MAGIC)

    def append(self, chunk_id: bytes, storage_hash: bytes, sealed: bytes | memoryview) -> PackEntry:
        self.append_many([(chunk_id, storage_hash, sealed)])
        return self.entries[-1]

    def append_many(self, records: Sequence[tuple[bytes, bytes, bytes | memoryview]]) -> None:
        """Append (chunk id, storage hash, sealed blob) records with as few syscalls as can be."""
        try:
            write_all(self._handle.fileno(), [sealed for _, _, sealed in records])
        except OSError as exc:
            raise storage_error(exc, "writing a pack") from exc
        for chunk_id, storage_hash, sealed in records:
            self.entries.append(PackEntry(chunk_id, self.size, len(sealed), storage_hash))
            self.size += len(sealed)
        crash_point("after_pack_write")

    def finish(self) -> Path:
        """Write the trailer and fsync; the file is then ready for the backend."""
        trailer = b"".join(ENTRY.pack(e.chunk_id, e.length) for e in self.entries)
        try:
            write_all(self._handle.fileno(), [trailer, TAIL.pack(len(trailer), END_MAGIC)])
            crash_point("before_pack_fsync")
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            self.abort()
            raise storage_error(exc, "finishing a pack") from exc
        self.size += len(trailer) + TAIL.size
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def read_entries(read: Callable[[int, int], bytes], size: int) -> list[PackEntry]:
    """A pack's entries from its header and trailer alone, checked for consistency.

    ``read(offset, length)`` fetches bytes of the pack, so a checker reads three small ranges
    of a pack in object storage instead of the whole pack.
    """
    if size < len(MAGIC) + TAIL.size:
        raise IntegrityError("pack is shorter than an empty pack")
    magic = read(0, len(MAGIC))
    if magic not in (MAGIC, MAGIC_V1):
        raise IntegrityError("pack header is damaged")
    entry, end_magic = (ENTRY, END_MAGIC) if magic == MAGIC else (ENTRY_V1, END_MAGIC_V1)
    trailer_len, end = TAIL.unpack(read(size - TAIL.size, TAIL.size))
    start = size - TAIL.size - trailer_len
    if end != end_magic or trailer_len % entry.size or start < len(MAGIC):
        raise IntegrityError("pack trailer is damaged")
    trailer = read(start, trailer_len)
    fields = (entry.unpack_from(trailer, pos) for pos in range(0, trailer_len, entry.size))
    entries = _back_to_back(fields) if magic == MAGIC else [PackEntry(*f) for f in fields]
    if any(e.offset < len(MAGIC) or e.offset + e.length > start for e in entries):
        raise IntegrityError("pack trailer points outside the pack")
    return entries


def _back_to_back(fields: Iterable[tuple[bytes, int]]) -> list[PackEntry]:
    entries = []
    offset = len(MAGIC)
    for chunk_id, length in fields:
        entries.append(PackEntry(chunk_id, offset, length))
        offset += length
    return entries


def parse_trailer(data: bytes) -> list[PackEntry]:
    """The entries of a whole pack held in memory."""
    return read_entries(lambda offset, length: data[offset : offset + length], len(data))
