"""The daemon as an admin runs it: `server init`, `serve` in its own process, real clients."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rpybackup_core.demo import compare_trees

CLI = [sys.executable, "-m", "rpybackup_core.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never answered")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


@dataclass
class Daemon:
    config: Path
    data: Path
    port: int
    fingerprint: str
    process: subprocess.Popen[str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def enroll(self, name: str, directory: Path) -> Path:
        added = run("--config", str(self.config), "client", "add", name, "--json")
        assert added.returncode == 0, added.stderr
        code = json.loads(added.stdout)["code"]
        client_config = directory / f"{name}.toml"
        enrolled = run(
            "--config",
            str(client_config),
            "enroll",
            self.address,
            code,
            "--fingerprint",
            self.fingerprint,
        )
        assert enrolled.returncode == 0, enrolled.stderr
        return client_config


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    port = free_port()
    config = tmp_path / "server.toml"
    init = run(
        "--config",
        str(config),
        "server",
        "init",
        "--data",
        str(tmp_path / "data"),
        "--listen",
        f"127.0.0.1:{port}",
        "--json",
    )
    assert init.returncode == 0, init.stderr
    info = json.loads(init.stdout)
    assert info["listen"] == f"127.0.0.1:{port}"
    process = subprocess.Popen(
        [*CLI, "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port)
        yield Daemon(config, tmp_path / "data", port, info["fingerprint"], process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_serve_shuts_down_cleanly_on_sigterm_and_logs_to_stderr(daemon: Daemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0
    log = daemon.process.stderr.read() if daemon.process.stderr else ""
    assert "listening on" in log and "SIGTERM" in log and "server stopped" in log


def test_server_init_refuses_to_overwrite(daemon: Daemon) -> None:
    again = run("--config", str(daemon.config), "server", "init", "--data", "/tmp/elsewhere")
    assert again.returncode == 1
    assert "already exists" in again.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_only_tls_1_3_is_accepted(daemon: Daemon) -> None:
    def handshake(flag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", flag, "-connect", daemon.address],
            input="",
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert handshake("-tls1_2").returncode != 0
    modern = handshake("-tls1_3")
    assert modern.returncode == 0, modern.stderr
    assert "TLSv1.3" in modern.stdout


def test_no_plaintext_or_enrollment_code_in_the_servers_files(
    daemon: Daemon, tmp_path: Path
) -> None:
    added = run("--config", str(daemon.config), "client", "add", "alice", "--json")
    code = json.loads(added.stdout)["code"]
    client_config = tmp_path / "alice.toml"
    assert (
        run(
            "--config",
            str(client_config),
            "enroll",
            daemon.address,
            code,
            "--fingerprint",
            daemon.fingerprint,
        ).returncode
        == 0
    )
    token = next(line for line in client_config.read_text().splitlines() if "token" in line)
    token = token.split("=", 1)[1].strip().strip('"')

    marker = "ZEBRA-PLAINTEXT-MARKER-7731"
    source = tmp_path / f"folder-{marker}"
    source.mkdir()
    (source / f"name-{marker}.txt").write_text((marker + " compressible text\n") * 500)
    backed = run("--config", str(client_config), "run", str(source))
    assert backed.returncode == 0, backed.stderr
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(timeout=30)

    needles = [marker.encode(), code.encode(), code.replace("-", "").encode(), token.encode()]
    for path in daemon.data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"{needle!r} found in {path}"


def test_concurrent_clients_against_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    configs = [daemon.enroll(f"client{i}", tmp_path) for i in range(4)]
    sources = []
    for index in range(4):
        source = tmp_path / f"src{index}"
        source.mkdir()
        (source / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        (source / "shared.txt").write_text("the same in every client\n" * 1000)
        sources.append(source)
    processes = [
        subprocess.Popen(
            [*CLI, "--config", str(cfg), "run", str(src), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cfg, src in zip(configs, sources, strict=True)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    for cfg, src in zip(configs, sources, strict=True):
        target = tmp_path / f"restore-{cfg.stem}"
        restored = run("--config", str(cfg), "restore", "latest", "--target", str(target))
        assert restored.returncode == 0, restored.stderr
        assert compare_trees(src, target / src.relative_to("/")) == []
        listed = json.loads(run("--config", str(cfg), "snapshots", "--json").stdout)
        assert len(listed) == 1


def test_client_streams_a_2gib_file_in_bounded_memory(daemon: Daemon, tmp_path: Path) -> None:
    client_config = daemon.enroll("alice", tmp_path)
    source = tmp_path / "big"
    source.mkdir()
    big = source / "sparse.img"
    with big.open("wb") as handle:
        handle.truncate(2 * 1024**3)
        for offset in range(0, 2 * 1024**3, 256 * 1024**2):
            handle.seek(offset)
            handle.write(os.urandom(1024 * 1024))
    script = (
        "import resource, subprocess, sys\n"
        "code = subprocess.call(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    measured = subprocess.run(
        [sys.executable, "-c", script, *CLI, "--config", str(client_config), "run", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert measured.returncode == 0, measured.stderr
    peak_kib = int(measured.stdout.strip().splitlines()[-1])
    assert peak_kib < 150 * 1024, f"client peak RSS {peak_kib // 1024} MiB"


def test_the_servers_state_is_private_to_its_user(daemon: Daemon) -> None:
    assert daemon.data.stat().st_mode & 0o077 == 0
    for name in ("repo.sqlite", "tls/server.key"):
        assert (daemon.data / name).stat().st_mode & 0o077 == 0, name


def test_serve_on_a_taken_port_fails_with_one_line(daemon: Daemon) -> None:
    second = subprocess.run(
        [*CLI, "--config", str(daemon.config), "serve"], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith("rpybackup-core: error: cannot listen")
    assert "Traceback" not in second.stderr
