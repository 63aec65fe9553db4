"""The daemon facing a hostile network: garbage, broken handshakes, slow and lying peers, and a
TLS audit with sslscan. The daemon never dies, its memory stays bounded, and a real client
backing up meanwhile is not disturbed."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rpybackup_core.errors import RPyBackupError, ServerUnreachable
from rpybackup_core.protocol import MAGIC, MAX_PAYLOAD, PREFIX, PROTOCOL_VERSION
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.tls import server_context

from .conftest import FIGURES, Profile
from .harness import Daemon, assert_clean, manifest, restored_manifest

MIB = 1024 * 1024


def _connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.config.listen_port), timeout=30)


def _tls(daemon: Daemon, source: str = "127.0.0.1") -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(
        ("127.0.0.1", daemon.config.listen_port), timeout=30, source_address=(source, 0)
    )
    return context.wrap_socket(raw)


def _frame(header: dict, payload: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return PREFIX.pack(len(encoded), len(payload)) + encoded + payload


HELLO = _frame({"op": "hello", "id": 0, "magic": MAGIC, "protocol": PROTOCOL_VERSION})


def _client_hello() -> bytes:
    """The first flight of a real TLS 1.3 handshake, to send only part of it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _drain(sock: socket.socket) -> None:
    """Hang up our side, then read until the server closes (or resets) the connection."""
    with contextlib.suppress(OSError, ssl.SSLError):
        sock.shutdown(socket.SHUT_WR)
        for _ in range(64):
            if not sock.recv(65536):
                return


def _plaintext(daemon: Daemon, rng) -> None:
    with _connect(daemon) as sock:
        sock.sendall(rng.choice([b"GET / HTTP/1.1\r\n\r\n", HELLO, rng.randbytes(300)]))
        _drain(sock)


def _half_handshake(daemon: Daemon, rng) -> None:
    hello = _client_hello()
    with _connect(daemon) as sock:
        sock.sendall(hello[: rng.randrange(1, len(hello))])


def _tls_then_garbage(daemon: Daemon, rng) -> None:
    with _tls(daemon) as sock:
        sock.sendall(rng.choice([b"", HELLO]) + rng.randbytes(rng.randrange(1, 4096)))
        _drain(sock)


def _lying_length(daemon: Daemon, rng) -> None:
    with _tls(daemon) as sock:
        claim = rng.choice([MAX_PAYLOAD, MAX_PAYLOAD + 1, 2**32 - 1])
        sock.sendall(HELLO + PREFIX.pack(rng.choice([2, 70_000]), claim) + b"{}")


def _out_of_order(daemon: Daemon, rng) -> None:
    frames = [
        _frame({"op": op, "id": 1}, rng.randbytes(64))
        for op in ("put", "commit", "get", "refs", "admin_prune", "auth", "enroll")
    ]
    rng.shuffle(frames)
    with _tls(daemon) as sock:
        sock.sendall(rng.choice([b"", HELLO, HELLO + HELLO]) + b"".join(frames))
        _drain(sock)


ATTACKS: list[Callable] = [
    _plaintext,
    _half_handshake,
    _tls_then_garbage,
    _lying_length,
    _out_of_order,
]


def _backs_up_and_restores(daemon: Daemon, source: Path, target: Path) -> None:
    snapshot = daemon.client("alice").backup([str(source)]).snapshot
    daemon.client("alice").restore(snapshot, target)
    assert restored_manifest(target, source) == manifest(source)


@pytest.fixture
def alice(daemon: Daemon, tmp_path: Path, profile: Profile) -> Iterator[Path]:
    daemon.enroll("alice", tmp_path, key_backup=False)
    source = tmp_path / "alice"
    source.mkdir()
    (source / "notes.bin").write_bytes(profile.rng("alice").randbytes(3 * MIB))
    yield source


def test_hostile_connections_never_stop_the_daemon(
    daemon: Daemon, alice: Path, tmp_path: Path, profile: Profile
) -> None:
    rng = profile.rng("hostile")
    for index in range(profile.hostile_connections):
        rng.choice(ATTACKS)(daemon, rng)
        if index % 20 == 0:
            _backs_up_and_restores(daemon, alice, tmp_path / f"restore-{index}")
    assert daemon.process is not None and daemon.process.poll() is None
    _backs_up_and_restores(daemon, alice, tmp_path / "restore-last")
    assert_clean(daemon.check(read_data=True))
    FIGURES["hostile connections"] += profile.hostile_connections


