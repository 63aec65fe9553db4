"""A crash at each durable step of the commit path (rpybackup_core/faults.py), like borg's
crash-before-commit tests: the daemon dies exactly there, `check` stays clean, every earlier
snapshot restores, and the next run completes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from rpybackup_core.errors import RPyBackupError
from rpybackup_core.faults import ENV as FAULTS_ENV

from .conftest import FIGURES, Profile
from .harness import CLI, ChangingTree, Daemon, assert_clean, manifest, restored_manifest

UPLOAD_POINTS = [
    "after_pack_write",
    "before_pack_fsync",
    "after_pack_store",
    "after_index_insert",
    "before_snapshot_commit",
]


def _restore(daemon: Daemon, snapshot: str, source: Path, target: Path) -> dict[str, str]:
    daemon.client("alice").restore(snapshot, target)
    return restored_manifest(target, source)


@pytest.mark.parametrize("point", UPLOAD_POINTS)
def test_a_crash_at_each_step_of_a_backup_loses_nothing(
    daemon: Daemon, tmp_path: Path, profile: Profile, point: str
) -> None:
    daemon.enroll("alice", tmp_path)
    tree = ChangingTree(tmp_path / "source", profile.rng(point), max_files=6)
    tree.change(new_files=2)
    first_want = manifest(tree.root)
    first = daemon.client("alice").backup([str(tree.root)])

    daemon.restart(faults=point)
    tree.change(new_files=2)
    second_want = manifest(tree.root)
    with pytest.raises(RPyBackupError):
        daemon.client("alice").backup([str(tree.root)])
    assert daemon.wait_exit() == -signal.SIGKILL, f"the daemon never reached {point}"
    assert_clean(daemon.check(read_data=True))

    daemon.start()
    # The half-written pack of the dead session does not stay on the disk forever.
    assert list((daemon.config.data_dir / "tmp").glob("*.pack.tmp")) == []
    # Killed before its transaction committed, the snapshot is not there, not even half.
    assert [snap.id for snap in daemon.client("alice").snapshots()] == [first.snapshot]
    assert _restore(daemon, first.snapshot, tree.root, tmp_path / "first") == first_want
    second = daemon.client("alice").backup([str(tree.root)])
    assert _restore(daemon, second.snapshot, tree.root, tmp_path / "second") == second_want
    assert_clean(daemon.check(read_data=True))
    FIGURES["crash points survived"] += 1


def _server_cli(daemon: Daemon, *args: str, faults: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(daemon.config.path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, FAULTS_ENV: faults},
    )


@pytest.mark.parametrize("point", ["during_prune", "during_repack"])
def test_a_crash_during_prune_or_repack_keeps_what_the_policy_keeps(
    daemon: Daemon, tmp_path: Path, profile: Profile, point: str
) -> None:
    daemon.enroll("alice", tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    rng = profile.rng(point)
    for index in range(60):
        (source / f"small-{index:02d}.bin").write_bytes(rng.randbytes(24 * 1024))
    daemon.client("alice").backup([str(source)])
    # Four of every five files go: every pack of the first snapshot is then mostly dead, so
    # the prune repacks them rather than dropping them whole.
    for index in range(60):
        if index % 5:
            (source / f"small-{index:02d}.bin").unlink()
    kept_want = manifest(source)
    kept = daemon.client("alice").backup([str(source)])
    policy = _server_cli(daemon, "client", "retention", "alice", "--keep-last", "1")
    assert policy.returncode == 0, policy.stderr

    crashed = _server_cli(daemon, "prune", "--client", "alice", faults=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert_clean(daemon.check(read_data=True))
    assert _restore(daemon, kept.snapshot, source, tmp_path / "after-crash") == kept_want

    again = _server_cli(daemon, "prune", "--client", "alice", "--json")
    assert again.returncode == 0, again.stderr
    assert_clean(daemon.check(read_data=True))
    assert [snap.id for snap in daemon.client("alice").snapshots()] == [kept.snapshot]
    assert _restore(daemon, kept.snapshot, source, tmp_path / "after-prune") == kept_want
    FIGURES["crash points survived"] += 1
