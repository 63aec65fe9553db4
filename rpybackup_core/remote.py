"""The client's connection to the server: TLS with a pinned fingerprint, framed requests.

``RemoteRepository`` is the only place the client speaks the wire protocol. Uploads are
pipelined: ``put`` and ``ask_has`` send without waiting, and the replies (which the server sends
in request order) are collected in a bounded window, so the server works while the client reads
and seals the next batch.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from .config import ClientConfig, parse_address
from .errors import (
    ConnectionClosed,
    ProtocolError,
    ServerUnreachable,
    from_wire,
)
from .protocol import MAGIC, PROTOCOL_VERSION, Blob, FramedSocket, record_parts, unpack_records
from .tls import client_context, verify_pinned

CONNECT_TIMEOUT = 15.0
IO_TIMEOUT = 600.0
PUT_WINDOW = 8


class RemoteRepository:
    def __init__(self, framed: FramedSocket, address: str) -> None:
        self._framed = framed
        self.address = address
        self._next_id = 0
        # Requests sent and not yet answered, oldest first; has-answers wait in _answers.
        self._outstanding: deque[tuple[int, str]] = deque()
        self._answers: dict[int, bytes] = {}
        # Get requests sent and not yet read; their replies follow everything above.
        self._gets: deque[int] = deque()
        self.client = ""
        self.admin = False
        self.server_version = ""

    # ---- connecting -------------------------------------------------------------------------

    @classmethod
    def open(cls, address: str, fingerprint: str) -> RemoteRepository:
        """Connect, pin the certificate and say hello; nothing is sent before the pin matches."""
        host, port = parse_address(address)
        try:
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ServerUnreachable(f"cannot reach the server at {address}: {reason}") from exc
        try:
            tls = client_context().wrap_socket(raw, server_hostname=host)
            verify_pinned(tls, fingerprint)
        except (ssl.SSLEOFError, ConnectionError) as exc:
            raw.close()
            # The daemon closes a connection it has no slot for without a word: TLS has not begun.
            raise ServerUnreachable(
                f"the server at {address} closed the connection before the TLS handshake ended"
                " (it refuses connections while its slots are full; its log says why)"
            ) from exc
        except ssl.SSLError as exc:
            raw.close()
            raise ServerUnreachable(f"TLS handshake with {address} failed: {exc}") from exc
        except BaseException:
            raw.close()
            raise
        tls.settimeout(IO_TIMEOUT)
        # The one peer is the server this client pinned: its frames need not grow as they arrive.
        remote = cls(FramedSocket(tls, grow_kept=False), address)
        try:
            reply, _ = remote.request("hello", magic=MAGIC, protocol=PROTOCOL_VERSION)
        except (ProtocolError, OSError) as exc:
            remote.close()
            raise ServerUnreachable(f"{address} does not speak the rpybackup protocol") from exc
        remote.server_version = str(reply.get("server", ""))
        return remote

    @classmethod
    def connect(cls, address: str, fingerprint: str, name: str, token: str) -> RemoteRepository:
        remote = cls.open(address, fingerprint)
        try:
            reply, _ = remote.request("auth", client=name, token=token)
        except BaseException:
            remote.close()
            raise
        remote.client = name
        remote.admin = bool(reply.get("admin"))
        return remote

    @classmethod
    def from_config(cls, config: ClientConfig) -> RemoteRepository:
        return cls.connect(config.server, config.fingerprint, config.name, config.token)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._framed.sock.close()

    def __enter__(self) -> RemoteRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ---------------------------------------------------------------------------

    def _send(self, op: str, parts: Sequence[Blob] = (), **fields: Any) -> int:
        self._next_id += 1
        try:
            self._framed.send_parts({"op": op, "id": self._next_id, **fields}, parts)
        except OSError as exc:
            raise ServerUnreachable(f"lost the connection to {self.address}: {exc}") from exc
        return self._next_id

    def _receive(self, request_id: int, keep: bool = False) -> tuple[dict[str, Any], memoryview]:
        try:
            frame = self._framed.recv(keep)
        except ConnectionClosed as exc:
            raise ServerUnreachable(f"the server at {self.address} closed the connection") from exc
        except OSError as exc:
            raise ServerUnreachable(f"lost the connection to {self.address}: {exc}") from exc
        header = frame.header
        if header.get("id") != request_id:
            raise ProtocolError("reply does not match the request")
        error = header.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ProtocolError("malformed error reply")
            raise from_wire(str(error.get("code")), str(error.get("message")))
        return header, frame.payload

    def request(self, op: str, payload: bytes = b"", **fields: Any) -> tuple[dict[str, Any], bytes]:
        self.flush()
        if self._gets:
            raise ProtocolError("a request was made before earlier chunks were read")
        request_id = self._send(op, [payload], **fields)
        header, body = self._receive(request_id)
        return header, body.tobytes()

    # ---- chunk operations -------------------------------------------------------------------

    def has(self, ids: list[bytes]) -> list[bool]:
        """Which ids the server holds."""
        return self.has_answer(self.ask_has(ids), len(ids))

    def ask_has(self, ids: list[bytes], reference: bool = False) -> int:
        """Ask which of these ids the server holds, without waiting; see ``has_answer``. With
        ``reference``, those found count as referenced by the snapshot this session commits
        (no refs request needed for them)."""
        fields = {"reference": True} if reference else {}
        request_id = self._send("has", [b"".join(ids)], **fields)
        self._outstanding.append((request_id, "has"))
        return request_id

    def has_answer(self, request_id: int, count: int) -> list[bool]:
        """The answer to an earlier ``ask_has``; replies to older requests are taken first."""
        while request_id not in self._answers:
            if not self._outstanding:
                raise ProtocolError("no such has request is outstanding")
            self._collect_one()
        answer = self._answers.pop(request_id)
        if len(answer) != count:
            raise ProtocolError("has reply does not match the question")
        return [flag == 1 for flag in answer]

    def put(self, records: list[tuple[bytes, bytes | bytearray]]) -> None:
        """Send (chunk id, sealed blob) records without waiting for the reply."""
        self.put_parts(record_parts(records))

    def put_parts(self, parts: list[Blob]) -> None:
        """Send records already laid out by ``protocol.record_parts`` (on a worker thread)."""
        self._outstanding.append((self._send("put", parts), "put"))
        while len(self._outstanding) > PUT_WINDOW:
            self._collect_one()

    def flush(self) -> None:
        """Wait for every outstanding reply (a put error surfaces here)."""
        while self._outstanding:
            self._collect_one()

    def _collect_one(self) -> None:
        request_id, kind = self._outstanding.popleft()
        _, payload = self._receive(request_id)
        if kind == "has":
            self._answers[request_id] = payload.tobytes()

    def sync(self) -> None:
        """Have every chunk this connection sent made durable and indexed on the server."""
        self.request("sync")

    def link(self) -> str:
        """A secret with which a helper process's connection can ``follow`` this one."""
        header, _ = self.request("link")
        link = header.get("link")
        if not isinstance(link, str):
            raise ProtocolError("malformed link reply")
        return link

    def follow(self, link: str) -> None:
        """Help the connection that handed out ``link``: the chunks it has sent count as
        present here (this one does not send them again)."""
        self.request("follow", link=link)

    def refs(self, ids: list[bytes]) -> None:
        self.request("refs", b"".join(ids))

    def get(self, ids: list[bytes]) -> Iterator[tuple[bytes, memoryview]]:
        """Yield (chunk id, sealed blob) for the ids, in order."""
        return self.get_answer(self.ask_get(ids), ids)

    def ask_get(self, ids: list[bytes]) -> int:
        """Ask for chunks without waiting; read them, oldest request first, with get_answer.

        Nothing here re-checks a blob's storage hash: TLS protects the transfer, the server
        checks the hash on every read, and opening a blob authenticates it (AES-GCM).
        """
        self.flush()
        request_id = self._send("get", [b"".join(ids)])
        self._gets.append(request_id)
        return request_id

    def get_answer(self, request_id: int, ids: list[bytes]) -> Iterator[tuple[bytes, memoryview]]:
        if not self._gets or self._gets[0] != request_id:
            raise ProtocolError("chunks must be read in the order they were asked for")
        self._gets.popleft()
        return self._read_chunks(request_id, ids)

    def _read_chunks(self, request_id: int, ids: list[bytes]) -> Iterator[tuple[bytes, memoryview]]:
        """Each blob is a view into its reply frame, which is read into a buffer of its own:
        the frame lives as long as any of its blobs, and no blob is copied out of it."""
        expected = iter(ids)
        while True:
            header, payload = self._receive(request_id, keep=True)
            for chunk_id, sealed in unpack_records(payload):
                if chunk_id != next(expected, None):
                    raise ProtocolError("server returned chunks out of order")
                yield chunk_id, sealed
            if not header.get("more"):
                break
        if next(expected, None) is not None:
            raise ProtocolError("server returned fewer chunks than asked for")

    # ---- snapshots and keys -----------------------------------------------------------------

    def commit(self, meta: dict[str, Any]) -> str:
        header, _ = self.request("commit", **meta)
        return str(header["snapshot"])

    def snapshots(self) -> list[dict[str, Any]]:
        header, _ = self.request("snapshots")
        snapshots = header.get("snapshots")
        if not isinstance(snapshots, list):
            raise ProtocolError("malformed snapshot list")
        return snapshots

    def report_state(self, state: str, last_backup: str | None, last_result: str) -> None:
        self.request("report", state=state, last_backup=last_backup, last_result=last_result)

    def set_wrapped_key(self, wrapped: str) -> None:
        self.request("set_key", wrapped.encode("utf-8"))

    def wrapped_key(self) -> str:
        _, payload = self.request("get_key")
        return payload.decode("utf-8")

    def enroll(self, code: str) -> dict[str, Any]:
        header, _ = self.request("enroll", code=code)
        return header