def test_slow_peers_holding_huge_claims_cost_the_daemon_no_memory(
    daemon: Daemon, alice: Path, tmp_path: Path
) -> None:
    """Thirty connections (from three addresses, within the per-address share of slots) each
    claim a 16 MiB frame and send a trickle of it."""
    baseline = daemon.peak_rss()
    slow = []
    try:
        for index in range(30):
            sock = _tls(daemon, f"127.0.0.{2 + index % 3}")
            sock.sendall(HELLO + PREFIX.pack(2, MAX_PAYLOAD) + b"{}" + b"\0" * 1000)
            slow.append(sock)
        # A real backup meanwhile: its reply proves the daemon has read every slow peer's bytes
        # in its threads long before (the accept loop is sequential).
        _backs_up_and_restores(daemon, alice, tmp_path / "restored")
        grown = daemon.peak_rss() - baseline
    finally:
        for sock in slow:
            sock.close()
    # 30 x 16 MiB if claims were believed; a 64 KiB buffer each when they are not.
    assert grown < 64 * MIB, f"the daemon grew {grown / MIB:.0f} MiB"


def test_one_address_cannot_take_every_connection_slot(
    daemon: Daemon, alice: Path, tmp_path: Path
) -> None:
    daemon.config.max_connections = 8
    daemon.config.save()
    daemon.restart()
    # Plain TCP connections that never start their handshake: each one admitted holds a slot
    # for the 20 s handshake timeout. The accept loop takes connections in order, so all of
    # them are admitted or refused before the client below is.
    hogs = [
        socket.create_connection(
            ("127.0.0.1", daemon.config.listen_port), timeout=30, source_address=("127.0.0.2", 0)
        )
        for _ in range(12)
    ]
    try:
        _backs_up_and_restores(daemon, alice, tmp_path / "restored")
    finally:
        for hog in hogs:
            hog.close()


def test_a_client_refused_for_want_of_a_slot_is_told_why(daemon: Daemon, alice: Path) -> None:
    daemon.config.max_connections = 4
    daemon.config.save()
    daemon.restart()
    # One hog from each of four addresses (each may hold one slot) fills every slot; the
    # accept loop admits them in order, before the client below.
    hogs = [
        socket.create_connection(
            ("127.0.0.1", daemon.config.listen_port), timeout=30, source_address=(source, 0)
        )
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
    ]
    try:
        with pytest.raises(ServerUnreachable, match="closed the connection before the TLS"):
            daemon.client("alice").backup([str(alice)])
    finally:
        for hog in hogs:
            hog.close()
    assert "all 4 connection slots busy" in daemon.log_path.read_text()


def test_a_client_that_finds_no_slot_waits_for_one_to_free(daemon: Daemon, alice: Path) -> None:
    daemon.config.max_connections = 4
    daemon.config.save()
    daemon.restart()
    config = daemon.clients["alice"]
    # An address may hold one of four slots: the second connection waits until the first ends,
    # as the next command of a script does while the server is still ending the last one.
    first = RemoteRepository.from_config(config)
    outcome: list[object] = []

    def second() -> None:
        try:
            with RemoteRepository.from_config(config) as remote:
                outcome.append(remote.snapshots())
        except RPyBackupError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=second)
    waiter.start()
    try:
        deadline = time.monotonic() + 60
        while "waits for a connection slot" not in daemon.log_path.read_text():
            assert time.monotonic() < deadline, "the second connection never waited for a slot"
            time.sleep(0.05)
    finally:
        first.close()
        waiter.join(timeout=60)
    assert outcome == [[]]


def test_tls_audit_with_sslscan(daemon: Daemon) -> None:
    scanner = shutil.which("sslscan")
    if scanner is None:
        pytest.skip("sslscan is not installed (Debian: apt-get install sslscan)")
    scan = subprocess.run(
        [scanner, "--no-colour", "--xml=-", f"127.0.0.1:{daemon.config.listen_port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scan.returncode == 0, scan.stderr
    report = ET.fromstring(scan.stdout[scan.stdout.index("<?xml") :].encode())
    test = report.find("ssltest")
    assert test is not None
    enabled = {p.get("version") for p in test.iter("protocol") if p.get("enabled") == "1"}
    assert enabled == {"1.3"}
    renegotiation = test.find("renegotiation")
    assert renegotiation is not None and renegotiation.get("supported") == "0"
    ciphers = {
        (c.get("sslversion"), c.get("cipher"), int(c.get("bits", 0))) for c in test.iter("cipher")
    }
    assert ciphers and all(version == "TLSv1.3" and bits >= 128 for version, _, bits in ciphers)
    assert {name for _, name, _ in ciphers} <= {
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_GCM_SHA256",
    }
    assert all(h.get("vulnerable") == "0" for h in test.iter("heartbleed"))
    # sslscan's OpenSSL cannot probe compression; the context refuses it (and TLS 1.3 has none).
    assert server_context(daemon.config.tls_dir).options & ssl.OP_NO_COMPRESSION
    FIGURES["tls audit: ciphers accepted"] = len(ciphers)
