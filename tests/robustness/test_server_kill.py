"""kill -9 of the daemon at random moments of uploads: nothing committed is ever lost.

After each kill: `check --read-data` is clean, every snapshot listed is whole and restores
byte-identical, and the interrupted backup completes once the daemon is back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rpybackup_core.errors import RPyBackupError
from rpybackup_core.progress import Progress

from .conftest import FIGURES, Profile
from .harness import ChangingTree, Daemon, assert_clean, manifest, restored_manifest


def _restores(daemon: Daemon, snapshot: str, source: Path, target: Path) -> dict[str, str]:
    daemon.client("alice").restore(snapshot, target)
    try:
        return restored_manifest(target, source)
    finally:
        shutil.rmtree(target)  # a soak restores hundreds of trees: keep the disk bounded


def test_daemon_killed_during_uploads_keeps_every_snapshot(
    daemon: Daemon, tmp_path: Path, profile: Profile
) -> None:
    rng = profile.rng("server-kill")
    daemon.enroll("alice", tmp_path)
    tree = ChangingTree(tmp_path / "source", rng)
    expected: dict[str, dict[str, str]] = {}
    interrupted = 0
    for round_ in range(profile.server_kills):
        new_bytes = tree.change()
        want = manifest(tree.root)
        # Kill when the client has read a random share of the new data: the upload of what
        # it read is then in flight (has, put, pack seals, refs or the commit itself).
        threshold = rng.randrange(new_bytes)
        killed = False

        def kill_at(progress: Progress, threshold: int = threshold) -> None:
            nonlocal killed
            if not killed and progress.bytes_done >= threshold:
                killed = True
                daemon.kill()

        try:
            daemon.client("alice").backup([str(tree.root)], progress=kill_at)
        except RPyBackupError:
            interrupted += 1
        if not killed:
            daemon.kill()
        assert_clean(daemon.check(read_data=True))

        daemon.start()
        listed = [snap.id for snap in daemon.client("alice").snapshots()]
        # A snapshot whose commit landed just before the kill is whole: it is this round's.
        for snapshot in listed:
            if snapshot not in expected:
                expected[snapshot] = want
        to_verify = listed if not profile.soak else rng.sample(listed, min(3, len(listed)))
        for snapshot in to_verify:
            target = tmp_path / f"restore-{round_}-{snapshot[:8]}"
            assert _restores(daemon, snapshot, tree.root, target) == expected[snapshot]

        completed = daemon.client("alice").backup([str(tree.root)])
        expected[completed.snapshot] = want
        target = tmp_path / f"restore-{round_}-done"
        assert _restores(daemon, completed.snapshot, tree.root, target) == want
    FIGURES["server kills survived"] += profile.server_kills
    assert interrupted >= profile.server_kills // 2, "too few kills landed during an upload"
    for snapshot, want in expected.items():
        target = tmp_path / f"final-{snapshot[:8]}"
        assert _restores(daemon, snapshot, tree.root, target) == want
    assert_clean(daemon.check(read_data=True))
