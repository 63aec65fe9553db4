"""A server Session on one end of a socketpair, run by its own thread as the daemon runs it.

The test is the client: it sends frames as raw as it likes and reads the replies. TLS is not the
point here (test_network_abuse.py covers it), so each case costs well under a millisecond of
setup, which is what lets the fuzzers run tens of thousands of cases.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from rpybackup_core.errors import ProtocolError, RPyBackupError
from rpybackup_core.protocol import MAGIC, PROTOCOL_VERSION, FramedSocket
from rpybackup_core.ratelimit import AttemptLimiter
from rpybackup_core.repository import Repository
from rpybackup_core.session import AUTH_TIMEOUT, Session

Reply = tuple[dict[str, Any], bytes]
IO_TIMEOUT = 30.0


class ErrorLog(logging.Handler):
    """Counts ERROR records of the server: each is an unexpected failure, a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> ErrorLog:
        logging.getLogger("rpybackup_core").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("rpybackup_core").removeHandler(self)


class Wire:
    def __init__(
        self,
        repo: Repository,
        limiter: AttemptLimiter | None = None,
        pack_size: int = 1024 * 1024,
        hello: bool = True,
        peer: str = "127.0.0.1:40000",
        auth_timeout: float = AUTH_TIMEOUT,
    ) -> None:
        server_end, self._sock = socket.socketpair()
        server_end.settimeout(IO_TIMEOUT)
        self._sock.settimeout(IO_TIMEOUT)
        self.session = Session(
            repo,
            FramedSocket(server_end),
            peer,
            pack_size,
            limiter=limiter or AttemptLimiter(),
            auth_timeout=auth_timeout,
        )
        self.framed = FramedSocket(self._sock)
        self.crashes: list[BaseException] = []
        self._server_end = server_end
        self._next_id = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if hello:
            replies = self.request({"op": "hello", "magic": MAGIC, "protocol": PROTOCOL_VERSION})
            assert replies and replies[0][0].get("ok"), replies

    def _serve(self) -> None:
        # What BackupServer._handle tolerates; anything else would be logged as a server bug.
        try:
            self.session.run()
        except (RPyBackupError, OSError):
            pass
        except BaseException as exc:
            self.crashes.append(exc)
        finally:
            self._server_end.close()

    def send_raw(self, data: bytes) -> None:
        self._sock.sendall(data)

    def request(self, header: dict[str, Any], payload: bytes = b"") -> list[Reply] | None:
        """Send one frame; its replies (a streamed get has several), or None once closed."""
        if "id" not in header:
            self._next_id += 1
            header = {**header, "id": self._next_id}
        try:
            self.framed.send(header, payload)
        except (OSError, RPyBackupError):
            return None
        replies: list[Reply] = []
        while True:
            try:
                frame = self.framed.recv()
            except (ProtocolError, OSError):
                return None
            replies.append((frame.header, frame.payload.tobytes()))
            if not frame.header.get("more"):
                return replies

    def auth(self, name: str, token: str) -> None:
        replies = self.request({"op": "auth", "client": name, "token": token})
        assert replies and replies[0][0].get("ok"), replies

    def close(self) -> None:
        """Hang up and wait for the session to end (it seals and releases what it holds)."""
        self._sock.close()
        self._thread.join(IO_TIMEOUT)
        assert not self._thread.is_alive(), "the session did not end after the peer hung up"
