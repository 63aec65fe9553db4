"""Pack files: the trailer gives back every blob's place; packs of the first format still read."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from rpybackup_core.crypto import storage_hash
from rpybackup_core.errors import IntegrityError
from rpybackup_core.pack import (
    END_MAGIC_V1,
    ENTRY,
    ENTRY_V1,
    MAGIC,
    MAGIC_V1,
    TAIL,
    PackEntry,
    PackWriter,
    parse_trailer,
)


def written(tmp_path: Path, blobs: list[bytes]) -> bytes:
    writer = PackWriter(tmp_path)
    writer.append_many(
        [(bytes([i]) * 32, storage_hash(blob), blob) for i, blob in enumerate(blobs)]
    )
    return writer.finish().read_bytes()


def test_the_trailer_holds_ids_and_lengths_and_gives_back_each_blobs_place(
    tmp_path: Path,
) -> None:
    blobs = [os.urandom(size) for size in (1, 700, 0, 65_536)]
    data = written(tmp_path, blobs)

    assert data.startswith(MAGIC)
    trailer_len = TAIL.unpack(data[-TAIL.size :])[0]
    assert trailer_len == len(blobs) * ENTRY.size == len(blobs) * 36
    entries = parse_trailer(data)
    assert [e.chunk_id for e in entries] == [bytes([i]) * 32 for i in range(len(blobs))]
    assert [data[e.offset : e.offset + e.length] for e in entries] == blobs
    assert all(e.storage_hash is None for e in entries)


def test_a_pack_of_the_first_format_reads_with_its_offsets_and_hashes() -> None:
    blobs = [b"first blob", b"second"]
    entries, offset = [], len(MAGIC_V1)
    for i, blob in enumerate(blobs):
        # That format's storage hashes were 32 bytes long.
        entries.append(PackEntry(bytes([i]) * 32, offset, len(blob), blake3.blake3(blob).digest()))
        offset += len(blob)
    trailer = b"".join(
        ENTRY_V1.pack(e.chunk_id, e.offset, e.length, e.storage_hash) for e in entries
    )
    data = MAGIC_V1 + b"".join(blobs) + trailer + TAIL.pack(len(trailer), END_MAGIC_V1)

    assert parse_trailer(data) == entries


def test_a_trailer_that_points_past_its_blobs_is_damaged(tmp_path: Path) -> None:
    data = bytearray(written(tmp_path, [b"abc", b"defg"]))
    start = len(data) - TAIL.size - 2 * ENTRY.size
    # The second entry's length: its blob would run into the trailer.
    data[start + ENTRY.size + 32 : start + 2 * ENTRY.size] = (1000).to_bytes(4, "big")

    with pytest.raises(IntegrityError, match="outside the pack"):
        parse_trailer(bytes(data))
