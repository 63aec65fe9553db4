from __future__ import annotations

import io
import random
import tracemalloc

import pytest
from pyfastcdc import FastCDC

from rpybackup_core.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE, Chunker

MIB = 1024 * 1024


class TrickleReader(io.RawIOBase):
    """A file that hands out at most ``step`` bytes per read, as a pipe or a slow disk may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        count = min(len(buffer), self._step, len(self._data) - self._offset)
        buffer[:count] = self._data[self._offset : self._offset + count]
        self._offset += count
        return count


def pyfastcdc_cuts(data: bytes) -> list[bytes]:
    cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)
    return [bytes(chunk.data) for chunk in cdc.cut_stream(io.BytesIO(data))]


def streamed(chunker: Chunker, reader: io.RawIOBase, limit: int | None = None) -> list[bytes]:
    return [bytes(view) for view in chunker.stream(reader, limit)]


def mixed_data(size: int, seed: int) -> bytes:
    """Random runs between stretches of zeros and of repeated text: cuts of every kind, the
    maximum size included."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    total = 0
    while total < size:
        kind = rng.randrange(3)
        length = rng.randrange(1, 3 * MIB)
        if kind == 0:
            part = rng.randbytes(length)
        elif kind == 1:
            part = bytes(length)
        else:
            line = b"log line %d of a busy service\n" % rng.randrange(100)
            part = (line * (length // len(line) + 1))[:length]
        parts.append(part)
        total += length
    return b"".join(parts)[:size]


@pytest.mark.parametrize(
    "size",
    [0, 1, MIN_SIZE, MAX_SIZE, MAX_SIZE + 1, 6 * MIB, 6 * MIB + 1, 12 * MIB - 1, 29 * MIB + 7],
)
def test_a_stream_is_cut_where_pyfastcdc_cuts_it(size: int) -> None:
    data = mixed_data(size, seed=size)

    pieces = streamed(Chunker(), io.BytesIO(data))

    assert pieces == pyfastcdc_cuts(data)
    assert b"".join(pieces) == data


def test_a_stream_read_in_short_pieces_is_cut_at_the_same_points() -> None:
    data = mixed_data(17 * MIB, seed=7)

    pieces = streamed(Chunker(), TrickleReader(data, step=100_003))

    assert pieces == pyfastcdc_cuts(data)


def test_a_stream_stops_at_its_limit_and_cuts_as_if_the_file_ended_there() -> None:
    data = mixed_data(20 * MIB, seed=3)
    limit = 13 * MIB + 5

    pieces = streamed(Chunker(), io.BytesIO(data), limit)

    assert pieces == pyfastcdc_cuts(data[:limit])


def test_a_limit_beyond_the_end_of_the_file_reads_to_its_end() -> None:
    data = mixed_data(9 * MIB, seed=4)

    assert streamed(Chunker(), io.BytesIO(data), 100 * MIB) == pyfastcdc_cuts(data)


def test_a_stream_started_inside_another_leaves_the_outer_ones_pieces_intact() -> None:
    outer_data = mixed_data(15 * MIB, seed=5)
    inner_data = mixed_data(11 * MIB, seed=6)
    chunker = Chunker()
    streamed(chunker, io.BytesIO(mixed_data(7 * MIB, seed=10)))

    outer = []
    for view in chunker.stream(io.BytesIO(outer_data)):
        assert streamed(chunker, io.BytesIO(inner_data)) == pyfastcdc_cuts(inner_data)
        outer.append(bytes(view))

    assert outer == pyfastcdc_cuts(outer_data)


def test_later_streams_read_into_the_first_ones_buffer() -> None:
    chunker = Chunker()
    streamed(chunker, io.BytesIO(mixed_data(7 * MIB, seed=8)))
    data = mixed_data(7 * MIB, seed=9)

    tracemalloc.start()
    try:
        for view in chunker.stream(io.BytesIO(data)):
            del view
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < MIB
