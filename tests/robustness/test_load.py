"""Fifty clients back up at once against one daemon: no failure, each restores identically, and
the daemon's peak memory stays under a fixed bound."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .conftest import FIGURES, Profile
from .harness import Daemon, assert_clean, manifest, restored_manifest

MIB = 1024 * 1024
# Measured peak at 50 clients: ~100 MiB (docs/security.md); the bound leaves room for slower
# machines, where more uploads overlap.
PEAK_RSS_BOUND = 512 * MIB


def test_fifty_clients_at_once(daemon: Daemon, tmp_path: Path, profile: Profile) -> None:
    count = profile.load_clients
    # All the clients come from 127.0.0.1, one address may hold a quarter of the slots, and a
    # client may hold two connections at once (its own and its helper process's).
    daemon.config.max_connections = 4 * 2 * count
    daemon.config.save()
    daemon.restart()
    rng = profile.rng("load")
    sources = {}
    for index in range(count):
        source = tmp_path / "sources" / f"client-{index:02d}"
        source.mkdir(parents=True)
        for size in (4 * 1024, 96 * 1024, 640 * 1024):
            (source / f"data-{size}.bin").write_bytes(rng.randbytes(size))
        sources[f"client-{index:02d}"] = source
    for name in sources:
        daemon.enroll(name, tmp_path, key_backup=False)

    start = threading.Barrier(count)

    def backup(name: str) -> str:
        start.wait(timeout=120)
        return daemon.client(name).backup([str(sources[name])]).snapshot

    with ThreadPoolExecutor(count) as pool:
        snapshots = dict(zip(sources, pool.map(backup, sources), strict=True))

    def restore(name: str) -> dict[str, str]:
        target = tmp_path / "restored" / name
        daemon.client(name).restore(snapshots[name], target)
        return restored_manifest(target, sources[name])

    with ThreadPoolExecutor(count) as pool:
        restored = dict(zip(sources, pool.map(restore, sources), strict=True))
    for name, source in sources.items():
        assert restored[name] == manifest(source), f"{name} did not restore identically"
        assert [snap.id for snap in daemon.client(name).snapshots()] == [snapshots[name]]
    peak = daemon.peak_rss()
    print(f"daemon peak RSS with {count} clients at once: {peak / MIB:.0f} MiB")
    assert peak < PEAK_RSS_BOUND
    assert_clean(daemon.check(read_data=True))
    FIGURES["clients at once"] = count
    FIGURES["daemon peak RSS MiB"] = round(peak / MIB)
