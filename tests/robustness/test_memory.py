"""Per-connection memory is bounded: nothing a connection sends makes the server allocate more
than a fixed budget. Measured with tracemalloc around real Session threads (wire.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpybackup_core.protocol import MAX_PAYLOAD, PREFIX, RECORD
from rpybackup_core.repository import Repository
from rpybackup_core.session import MAX_IDS_PER_REQUEST, MAX_PENDING

from .wire import Wire

MIB = 1024 * 1024
# The frame buffer may hold one whole frame; everything else a request allocates must fit in
# this much more.
SLACK = 24 * MIB


@pytest.fixture
def repo() -> Iterator[tuple[Repository, str]]:
    root = Path(
        tempfile.mkdtemp(prefix="rpyb-mem-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    repository = Repository(root / "data")
    try:
        code = repository.add_client("mallory", admin=False, ttl=3600)
        _, token = repository.enroll(code)
        yield repository, token
    finally:
        repository.close()
        shutil.rmtree(root, ignore_errors=True)


def _tiny_records(count: int, start: int) -> bytes:
    return b"".join(
        RECORD.pack((start + index).to_bytes(32, "big"), 1) + b"x" for index in range(count)
    )


def _peak_while(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_flood_of_tiny_chunks_never_piles_up_in_memory(repo: tuple[Repository, str]) -> None:
    repository, token = repo
    wire = Wire(repository, pack_size=64 * MIB)
    wire.auth("mallory", token)
    # Each frame holds 80,000 one-byte chunks: an open pack sealed by size alone would keep
    # every one of them (and its index entry) in memory.
    frames = [_tiny_records(80_000, start) for start in range(0, 160_000, 80_000)]
    most_pending = 0

    def flood() -> None:
        nonlocal most_pending
        for payload in frames:
            replies = wire.request({"op": "put"}, payload)
            assert replies and replies[0][0].get("ok"), replies
            most_pending = max(most_pending, len(wire.session.pending))

    peak = _peak_while(flood)
    wire.close()
    assert most_pending <= MAX_PENDING
    assert peak <= 2 * len(frames[0]) + SLACK, f"{peak / MIB:.0f} MiB for one connection"


def test_an_oversized_id_list_is_refused_before_it_is_split(
    repo: tuple[Repository, str],
) -> None:
    repository, token = repo
    wire = Wire(repository)
    wire.auth("mallory", token)
    payload = os.urandom(32) * (MAX_PAYLOAD // 32)
    assert len(payload) // 32 > MAX_IDS_PER_REQUEST
    replies: list = []

    def ask() -> None:
        for op in ("has", "refs", "get"):
            replies.extend(wire.request({"op": op}, payload) or [])

    peak = _peak_while(ask)
    wire.close()
    assert [reply.get("error", {}).get("code") for reply, _ in replies] == ["invalid"] * 3
    # Growing the frame buffer holds the old and the new one for a moment: twice the frame.
    assert peak <= 2 * len(payload) + 4 * MIB, f"{peak / MIB:.0f} MiB for one refused request"


def test_a_length_prefix_alone_costs_no_memory(repo: tuple[Repository, str]) -> None:
    """Slowloris with a huge claim: the buffer grows with the bytes that actually arrive."""
    repository, _ = repo
    wire = Wire(repository)
    wire.send_raw(PREFIX.pack(64, MAX_PAYLOAD - 1) + b"{" + b" " * 100_000)
    buffer = wire.session.framed
    deadline = time.monotonic() + 30
    while len(buffer._buffer) < 128 * 1024:
        assert time.monotonic() < deadline, "the server never read the bytes sent"
        time.sleep(0.01)
    # The claim was 16 MiB; 100 kB arrived, so the buffer doubled once from 64 KiB and stopped.
    assert len(buffer._buffer) == 128 * 1024
    wire.close()


def test_a_length_prefix_alone_costs_no_memory_after_authenticating(
    repo: tuple[Repository, str],
) -> None:
    """An authenticated client's payloads are read into buffers of their own (kept for the
    pack writer); those too grow only with the bytes that arrive."""
    repository, token = repo
    wire = Wire(repository)
    wire.auth("mallory", token)
    header = b'{"op":"put","id":9}'

    def claim_much_send_little() -> None:
        wire.send_raw(PREFIX.pack(len(header), MAX_PAYLOAD - 1) + header + b"x" * 100_000)
        wire.close()

    peak = _peak_while(claim_much_send_little)
    assert peak <= 2 * MIB, f"{peak / MIB:.0f} MiB for a claim of 16 MiB"
