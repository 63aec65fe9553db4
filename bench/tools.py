"""The contenders: rPyBackup (client -> TLS -> server on loopback), restic and borg.

Every operation runs as its own process and is timed from start to exit, so interpreter or
binary start-up counts, as it does for a user. Peak RSS comes from ``wait4`` for the operation's
process; the rPyBackup server is a separate long-running process whose peak (VmHWM) is reset
before and read after each operation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rpybackup_core.config import ClientConfig

PASSWORD = "bench-password-not-secret"
TIME = "/usr/bin/time"
_SERVER_START_TIMEOUT = 60.0


class BenchError(Exception):
    """A tool failed; the benchmark stops with its output."""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int
    stdout: str
    cpu_seconds: float = 0.0


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a command to completion; its wall time, its own peak RSS, CPU time and stdout.

    The peak comes from GNU time, a small C process: a child forked straight from this
    (large) Python process would inherit its peak RSS in ``ru_maxrss`` across exec.
    """
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    out_path = scratch / f"bench-out-{os.getpid()}.txt"
    usage_path = scratch / f"bench-usage-{os.getpid()}.txt"
    timed = [TIME, "-q", "-o", str(usage_path), "-f", "%M %U %S", *argv]
    with out_path.open("w+b") as out:
        started = time.perf_counter()
        process = subprocess.run(
            timed,
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    out_path.unlink()
    usage = usage_path.read_text().split()
    usage_path.unlink()
    if process.returncode != 0:
        raise BenchError(
            f"{' '.join(argv[:3])} ... exited {process.returncode}: "
            f"{process.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
    peak_kib, user, system = int(usage[-3]), float(usage[-2]), float(usage[-1])
    return Measured(seconds, peak_kib * 1024, text, user + system)


def dir_size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RPyBackup:
    """A real server process and an enrolled client, both driven through the CLI."""

    name = "rpybackup"

    def __init__(self, work: Path, checkout: Path | None = None) -> None:
        """With ``checkout``, the package is imported from that source tree (an A/B pair of
        two commits, bench/ab.py) instead of the installed one."""
        self.work = work
        self.cli = [str(Path(sys.executable).parent / "rpybackup-core")]
        self.env: dict[str, str] | None = None
        if checkout is not None:
            self.cli = [sys.executable, "-P", "-m", "rpybackup_core.cli.main"]
            self.env = {**os.environ, "PYTHONPATH": str(checkout)}
        self.server_config = work / "server.toml"
        self.client_config = work / "client.toml"
        self.data = work / "server-data"
        self.server: subprocess.Popen[bytes] | None = None
        self.log = work / "server.log"

    def setup(self) -> None:
        self.work.mkdir(parents=True)
        port = _free_port()
        init = self.server_cli(
            "server", "init", "--data", str(self.data), "--listen", f"127.0.0.1:{port}", "--json"
        )
        fingerprint = json.loads(init.stdout)["fingerprint"]
        self.start_server(port)
        code = json.loads(self.server_cli("client", "add", "bench", "--json").stdout)["code"]
        run_measured(
            [
                *self.cli,
                "--config",
                str(self.client_config),
                "enroll",
                f"127.0.0.1:{port}",
                code,
                "--fingerprint",
                fingerprint,
            ],
            self.env,
        )
        config = ClientConfig.load(self.client_config)
        config.cache_dir = str(self.work / "client-cache")
        config.save()

    def server_cli(self, *args: str) -> Measured:
        return run_measured([*self.cli, "--config", str(self.server_config), *args], self.env)

    def start_server(self, port: int) -> None:
        with self.log.open("ab") as log:
            self.server = subprocess.Popen(
                [*self.cli, "--config", str(self.server_config), "serve"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        deadline = time.monotonic() + _SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise BenchError(f"the server exited early; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise BenchError("the server did not start listening")

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(timeout=60)
            self.server = None

    def reset_server_peak(self) -> None:
        assert self.server is not None
        # Writing 5 resets the kernel's peak-RSS counter (VmHWM) for the process.
        Path(f"/proc/{self.server.pid}/clear_refs").write_text("5")

    def server_peak(self) -> int:
        assert self.server is not None
        for line in Path(f"/proc/{self.server.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise BenchError("no VmHWM for the server process")

    def _server_cpu(self) -> float:
        assert self.server is not None
        fields = Path(f"/proc/{self.server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _client(self, *args: str) -> tuple[Measured, int]:
        """The client's measurement (CPU includes the server's share) and the server's peak."""
        self.reset_server_peak()
        server_cpu = self._server_cpu()
        measured = run_measured([*self.cli, "--config", str(self.client_config), *args], self.env)
        total_cpu = measured.cpu_seconds + self._server_cpu() - server_cpu
        return replace(measured, cpu_seconds=total_cpu), self.server_peak()

    def backup(self, source: Path) -> tuple[Measured, int]:
        return self._client("run", str(source), "--json")

    def restore(self, target: Path) -> tuple[Measured, int]:
        return self._client("restore", "latest", "--target", str(target))

    def put(self, path: Path) -> tuple[Measured, int]:
        return self._client("put", str(path))

    def get(self, path: Path, dest: Path) -> tuple[Measured, int]:
        return self._client("get", str(path), "-o", str(dest))

    def repo_size(self) -> int:
        return dir_size(self.data) - dir_size(self.data / "tls")


class Restic:
    name = "restic"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.repo = work / "repo"
        self.env = {
            **os.environ,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_CACHE_DIR": str(work / "cache"),
        }

    def setup(self) -> None:
        self.work.mkdir(parents=True)
        run_measured(["restic", "init"], self.env)

    def backup(self, source: Path) -> Measured:
        return run_measured(["restic", "backup", "--quiet", str(source)], self.env)

    def restore(self, target: Path) -> Measured:
        return run_measured(["restic", "restore", "latest", "--target", str(target)], self.env)

    def repo_size(self) -> int:
        return dir_size(self.repo)

    @property
    def version(self) -> str:
        return run_measured(["restic", "version"]).stdout.strip()


class Borg:
    name = "borg"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.repo = work / "repo"
        self.env = {
            **os.environ,
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(work / "base"),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def setup(self) -> None:
        self.work.mkdir(parents=True)
        run_measured(["borg", "init", "--encryption=repokey-blake2", str(self.repo)], self.env)

    def backup(self, source: Path, archive: str) -> Measured:
        return run_measured(
            ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{archive}", str(source)],
            self.env,
        )

    def repo_size(self) -> int:
        return dir_size(self.repo)

    @property
    def version(self) -> str:
        return run_measured(["borg", "--version"]).stdout.strip()


def ensure_installed() -> None:
    """Install restic, borg and GNU time from Debian packages when they are missing."""
    wanted = {"restic": "restic", "borg": "borgbackup", TIME: "time"}
    packages = [package for tool, package in wanted.items() if shutil.which(tool) is None]
    if not packages:
        return
    print(f"installing {' '.join(packages)} ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True)
