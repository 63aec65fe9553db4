"""Framing over a real socket pair: bounds, truncation, records."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from rpybackup_core.errors import ConnectionClosed, FrameTooLarge, ProtocolError
from rpybackup_core.protocol import FramedSocket, record_parts, split_ids, unpack_records

MIB = 1024 * 1024


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    yield FramedSocket(left, max_payload=1 << 20), FramedSocket(right, max_payload=1 << 20)
    left.close()
    right.close()


@pytest.fixture(params=[True, False], ids=["kept-grown", "kept-whole"])
def wide_pair(request):
    """The receiver grows kept frames as their bytes arrive (the server's side) or allocates
    them whole (a client's, whose peer is the server it pinned)."""
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    yield (
        FramedSocket(left, max_payload=16 * MIB),
        FramedSocket(right, max_payload=16 * MIB, grow_kept=request.param),
    )
    left.close()
    right.close()


def test_frames_round_trip_and_the_buffer_grows(pair) -> None:
    sender, receiver = pair
    big = bytes(range(256)) * 2048

    def send_both() -> None:
        sender.send({"op": "put", "id": 1}, big)
        sender.send({"op": "ping", "id": 2})

    writer = threading.Thread(target=send_both)
    writer.start()
    first = receiver.recv()
    first_payload = first.payload.tobytes()
    second = receiver.recv()
    writer.join(timeout=30)
    assert first.header == {"op": "put", "id": 1} and first_payload == big
    assert second.op == "ping" and len(second.payload) == 0


def test_clean_eof_between_frames_is_told_apart_from_truncation(pair) -> None:
    sender, receiver = pair
    sender.sock.close()
    with pytest.raises(ConnectionClosed):
        receiver.recv()


def test_truncated_frame_is_a_protocol_error(pair) -> None:
    sender, receiver = pair
    sender.sock.sendall(struct.pack(">II", 50, 0) + b'{"op"')
    sender.sock.close()
    with pytest.raises(ProtocolError, match="middle of a frame"):
        receiver.recv()


@pytest.mark.parametrize(
    "prefix",
    [struct.pack(">II", 0, 0), struct.pack(">II", 1 << 30, 0), struct.pack(">II", 2, 1 << 30)],
)
def test_out_of_bounds_lengths_are_refused_before_allocating(pair, prefix: bytes) -> None:
    sender, receiver = pair
    sender.sock.sendall(prefix)
    with pytest.raises(FrameTooLarge):
        receiver.recv()


def test_header_must_be_a_json_object(pair) -> None:
    sender, receiver = pair
    sender.sock.sendall(struct.pack(">II", 2, 0) + b"[]")
    with pytest.raises(ProtocolError, match="not an object"):
        receiver.recv()


def test_sending_an_oversized_payload_is_refused(pair) -> None:
    sender, _ = pair
    with pytest.raises(FrameTooLarge):
        sender.send({"op": "put"}, b"x" * ((1 << 20) + 1))


def _send_in_background(sender: FramedSocket, frames: list[tuple[dict, list[bytes]]]):
    writer = threading.Thread(target=lambda: [sender.send_parts(h, parts) for h, parts in frames])
    writer.start()
    return writer


def test_parts_large_and_small_arrive_as_one_payload_in_order(wide_pair) -> None:
    sender, receiver = wide_pair
    parts = [b"a" * 10, bytes(range(256)) * 1024, b"b", b"c" * 70_000, b"", b"d" * 3]
    writer = _send_in_background(sender, [({"op": "put", "id": 1}, parts)])
    frame = receiver.recv()
    writer.join(timeout=30)
    assert frame.header == {"op": "put", "id": 1}
    assert frame.payload.tobytes() == b"".join(parts)


def test_a_kept_payload_outlives_the_frames_after_it(wide_pair) -> None:
    sender, receiver = wide_pair
    payloads = [bytes([n]) * (MIB + n) for n in range(6)]
    writer = _send_in_background(sender, [({"id": n}, [p]) for n, p in enumerate(payloads)])
    kept = [receiver.recv(keep=True).payload for _ in payloads]
    writer.join(timeout=30)
    assert [view.tobytes() for view in kept] == payloads


def test_a_kept_buffer_is_used_again_only_once_nothing_refers_to_it(wide_pair) -> None:
    sender, receiver = wide_pair
    payloads = [bytes([n]) * (2 * MIB) for n in range(3)]
    writer = _send_in_background(sender, [({"id": n}, [p]) for n, p in enumerate(payloads)])
    first = receiver.recv(keep=True).payload
    part = first[MIB:]
    # Its id, not a reference: a reference would keep the buffer in use.
    first_buffer = id(first.obj)
    del first
    second = receiver.recv(keep=True).payload
    assert id(second.obj) != first_buffer and part.tobytes() == payloads[0][MIB:]
    del part
    third = receiver.recv(keep=True).payload
    writer.join(timeout=30)
    assert id(third.obj) == first_buffer and third.tobytes() == payloads[2]
    assert second.tobytes() == payloads[1]


def test_records_round_trip_and_lying_lengths_are_caught() -> None:
    records = [(b"\x01" * 32, b"blob-one"), (b"\x03" * 32, b"")]
    payload = b"".join(record_parts(records))
    parsed = [
        (chunk_id, sealed.tobytes()) for chunk_id, sealed in unpack_records(memoryview(payload))
    ]
    assert parsed == records
    one_blob = b"".join(record_parts(records[:1]))
    for cut in (one_blob[:-3], payload[:-1]):
        # The first length runs past its blob, the second record's header is cut short.
        with pytest.raises(ProtocolError):
            unpack_records(memoryview(cut))


def test_id_lists_must_be_whole() -> None:
    assert split_ids(memoryview(b"\x00" * 64)) == [b"\x00" * 32] * 2
    with pytest.raises(ProtocolError):
        split_ids(memoryview(b"\x00" * 33))
