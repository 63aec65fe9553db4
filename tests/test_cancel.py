"""A backup stopped from its progress callback commits nothing, and the next run completes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpybackup_core.errors import Cancelled
from rpybackup_core.progress import Progress


def test_cancelled_backup_commits_no_snapshot_and_the_next_run_restores(
    server, sample_tree: Path, tmp_path: Path
) -> None:
    server.enroll("alice")
    client = server.client("alice")
    events: list[int] = []

    def cancel_after_first_event(progress: Progress) -> None:
        events.append(progress.files_done)
        raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        client.backup([str(sample_tree)], progress=cancel_after_first_event)

    assert events, "the archiver never reported progress, so it could not be cancelled"
    assert client.snapshots() == []
    result = client.backup([str(sample_tree)])
    assert [snap.id for snap in client.snapshots()] == [result.snapshot]
    target = tmp_path / "restored"
    client.restore("latest", target)
    restored = target / sample_tree.relative_to("/")
    for original in sample_tree.rglob("*"):
        if original.is_file() and not original.is_symlink():
            copy = restored / original.relative_to(sample_tree)
            assert copy.read_bytes() == original.read_bytes()
