"""Bad input gets a clear one-line error and a non-zero exit; nothing already stored is lost."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from rpybackup_core.demo import compare_trees
from tests.conftest import listed


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("rpybackup-core: error:")]
    assert len(lines) == 1, err
    return lines[0]


def enroll_cli(cli, server, config: Path, code: str, fingerprint: str | None = None):
    """`rpybackup-core --config CONFIG enroll ADDRESS CODE --fingerprint FP` against ``server``."""
    return cli(
        "--config",
        str(config),
        "enroll",
        server.address,
        code,
        "--fingerprint",
        fingerprint or server.fingerprint,
    )


def test_wrong_enrollment_code_is_refused(server, cli, tmp_path: Path) -> None:
    server.add_client("alice")
    result = enroll_cli(cli, server, tmp_path / "c.toml", "AAAAA-BBBBB-CCCCC")
    assert result.code == 1
    assert "not valid" in one_line_error(result.err)
    assert not (tmp_path / "c.toml").exists()


def test_reused_enrollment_code_is_refused(server, cli, tmp_path: Path) -> None:
    code = server.add_client("alice")
    first = enroll_cli(cli, server, tmp_path / "a.toml", code)
    assert first.code == 0, first.err
    second = enroll_cli(cli, server, tmp_path / "b.toml", code)
    assert second.code == 1
    assert "already used" in one_line_error(second.err)


def test_expired_enrollment_code_is_refused(server, cli, tmp_path: Path) -> None:
    code = server.repo.add_client("alice", admin=False, ttl=-1)
    result = enroll_cli(cli, server, tmp_path / "c.toml", code)
    assert result.code == 1
    assert "expired" in one_line_error(result.err)


def test_wrong_fingerprint_refuses_to_connect(server, cli, tmp_path: Path) -> None:
    code = server.add_client("alice")
    result = enroll_cli(cli, server, tmp_path / "c.toml", code, fingerprint=":".join(["AB"] * 32))
    assert result.code == 1
    assert "does not match" in one_line_error(result.err)
    # The code was never sent, so the real server still accepts it.
    ok = enroll_cli(cli, server, tmp_path / "c.toml", code)
    assert ok.code == 0, ok.err


def test_server_down_names_the_address(server, cli) -> None:
    config = server.enroll("alice")
    address = server.address
    server.stop()
    result = cli("--config", str(config.path), "snapshots")
    assert result.code == 1
    line = one_line_error(result.err)
    assert "cannot reach the server" in line and address in line


def test_usage_errors_exit_2(cli) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("restore", "latest")
    assert exited.value.code == 2


def test_bad_snapshot_time_is_a_usage_error(server, cli, sample_tree: Path) -> None:
    config = server.enroll("alice")
    result = cli("--config", str(config.path), "run", str(sample_tree), "--time", "yesterday")
    assert result.code == 2
    assert "ISO 8601" in one_line_error(result.err)


def test_unreadable_file_is_skipped_reported_and_exit_is_nonzero(
    server, cli, tmp_path: Path
) -> None:
    config = server.enroll("alice")
    source = tmp_path / "src"
    source.mkdir()
    (source / "fine.txt").write_text("still backed up\n")
    sources = [str(source)]
    if os.geteuid() == 0:
        # Root reads any file whatever its mode, but not a write-only sysctl.
        sources.append("/proc/sys/vm/drop_caches")
    else:
        blocked = source / "secret.txt"
        blocked.write_text("no access\n")
        blocked.chmod(0)
    result = cli("--config", str(config.path), "run", *sources, "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert len(report["errors"]) == 1
    assert ("drop_caches" in report["errors"][0]) or ("secret.txt" in report["errors"][0])
    listed = json.loads(cli("--config", str(config.path), "rlist", "--json").out)
    assert str(source / "fine.txt") in [entry["path"] for entry in listed["entries"]]


def test_file_changing_during_the_read_still_gives_a_consistent_snapshot(
    server, cli, tmp_path: Path
) -> None:
    config = server.enroll("alice")
    source = tmp_path / "src"
    source.mkdir()
    growing = source / "growing.log"
    growing.write_bytes(os.urandom(8 * 1024 * 1024))
    stop = threading.Event()

    def append() -> None:
        with growing.open("ab") as handle:
            for _ in range(4096):
                if stop.is_set():
                    break
                handle.write(os.urandom(64 * 1024))
                handle.flush()

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        result = cli("--config", str(config.path), "run", str(source), "--json")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert result.code == 0, result.err
    target = tmp_path / "restored"
    restored = cli("--config", str(config.path), "restore", "latest", "--target", str(target))
    # Restore checks the stored file digest: what was read is what comes back, whole.
    assert restored.code == 0, restored.err
    assert (target / growing.relative_to("/")).stat().st_size >= 8 * 1024 * 1024


def _raw_tls(address: str) -> ssl.SSLSocket:
    host, port = address.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection((host, int(port)), timeout=30)
    return context.wrap_socket(sock)


def _closed_by_server(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">II", 0xFFFFFFFF, 0),
        struct.pack(">II", 10, 0xFFFFFFF0),
        struct.pack(">II", 0, 0),
        struct.pack(">II", 100, 0) + b'{"op": "hel',
    ],
    ids=["huge-header", "huge-payload", "empty-header", "truncated"],
)
def test_malformed_frames_close_that_connection_only(server, garbage: bytes) -> None:
    config = server.enroll("alice")
    hostile = _raw_tls(server.address)
    hostile.sendall(garbage)
    if garbage.endswith(b"hel"):
        # The peer vanishes mid-frame; the server must drop it and carry on.
        hostile.close()
    else:
        assert _closed_by_server(hostile)
        hostile.close()
    assert server.client("alice").snapshots() == []
    assert config.name == "alice"


def test_plaintext_garbage_instead_of_tls_is_dropped(server) -> None:
    server.enroll("alice")
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        with contextlib.suppress(ConnectionError):
            raw.recv(4096)
    assert server.client("alice").snapshots() == []


def test_requests_before_authentication_are_denied(server) -> None:
    from rpybackup_core.errors import PermissionDenied
    from rpybackup_core.remote import RemoteRepository

    with (
        RemoteRepository.open(server.address, server.fingerprint) as remote,
        pytest.raises(PermissionDenied),
    ):
        remote.snapshots()


def test_corrupt_blob_is_named_at_restore_and_the_rest_restores(
    server, cli, sample_tree: Path, tmp_path: Path
) -> None:
    config = server.enroll("alice")
    assert cli("--config", str(config.path), "run", str(sample_tree)).code == 0
    location = server.repo.locate(1, [])  # warm the connection; no rows asked
    assert location == {}
    photo_chunks = _chunks_of(server, config, str(sample_tree / "photo.raw"))
    damaged = server.repo.locate(server.repo.client_by_name("alice").id, photo_chunks[:1])
    where = next(iter(damaged.values()))
    pack_path = server.config.data_dir / "storage" / "packs" / where.pack
    data = bytearray(pack_path.read_bytes())
    data[where.offset + where.length // 2] ^= 0x01
    pack_path.write_bytes(bytes(data))

    target = tmp_path / "restored"
    result = cli("--config", str(config.path), "restore", "latest", "--target", str(target))
    assert result.code == 1
    assert "photo.raw" in result.err and "photo-copy.raw" in result.err
    restored = target / sample_tree.relative_to("/")
    assert not (restored / "photo.raw").exists()
    assert (restored / "docs" / "report-03.txt").read_bytes() == (
        sample_tree / "docs" / "report-03.txt"
    ).read_bytes()


def _chunks_of(server, config, path: str) -> list[bytes]:
    entries = listed(server.client(config.name), path)
    return entries[0].node.content


def test_restore_refuses_to_write_through_a_symlink_in_the_target(
    server, cli, sample_tree: Path, tmp_path: Path
) -> None:
    config = server.enroll("alice")
    assert cli("--config", str(config.path), "run", str(sample_tree)).code == 0
    target = tmp_path / "restored"
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = target / sample_tree.relative_to("/")
    inside.mkdir(parents=True)
    (inside / "docs").symlink_to(outside)

    result = cli("--config", str(config.path), "restore", "latest", "--target", str(target))
    assert result.code == 1
    assert "refusing to write through" in result.err
    assert list(outside.iterdir()) == []


def test_restore_include_refuses_dot_dot(server, cli, sample_tree: Path, tmp_path: Path) -> None:
    config = server.enroll("alice")
    assert cli("--config", str(config.path), "run", str(sample_tree)).code == 0
    result = cli(
        "--config",
        str(config.path),
        "restore",
        "latest",
        "--target",
        str(tmp_path / "t"),
        "--include",
        "../../etc",
    )
    assert result.code == 2
    assert "not a valid path" in one_line_error(result.err)


def test_disk_full_on_the_server_fails_cleanly_and_keeps_earlier_snapshots(
    tmp_path: Path, cli
) -> None:
    from rpybackup_core.config import ServerConfig
    from rpybackup_core.tls import create_identity
    from tests.conftest import ServerHarness

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    harness = None
    try:
        config = ServerConfig(path=small / "server.toml", data_dir=small / "data", listen_port=0)
        config.pack_size = 4 * 1024 * 1024
        fingerprint = create_identity(config.tls_dir)
        harness = ServerHarness(tmp_path / "h", config, fingerprint)
        harness.root.mkdir()
        harness.start()
        client_config = harness.enroll("alice")

        first = tmp_path / "first"
        first.mkdir()
        (first / "a.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        assert cli("--config", str(client_config.path), "run", str(first)).code == 0

        big = tmp_path / "big"
        big.mkdir()
        (big / "huge.bin").write_bytes(os.urandom(40 * 1024 * 1024))
        failed = cli("--config", str(client_config.path), "run", str(big))
        assert failed.code == 1
        assert "full" in one_line_error(failed.err)
        # Whatever the failed run left behind, the disk stays full: what is stored can still
        # be listed and restored.
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            while handle.write(b"\0" * 65536):
                handle.flush()
        snapshots = json.loads(cli("--config", str(client_config.path), "snapshots", "--json").out)
        assert len(snapshots) == 1

        target = tmp_path / "restored"
        assert (
            cli(
                "--config", str(client_config.path), "restore", "latest", "--target", str(target)
            ).code
            == 0
        )
        assert compare_trees(first, target / first.relative_to("/")) == []

        filler.unlink()
        subprocess.run(["mount", "-o", "remount,size=128m", str(small)], check=True)
        again = cli("--config", str(client_config.path), "run", str(big))
        assert again.code == 0, again.err
    finally:
        if harness is not None:
            harness.stop()
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
