"""Guessing enrollment codes or credentials: limited per source address, and logged.

The guesser is refused once it has used its failures, even with a right secret; another address
is not affected; the window ends on its own. (Secrets are compared with hmac.compare_digest in
Repository.authenticate, against a dummy digest when the name is unknown.)
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any

import pytest

from rpybackup_core.errors import ConnectionClosed, ProtocolError
from rpybackup_core.protocol import MAGIC, PROTOCOL_VERSION, FramedSocket
from rpybackup_core.ratelimit import MAX_FAILURES, AttemptLimiter, source_key
from tests.conftest import ServerHarness

from .wire import Wire


class RawClient:
    """The wire protocol by hand, from a chosen source address (127.0.0.0/8 is all loopback)."""

    def __init__(self, address: str, source: str) -> None:
        host, port = address.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.framed = FramedSocket(context.wrap_socket(raw))
        self.request("hello", magic=MAGIC, protocol=PROTOCOL_VERSION)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.framed.send({"op": op, "id": 1, **fields})
        return self.framed.recv().header

    def close(self) -> None:
        self.framed.sock.close()


def _error_code(reply: dict[str, Any]) -> str | None:
    error = reply.get("error")
    return error.get("code") if isinstance(error, dict) else None


def _attempt(server: ServerHarness, source: str, op: str, **fields: Any) -> str | None:
    client = RawClient(server.address, source)
    try:
        return _error_code(client.request(op, **fields))
    finally:
        client.close()


def test_bad_enrollment_codes_are_limited_per_address_and_logged(
    server: ServerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    code = server.add_client("bob")
    caplog.set_level(logging.WARNING, logger="rpybackup_core")
    for _ in range(MAX_FAILURES):
        assert _attempt(server, "127.0.0.1", "enroll", code="AAAAA-BBBBB-CCCCC") == "enroll"
    # Used up: even the right code is not looked at from this address now.
    assert _attempt(server, "127.0.0.1", "enroll", code=code) == "rate_limited"
    assert _attempt(server, "127.0.0.2", "enroll", code=code) is None
    logged = [record.getMessage() for record in caplog.records]
    assert sum("allowed failures" in line for line in logged) == MAX_FAILURES
    assert any("too many failed attempts from 127.0.0.1" in line for line in logged)


def test_a_replayed_enrollment_code_gets_nothing(server: ServerHarness) -> None:
    code = server.add_client("bob")
    client = RawClient(server.address, "127.0.0.5")
    try:
        first = client.request("enroll", code=code)
        replayed = client.request("enroll", code=code)
    finally:
        client.close()
    assert first.get("ok") and first.get("token")
    assert _error_code(replayed) == "enroll" and "token" not in replayed
    assert "already used" in replayed["error"]["message"]


def test_bad_credentials_are_limited_per_address_and_a_success_does_not_reset_them(
    server: ServerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    alice = server.enroll("alice")
    caplog.set_level(logging.WARNING, logger="rpybackup_core")
    for attempt in range(MAX_FAILURES):
        assert _attempt(server, "127.0.0.3", "auth", client="alice", token="guess") == "auth"
        if attempt == MAX_FAILURES // 2:
            assert _attempt(server, "127.0.0.3", "auth", client="alice", token=alice.token) is None
    assert _attempt(server, "127.0.0.3", "auth", client="alice", token=alice.token) == (
        "rate_limited"
    )
    assert _attempt(server, "127.0.0.4", "auth", client="alice", token=alice.token) is None
    assert any("authentication as 'alice' refused" in r.getMessage() for r in caplog.records)
    # The client on the default address is not disturbed.
    assert server.client("alice").snapshots() == []


def test_the_window_ends_and_the_table_stays_bounded() -> None:
    now = [1000.0]
    limiter = AttemptLimiter(max_failures=3, window=60, max_tracked=100, clock=lambda: now[0])
    for _ in range(3):
        limiter.failure("192.0.2.1", "bad code")
    with pytest.raises(Exception, match="too many failed attempts"):
        limiter.check("192.0.2.1", "enrollment")
    now[0] += 61
    limiter.check("192.0.2.1", "enrollment")
    for host in range(1000):
        limiter.failure(f"10.0.{host // 256}.{host % 256}", "bad code")
    assert limiter.tracked() == 100


def test_an_ipv6_host_counts_as_its_64() -> None:
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_a_silent_stranger_is_dropped_but_a_silent_client_is_not(server: ServerHarness) -> None:
    """Before it authenticates, a connection may not hold its slot for the whole idle timeout."""
    alice = server.enroll("alice")
    started = time.monotonic()
    stranger = Wire(server.repo, auth_timeout=0.5)
    with pytest.raises((ConnectionClosed, ProtocolError, OSError)):
        stranger.framed.recv()
    assert time.monotonic() - started < 15
    stranger.close()

    member = Wire(server.repo, auth_timeout=0.5)
    member.auth("alice", alice.token)
    time.sleep(1.0)  # silence longer than the strangers' leash is the point here
    replies = member.request({"op": "ping"})
    assert replies and replies[0][0].get("ok")
    member.close()
