"""Sealing a job of chunks into the records of one put payload."""

from __future__ import annotations

import os

from rpybackup_core.crypto import MasterKey, Sealer
from rpybackup_core.protocol import Blob, unpack_records
from rpybackup_core.uploader import RUN_BYTES, seal_records


def _job(sizes: list[int], sealer: Sealer) -> list[tuple[bytes, bytes]]:
    """Chunks of these sizes, half random and half text: some compress, some do not."""
    plains = [(os.urandom(size // 2) + b"text " * (size // 10 + 1))[:size] for size in sizes]
    return [(sealer.chunk_id(plain), plain) for plain in plains]


def _payload_opens_to(
    parts: list[Blob], job: list[tuple[bytes, bytes]], sealer: Sealer
) -> list[tuple[bytes, memoryview]]:
    """The payload's records, checked to open to the job's chunks in order."""
    records = list(unpack_records(memoryview(b"".join(parts))))
    assert [chunk_id for chunk_id, _ in records] == [chunk_id for chunk_id, _ in job]
    for (chunk_id, sealed), (_, plain) in zip(records, job, strict=True):
        assert sealer.open(chunk_id, sealed) == plain
    return records


def test_small_chunks_go_out_sealed_side_by_side_in_few_parts() -> None:
    sealer = Sealer(MasterKey.generate())
    job = _job([0, 1, 900, 4_000, 60_000] * 8, sealer)
    sealed = seal_records(sealer, memoryview(bytearray(RUN_BYTES)), job)
    assert sealed.chunks == len(job)
    assert len(sealed.parts) <= 3
    records = _payload_opens_to(sealed.parts, job, sealer)
    assert sealed.sealed_bytes == sum(len(blob) for _, blob in records)


def test_a_chunk_larger_than_the_run_buffer_is_a_part_of_its_own_in_its_place() -> None:
    sealer = Sealer(MasterKey.generate())
    job = _job([3_000, RUN_BYTES, 5_000, 3 * RUN_BYTES, 7], sealer)
    sealed = seal_records(sealer, memoryview(bytearray(RUN_BYTES)), job)
    large = [part for part in sealed.parts if len(part) > RUN_BYTES]
    assert len(large) == 2
    _payload_opens_to(sealed.parts, job, sealer)


def test_a_payload_stays_whole_when_its_run_buffer_seals_the_next_job() -> None:
    sealer = Sealer(MasterKey.generate())
    runs = memoryview(bytearray(RUN_BYTES))
    first = _job([10_000] * 5, sealer)
    first_parts = seal_records(sealer, runs, first).parts
    seal_records(sealer, runs, _job([20_000] * 5, sealer))
    _payload_opens_to(first_parts, first, sealer)
