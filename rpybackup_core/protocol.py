"""Wire framing: length-prefixed frames of a JSON header plus a binary payload.

    frame   = header_len:u32be payload_len:u32be header:bytes[header_len] payload:bytes[payload_len]
    header  = UTF-8 JSON object; requests carry "op" and "id", replies echo "id"

Both lengths are bounded before anything is allocated. Reads go through ``recv_into`` on one
buffer per connection that grows to the largest frame seen (never past the bound), so there is no
buffer size to tune; payloads whose blobs outlive the frame are read into buffers of their own
(``recv(keep=True)``), and frames are sent part by part, never joined first. See
docs/protocol.md.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConnectionClosed, FrameTooLarge, InvalidRequest, ProtocolError

PROTOCOL_VERSION = 5
MAGIC = "rpybackup"
PREFIX = struct.Struct(">II")
MAX_HEADER = 64 * 1024
# A put or get batch: several chunks of at most 4 MiB each, plus their record headers.
MAX_PAYLOAD = 16 * 1024 * 1024
_INITIAL_BUFFER = 64 * 1024
_JOINED = 64 * 1024
# Kept frames of at least this size come from reused buffers (_KeptBuffers) of at most
# _KEPT_BYTES together per connection: a backup with large files holds two connections, and
# 16 MiB each put the server's peak at 84-95 MiB (8 MiB: 71-75 MiB, as fast).
_KEPT_MIN = 1024 * 1024
_KEPT_BYTES = 8 * 1024 * 1024

Blob = bytes | bytearray | memoryview

# Record layout inside a put or get payload: chunk id, sealed length, sealed bytes. No hash
# rides along: TLS protects the transfer, AES-GCM the content; the server hashes what it stores.
RECORD = struct.Struct(">32sI")


@dataclass
class Frame:
    header: dict[str, Any]
    payload: memoryview

    @property
    def op(self) -> str:
        op = self.header.get("op")
        if not isinstance(op, str):
            raise ProtocolError("request has no operation")
        return op


def _decode_header(raw: memoryview) -> dict[str, Any]:
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("frame header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header


class _KeptBuffers:
    """Buffers for frames whose payload outlives the call (``recv(keep=True)``), each used
    again once nothing refers to it.

    A fresh buffer per frame costs a page fault for every 4 KiB as it fills; on a VM whose host
    takes freed memory back that is 2-3 µs each, a quarter of a 1 GiB ``get``'s main thread.
    Every view of a bytearray holds a reference to it (through the view's managed buffer), so
    a buffer referred to only by this list and the loop has no reader left.
    """

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []
        self._held = 0

    def free(self, size: int) -> bytearray | None:
        """A kept buffer of at least ``size`` bytes that nobody reads any more, if any."""
        for buffer in self._buffers:
            if len(buffer) >= size and sys.getrefcount(buffer) == 3:
                return buffer
        return None

    @staticmethod
    def capacity(size: int) -> int:
        """Large buffers in whole MiB, so one serves the next frame of about the same size."""
        return size if size < _KEPT_MIN else -(-size // _KEPT_MIN) * _KEPT_MIN

    def offer(self, buffer: bytearray) -> None:
        if len(buffer) >= _KEPT_MIN and self._held + len(buffer) <= _KEPT_BYTES:
            self._buffers.append(buffer)
            self._held += len(buffer)


class FramedSocket:
    """One peer's framed stream over a (TLS) socket. Not thread-safe."""

    def __init__(
        self, sock: socket.socket, max_payload: int = MAX_PAYLOAD, grow_kept: bool = True
    ) -> None:
        """``grow_kept=False`` reads a kept frame into a buffer of its full size at once, for a
        peer whose length prefixes are trusted as far as ``max_payload`` (a client's pinned
        server): growing it as the bytes arrive copies and faults in its pages twice over."""
        self.sock = sock
        self.max_payload = max_payload
        self._grow_kept = grow_kept
        self._buffer = bytearray(_INITIAL_BUFFER)
        self._kept = _KeptBuffers()
        # A frame goes out as a header write and a payload write; with Nagle's algorithm the
        # payload's last partial segment waits for the peer's delayed ACK (40 ms) on every
        # request/reply turn. Frames are already large, so small-segment coalescing buys nothing.
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, header: dict[str, Any], payload: Blob = b"") -> None:
        self.send_parts(header, [payload])

    def send_parts(self, header: dict[str, Any], parts: Sequence[Blob]) -> None:
        """One frame whose payload is the parts in order. Small parts are joined into writes of
        at least _JOINED bytes (one TLS record holds 16 KiB); large ones go out as they are,
        never copied into a frame-sized buffer first."""
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        if len(encoded) > MAX_HEADER:
            raise FrameTooLarge(f"frame header of {len(encoded)} bytes exceeds {MAX_HEADER}")
        size = sum(len(part) for part in parts)
        if size > self.max_payload:
            raise FrameTooLarge(f"frame payload of {size} bytes exceeds {self.max_payload}")
        pending: list[Blob] = [PREFIX.pack(len(encoded), size), encoded]
        pending_size = PREFIX.size + len(encoded)
        for part in parts:
            if len(part) >= _JOINED:
                self.sock.sendall(b"".join(pending))
                self.sock.sendall(part)
                pending, pending_size = [], 0
                continue
            pending.append(part)
            pending_size += len(part)
            if pending_size >= _JOINED:
                self.sock.sendall(b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            self.sock.sendall(b"".join(pending))

    def recv(self, keep: bool = False) -> Frame:
        """The next frame. Its payload view is valid until the next call; with ``keep`` it is
        read into a buffer of its own, so views into it stay valid with no copy made."""
        prefix = self._read_exact(PREFIX.size, at_frame_start=True)
        header_len, payload_len = PREFIX.unpack(prefix)
        if header_len == 0 or header_len > MAX_HEADER:
            raise FrameTooLarge(f"frame header length {header_len} is out of bounds")
        if payload_len > self.max_payload:
            raise FrameTooLarge(f"frame payload length {payload_len} exceeds {self.max_payload}")
        if keep:
            header = _decode_header(self._read_exact(header_len))
            return Frame(header, self._read_kept(payload_len))
        body = self._read_exact(header_len + payload_len)
        return Frame(_decode_header(body[:header_len]), body[header_len:])

    def _read_exact(self, size: int, at_frame_start: bool = False) -> memoryview:
        received = 0
        while received < size:
            if received == len(self._buffer):
                # Doubled as bytes arrive, never past the frame: a length prefix alone (a slow
                # or lying peer) costs no memory.
                self._buffer = _doubled(self._buffer, size)
            room = memoryview(self._buffer)[received : min(size, len(self._buffer))]
            count = self.sock.recv_into(room)
            if count == 0:
                if received == 0 and at_frame_start:
                    raise ConnectionClosed("peer closed the connection")
                raise ProtocolError("connection closed in the middle of a frame")
            received += count
        return memoryview(self._buffer)[:size]

    def _read_kept(self, size: int) -> memoryview:
        buffer = self._kept.free(size)
        if buffer is None:
            capacity = self._kept.capacity(size)
            if self._grow_kept:
                buffer = self._read_growing(size, capacity)
            else:
                buffer = bytearray(capacity)
                self._fill(memoryview(buffer)[:size])
            self._kept.offer(buffer)
        else:
            self._fill(memoryview(buffer)[:size])
        return memoryview(buffer)[:size]

    def _read_growing(self, size: int, capacity: int) -> bytearray:
        """A new buffer that grows as the bytes arrive, as the frame buffer does."""
        buffer = bytearray(min(capacity, _INITIAL_BUFFER))
        received = 0
        while True:
            end = min(size, len(buffer))
            self._fill(memoryview(buffer)[received:end])
            received = end
            if received == size:
                return buffer
            buffer = _doubled(buffer, capacity)

    def _fill(self, view: memoryview) -> None:
        received = 0
        while received < len(view):
            count = self.sock.recv_into(view[received:])
            if count == 0:
                raise ProtocolError("connection closed in the middle of a frame")
            received += count


def _doubled(full: bytearray, limit: int) -> bytearray:
    """A buffer twice the size of ``full`` (never past ``limit``) that starts with its bytes."""
    grown = bytearray(min(limit, 2 * len(full)))
    # Whole and from a bytearray: CPython copies that directly (a view would be copied twice).
    grown[: len(full)] = full
    return grown


def record_parts(records: Sequence[tuple[bytes, Blob]]) -> list[Blob]:
    """The parts of a payload of (chunk id, sealed blob) records, blobs not copied (for
    ``FramedSocket.send_parts``)."""
    parts: list[Blob] = []
    for chunk_id, sealed in records:
        parts.append(RECORD.pack(chunk_id, len(sealed)))
        parts.append(sealed)
    return parts


class Records:
    """The (chunk id, sealed view) records of a payload, made as they are iterated.

    Every length is checked once, up front; iterating again parses again. Held as a list, a
    payload of tiny records would cost some twenty times its own size in objects.
    """

    def __init__(self, payload: memoryview) -> None:
        self.payload = payload
        self._count = 0
        offset = 0
        total = len(payload)
        while offset < total:
            if total - offset < RECORD.size:
                raise ProtocolError("truncated record header")
            length = RECORD.unpack_from(payload, offset)[1]
            offset += RECORD.size
            if length > total - offset:
                raise ProtocolError("record length runs past the payload")
            offset += length
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[bytes, memoryview]]:
        offset = 0
        while offset < len(self.payload):
            chunk_id, length = RECORD.unpack_from(self.payload, offset)
            offset += RECORD.size
            yield chunk_id, self.payload[offset : offset + length]
            offset += length


def unpack_records(payload: memoryview) -> Records:
    """Split a records payload; every length is checked against what is actually there."""
    return Records(payload)


def split_ids(payload: memoryview, id_size: int = 32, max_ids: int | None = None) -> list[bytes]:
    if len(payload) % id_size:
        raise ProtocolError("id list payload is not a whole number of ids")
    # Checked before the list exists: 16 MiB of ids would be half a million objects.
    if max_ids is not None and len(payload) > max_ids * id_size:
        raise InvalidRequest(f"at most {max_ids} ids per request")
    raw = payload.tobytes()
    return [raw[i : i + id_size] for i in range(0, len(raw), id_size)]
