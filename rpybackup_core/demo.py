"""The embedded default: a loopback server, an enrolled client, demo data, backup and restore.

Nothing is configured by hand; everything lives in one temporary directory.
"""

from __future__ import annotations

import os
import random
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .archiver import BackupResult
from .client import BackupClient, SnapshotInfo, enroll
from .config import ServerConfig
from .restorer import RestoreResult
from .server import BackupServer
from .tls import create_identity


def make_sample_tree(root: Path, seed: int = 7) -> None:
    """A small tree that exercises what a backup must keep: text, binary, duplicates, an
    empty file and directory, a non-ASCII name, a symlink, odd modes and old mtimes."""
    rng = random.Random(seed)
    words = [
        "backup",
        "restore",
        "chunk",
        "snapshot",
        "server",
        "client",
        "encrypt",
        "verify",
        "retention",
    ]
    (root / "docs" / "notes").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    for index in range(40):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(50, 4000)))
        (root / "docs" / f"report-{index:02}.txt").write_text(text + "\n")
    (root / "docs" / "notes" / "héllo wörld ✓.txt").write_text("non-ASCII names survive\n")
    blob = rng.randbytes(6 * 1024 * 1024)
    (root / "photo.raw").write_bytes(blob)
    (root / "photo-copy.raw").write_bytes(blob)
    (root / "empty.txt").write_bytes(b"")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o750)
    os.symlink("docs/report-00.txt", root / "latest-report")
    old = 1_600_000_000_123_456_789
    os.utime(root / "docs" / "report-01.txt", ns=(old, old))


def compare_trees(source: Path, restored: Path) -> list[str]:
    """Differences in content, type, mode, mtime and symlink target; empty means identical."""
    problems: list[str] = []

    def check(a: Path, b: Path) -> None:
        try:
            sa, sb = os.lstat(a), os.lstat(b)
        except FileNotFoundError as exc:
            problems.append(f"missing: {exc.filename}")
            return
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            problems.append(f"type differs: {a}")
            return
        if stat.S_ISLNK(sa.st_mode):
            if os.readlink(a) != os.readlink(b):
                problems.append(f"symlink target differs: {a}")
            return
        if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            problems.append(f"mode differs: {a}")
        if sa.st_mtime_ns != sb.st_mtime_ns:
            problems.append(f"mtime differs: {a}")
        if stat.S_ISREG(sa.st_mode) and a.read_bytes() != b.read_bytes():
            problems.append(f"content differs: {a}")
        if stat.S_ISDIR(sa.st_mode):
            names_a, names_b = sorted(os.listdir(a)), sorted(os.listdir(b))
            if names_a != names_b:
                problems.append(f"entries differ in {a}: {set(names_a) ^ set(names_b)}")
            for name in set(names_a) & set(names_b):
                check(a / name, b / name)

    check(source, restored)
    return problems


@dataclass
class DemoReport:
    workdir: Path
    address: str
    fingerprint: str
    first: BackupResult
    second: BackupResult
    snapshots: list[SnapshotInfo]
    restored: RestoreResult
    differences: list[str] = field(default_factory=list)


def run_demo(workdir: Path, say: Callable[[str], None]) -> DemoReport:
    server_config = ServerConfig(
        path=workdir / "server.toml", data_dir=workdir / "server-data", listen_port=0
    )
    fingerprint = create_identity(server_config.tls_dir)
    server_config.save()
    server = BackupServer(server_config)
    thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.address[1]}"
    say(f"server listening on {address} (TLS 1.3), fingerprint {fingerprint}")
    try:
        code = server.repo.add_client("demo", admin=False, ttl=600)
        say(f"enrollment code for client 'demo': {code}")
        config, _ = enroll(address, code, fingerprint, workdir / "client.toml")
        config.cache_dir = str(workdir / "client-cache")
        config.save()
        say(f"client enrolled; config at {config.path}")

        sample = workdir / "sample"
        sample.mkdir()
        make_sample_tree(sample)
        client = BackupClient(config)
        first = client.backup([str(sample)])
        say(
            f"backup 1: snapshot {first.snapshot[:8]}, {first.files} files, "
            f"{first.bytes} bytes read, {first.uploaded_bytes} bytes uploaded "
            "(the duplicate photo was stored once)"
        )
        (sample / "docs" / "report-02.txt").write_text("edited after the first backup\n")
        second = client.backup([str(sample)])
        say(
            f"backup 2: snapshot {second.snapshot[:8]}, one file changed, "
            f"{second.uploaded_bytes} bytes uploaded"
        )
        snapshots = client.snapshots()
        for snap in snapshots:
            say(f"  snapshot {snap.id[:8]}  {snap.time}  {snap.stats.get('files')} files")
        target = workdir / "restore"
        _, restored = client.restore("latest", target)
        restored_sample = target / sample.relative_to("/")
        differences = compare_trees(sample, restored_sample)
        say(
            f"restored latest to {restored_sample}: {restored.files} files, "
            f"{restored.symlinks} symlink(s)"
        )
    finally:
        server.shutdown()
        server.repo.close()
    return DemoReport(
        workdir, address, fingerprint, first, second, snapshots, restored, differences
    )
