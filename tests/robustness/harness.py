"""Real parts for the robustness suite: a `serve` process to kill, trees with known content.

Every wait is bounded, every file written here has a size fixed by the caller, and the daemon's
log goes to a file (a pipe nobody reads would block a chatty server).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rpybackup_core.checker import Checker, CheckReport
from rpybackup_core.client import BackupClient, enroll
from rpybackup_core.config import ClientConfig, ServerConfig
from rpybackup_core.crypto import MasterKey
from rpybackup_core.faults import ENV as FAULTS_ENV
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.repository import Repository
from rpybackup_core.tls import create_identity

CLI = [sys.executable, "-m", "rpybackup_core.cli.main"]
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited with {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"port {port} never answered")


@dataclass
class Daemon:
    """`rpybackup-core serve` in its own process, which a test may SIGKILL and start again."""

    root: Path
    config: ServerConfig
    fingerprint: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    clients: dict[str, ClientConfig] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, pack_size_mib: int = 1) -> Daemon:
        config = ServerConfig(
            path=root / "server.toml", data_dir=root / "data", listen_port=free_port()
        )
        config.pack_size = pack_size_mib * 1024 * 1024
        config.prune_interval = 0
        fingerprint = create_identity(config.tls_dir)
        config.save()
        return cls(root, config, fingerprint)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.config.listen_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "serve.log"

    def start(self, faults: str = "") -> None:
        assert self.process is None or self.process.poll() is not None
        env = {**os.environ, FAULTS_ENV: faults}
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts} faults={faults!r}\n".encode())
            self.process = subprocess.Popen(
                [*CLI, "--config", str(self.config.path), "serve"],
                stdout=log,
                stderr=log,
                env=env,
            )
        wait_for_port(self.config.listen_port, self.process, START_TIMEOUT)

    def restart(self, faults: str = "") -> None:
        self.close()
        self.start(faults)

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would; then reap the process."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def wait_exit(self, timeout: float = 120.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def pack_files(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.config.data_dir / "storage"))

    def wait_sessions_ended(self, deadline: float = 60.0) -> None:
        """Until no upload session holds pins: a dropped client's last pack is then indexed."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.closing(sqlite3.connect(self.config.data_dir / "repo.sqlite")) as db:
                if db.execute("SELECT COUNT(*) FROM pins").fetchone()[0] == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("an upload session never ended")

    def stored_chunk_bytes(self, name: str) -> int:
        with self.repository() as repo:
            return repo.chunk_stats(repo.client_by_name(name).id)["chunk_bytes"]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss(self) -> int:
        """The daemon's peak resident memory so far, in bytes (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    @contextlib.contextmanager
    def repository(self) -> Iterator[Repository]:
        """The repository on disk, opened the way the server-side CLI commands open it."""
        repo = Repository(self.config.data_dir)
        try:
            yield repo
        finally:
            repo.close()

    def check(self, read_data: bool = True) -> CheckReport:
        with self.repository() as repo:
            return Checker(repo).run(read_data=read_data)

    def enroll(self, name: str, directory: Path, key_backup: bool = True) -> ClientConfig:
        """Enroll as `rpybackup-core enroll` does; without ``key_backup`` no passphrase-wrapped
        key goes to the server, which skips Argon2 (concurrent derivations deadlock in
        cryptography 50, and 50 sequential ones cost CI half a minute)."""
        with self.repository() as repo:
            code = repo.add_client(name, admin=False, ttl=3600)
        path = directory / f"{name}.toml"
        if key_backup:
            config, _ = enroll(self.address, code, self.fingerprint, path, passphrase="pw")
        else:
            with RemoteRepository.open(self.address, self.fingerprint) as remote:
                token = str(remote.enroll(code)["token"])
            config = ClientConfig(
                path=path,
                server=self.address,
                fingerprint=self.fingerprint,
                name=name,
                token=token,
                key=MasterKey.generate().to_text(),
            )
        config.cache_dir = str(directory / f"cache-{name}")
        config.save()
        self.clients[name] = config
        return config

    def client(self, name: str) -> BackupClient:
        return BackupClient(self.clients[name])


def assert_clean(report: CheckReport) -> None:
    problems = [problem.describe() for problem in report.problems]
    assert report.ok, "check found problems:\n" + "\n".join(problems)


# ---- trees with known content -------------------------------------------------------------


def manifest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under root."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def restored_manifest(target: Path, source: Path) -> dict[str, str]:
    """The manifest of ``source`` as restored under ``target`` (restore keeps absolute paths)."""
    return manifest(target / source.relative_to("/"))


@dataclass
class ChangingTree:
    """A source directory that changes a little each round and stays bounded in size."""

    root: Path
    rng: random.Random
    max_files: int = 8
    max_size: int = 1024 * 1024
    serial: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path) -> int:
        size = self.rng.randrange(self.max_size // 4, self.max_size)
        path.write_bytes(self.rng.randbytes(size))
        return size

    def change(self, new_files: int = 2) -> int:
        """Add ``new_files`` files, rewrite one, drop the oldest past ``max_files``; bytes new."""
        written = 0
        for _ in range(new_files):
            self.serial += 1
            written += self._write(self.root / f"file-{self.serial:05d}.bin")
        existing = sorted(self.root.glob("file-*.bin"))
        written += self._write(self.rng.choice(existing))
        for path in existing[: max(0, len(existing) - self.max_files)]:
            path.unlink()
        return written
