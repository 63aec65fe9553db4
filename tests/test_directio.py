"""DirectWriter: files written past the page cache hold exactly what was written."""

from __future__ import annotations

import mmap
import os
import random
from pathlib import Path

import pytest

from rpybackup_core import directio
from rpybackup_core.directio import BLOCK, DirectWriter, write_all

STAGE = 4 * BLOCK


def _parts(seed: int, sizes: list[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in sizes]


def _write(path: Path, parts: list[bytes], prefix: bytes = b"", depth: int = 2) -> DirectWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, [prefix])
        writer = DirectWriter(fd, STAGE, depth)
        for part in parts:
            writer.write([part])
        writer.close()
        return writer
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [1],
        [BLOCK - 1],
        [BLOCK],
        [STAGE],
        [STAGE + 1],
        [3 * STAGE + 17],
        [7, BLOCK, 1, STAGE - 3, 2 * STAGE, 5],
        [9 * STAGE, 3, 4 * STAGE],
    ],
)
@pytest.mark.parametrize("depth", [2, 4])
def test_the_file_holds_every_byte_and_nothing_more(
    tmp_path: Path, sizes: list[int], depth: int
) -> None:
    parts = _parts(len(sizes), sizes)
    writer = _write(tmp_path / "out", parts, depth=depth)
    assert (tmp_path / "out").read_bytes() == b"".join(parts)
    assert writer.size == sum(sizes)


def test_many_parts_in_one_write_keep_their_order(tmp_path: Path) -> None:
    parts = _parts(7, [random.Random(i).randrange(1, 3 * BLOCK) for i in range(200)])
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = DirectWriter(fd, STAGE)
        writer.write(parts[:150])
        writer.write(parts[150:])
        writer.close()
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"".join(parts)


def test_a_later_file_reuses_the_buffers_and_holds_only_its_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh mapping faults in every page on first touch: the next file takes the last
    one's buffers, whose old bytes never reach it."""
    stage = 8 * BLOCK
    mapped = []
    fresh_mapping = mmap.mmap

    def counted(*args: int) -> mmap.mmap:
        mapped.append(args)
        return fresh_mapping(*args)

    monkeypatch.setattr(mmap, "mmap", counted)
    # Buffers other tests left in the process-wide pool would be taken instead of mapped.
    monkeypatch.setattr(directio, "_kept_stages", [])
    first, second = _parts(11, [10 * stage + 5]), _parts(12, [2 * stage + BLOCK + 3])
    for name, parts in (("first", first), ("second", second)):
        fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            writer = DirectWriter(fd, stage, depth=4)
            if not writer.direct:
                pytest.skip("this filesystem refuses direct I/O: no buffers to keep")
            writer.write(parts)
            writer.close()
        finally:
            os.close(fd)
        assert len(mapped) == 4
    assert (tmp_path / "first").read_bytes() == first[0]
    assert (tmp_path / "second").read_bytes() == second[0]


def test_an_unaligned_start_falls_back_to_ordinary_writes(tmp_path: Path) -> None:
    """Direct writes must start on a block boundary; where the filesystem refuses the first
    one (EINVAL), the same bytes go through the page cache and the content is unchanged."""
    parts = _parts(3, [STAGE + 5, 6 * STAGE, 11])
    _write(tmp_path / "out", parts, prefix=b"0123456789", depth=4)
    assert (tmp_path / "out").read_bytes() == b"0123456789" + b"".join(parts)


def test_abandon_writes_nothing_more(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = DirectWriter(fd, STAGE)
        writer.write([b"x" * (STAGE + 10)])
        writer.abandon()
        writer.abandon()
    finally:
        os.close(fd)
    assert len((tmp_path / "out").read_bytes()) == STAGE


def test_a_failed_background_write_is_raised_by_a_later_call(tmp_path: Path) -> None:
    """Full buffers are written on a writer thread; its error reaches the caller."""
    (tmp_path / "out").write_bytes(b"")
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        writer = DirectWriter(fd, STAGE)
        with pytest.raises(OSError):
            writer.write([b"x" * (3 * STAGE)])
            writer.close()
        writer.abandon()
    finally:
        os.close(fd)


def test_the_staging_buffer_is_whole_blocks_and_there_are_two() -> None:
    with pytest.raises(ValueError):
        DirectWriter(0, BLOCK + 1)
    with pytest.raises(ValueError):
        DirectWriter(0, BLOCK, depth=1)
