"""The restore's helper process for large files: a real spawned process, a real server."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

from rpybackup_core.client import BackupClient
from rpybackup_core.demo import compare_trees
from rpybackup_core.restore_helper import RestoreHelper
from rpybackup_core.restorer import Restorer, RestoreResult

MIB = 1024 * 1024


def _tree(root: Path) -> Path:
    """Large files (written by the helper) among small ones and a subdirectory."""
    rng = random.Random(21)
    (root / "sub").mkdir(parents=True)
    for index, size in enumerate((5 * MIB, 9 * MIB + 17, 13 * MIB)):
        (root / f"large-{index}.bin").write_bytes(rng.randbytes(size))
    (root / "sub" / "large.log").write_bytes(b"a line of a log that compresses\n" * 200_000)
    for index in range(40):
        (root / "sub" / f"small-{index:02d}.txt").write_text(f"small file {index}\n" * index)
    (root / "large-1.bin").chmod(0o640)
    os.utime(root / "sub", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return root


def _restore(
    client: BackupClient, target: Path, helper: Callable[[], RestoreHelper]
) -> RestoreResult:
    root = client.snapshots()[-1].root
    with client.connection() as remote:
        return Restorer(remote, client.key, helper=helper).restore(root, target)


def _backed_up(server, tmp_path: Path) -> tuple[BackupClient, Path]:
    source = _tree(tmp_path / "src")
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    return client, source


def test_large_files_written_by_the_helper_come_back_whole_with_their_metadata(
    server, tmp_path: Path, helper_starter
) -> None:
    client, source = _backed_up(server, tmp_path)
    helpers = helper_starter(client, RestoreHelper)

    result = _restore(client, tmp_path / "out", helpers)

    restored = tmp_path / "out" / source.relative_to("/")
    assert result.errors == []
    assert result.files == 44
    assert compare_trees(source, restored) == []
    assert stat.S_IMODE((restored / "large-1.bin").stat().st_mode) == 0o640
    assert (restored / "sub").stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert [helper.files for helper in helpers.started] == [4]
    assert not helpers.started[0].stopped


def test_a_helper_that_cannot_log_in_leaves_its_files_to_the_restore(
    server, tmp_path: Path, helper_starter
) -> None:
    client, source = _backed_up(server, tmp_path)
    helpers = helper_starter(client, RestoreHelper)
    helpers.token = "not-the-token"

    result = _restore(client, tmp_path / "out", helpers)

    assert result.errors == []
    assert compare_trees(source, tmp_path / "out" / source.relative_to("/")) == []
    assert helpers.started[0].stopped


class _DiesAfterFirstFile(RestoreHelper):
    def hand_over(self, shown: str, fd: int, node) -> None:  # type: ignore[no-untyped-def]
        super().hand_over(shown, fd, node)
        if self.files == 1:
            self._process.kill()
            self._process.join(timeout=60)


def test_files_of_a_helper_that_dies_are_written_again_and_nothing_half_written_stays(
    server, tmp_path: Path, helper_starter
) -> None:
    client, source = _backed_up(server, tmp_path)
    helpers = helper_starter(client, _DiesAfterFirstFile)

    result = _restore(client, tmp_path / "out", helpers)

    restored = tmp_path / "out" / source.relative_to("/")
    assert result.errors == []
    assert compare_trees(source, restored) == []
    assert not [name for name in os.listdir(restored) if name.endswith(".rpbtmp")]
    assert helpers.started[0].stopped
    assert not helpers.started[0]._process.is_alive()


def test_a_restore_over_an_earlier_one_replaces_large_files_through_the_helper(
    server, tmp_path: Path, helper_starter
) -> None:
    """Not a fresh directory: the restore creates temporary names and renames them after the
    helper's digest matches."""
    client, source = _backed_up(server, tmp_path)
    target = tmp_path / "out"
    _restore(client, target, helper_starter(client, RestoreHelper))
    restored = target / source.relative_to("/")
    (restored / "large-0.bin").write_bytes(b"overwritten")

    result = _restore(client, target, helper_starter(client, RestoreHelper))

    assert result.errors == []
    assert compare_trees(source, restored) == []
    assert not [name for name in os.listdir(restored) if name.endswith(".rpbtmp")]


def test_progress_counts_what_the_helper_writes_once(
    server, tmp_path: Path, helper_starter
) -> None:
    client, _ = _backed_up(server, tmp_path)
    seen: list[int] = []
    root = client.snapshots()[-1].root
    with client.connection() as remote:
        restorer = Restorer(
            remote,
            client.key,
            lambda p: seen.append(p.bytes_done),
            helper=helper_starter(client, RestoreHelper),
        )
        result = restorer.restore(root, tmp_path / "out")

    assert result.errors == []
    assert seen[-1] == result.bytes == restorer.progress.bytes_done
    assert max(seen) == result.bytes
