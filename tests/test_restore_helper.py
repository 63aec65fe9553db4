"""The restore's helper process (large files, slices of small files): a real spawned
process, a real server."""

from __future__ import annotations

import os
import random
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rpybackup_core import restore_files, restorer
from rpybackup_core.client import BackupClient
from rpybackup_core.demo import compare_trees
from rpybackup_core.restore_helper import RestoreHelper
from rpybackup_core.restorer import Restorer, RestoreResult
from rpybackup_core.tree import Node
from tests.conftest import damage_chunk

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


def test_with_the_helpers_hands_full_the_restore_writes_large_files_itself(
    server, tmp_path: Path, helper_starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hands that hold nothing are always full: every large file is written here, none waits.
    monkeypatch.setattr(restorer, "_HANDED_FILES", 0)
    client, source = _backed_up(server, tmp_path)
    helpers = helper_starter(client, RestoreHelper)

    result = _restore(client, tmp_path / "out", helpers)

    assert result.errors == []
    assert result.files == 44
    assert compare_trees(source, tmp_path / "out" / source.relative_to("/")) == []
    assert [helper.files for helper in helpers.started] == [0]
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


def test_a_helper_that_cannot_start_leaves_its_files_to_the_restore(
    server, tmp_path: Path, helper_starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, source = _backed_up(server, tmp_path)
    helpers = helper_starter(client, RestoreHelper)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))

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


@pytest.mark.parametrize(
    ("tree", "files", "helped"),
    [("large files", 44, "files"), ("small files", 135, "slices")],
)
def test_progress_counts_what_the_helper_writes_once(
    server, tmp_path: Path, helper_starter, early_slices, tree: str, files: int, helped: str
) -> None:
    backed_up = _backed_up if tree == "large files" else _small_backed_up
    client, _ = backed_up(server, tmp_path)
    helpers = helper_starter(client, RestoreHelper)
    seen: list[int] = []
    root = client.snapshots()[-1].root
    with client.connection() as remote:
        restorer = Restorer(remote, client.key, lambda p: seen.append(p.bytes_done), helper=helpers)
        result = restorer.restore(root, tmp_path / "out")

    assert result.errors == []
    assert seen[-1] == result.bytes == restorer.progress.bytes_done
    assert max(seen) == result.bytes
    assert restorer.progress.files_done == result.files == files
    assert getattr(helpers.started[0], helped) > 0


# ---- slices of small files ----------------------------------------------------------------

DIR_MTIME_NS = 1_500_000_000_123_456_789


@pytest.fixture
def early_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices from the first small file, a few files each, few at a time with the helper."""
    monkeypatch.setattr(restorer, "_HELPER_AFTER_FILES", 0)
    monkeypatch.setattr(restorer, "_SLICE_FILES", 8)
    monkeypatch.setattr(restorer, "_HANDED_SMALL_FILES", 24)


def _small_tree(root: Path) -> Path:
    """Directories of small files (empty ones too), a symlink and a subdirectory each."""
    rng = random.Random(5)
    for directory in ("a", "a/deeper", "b"):
        (root / directory).mkdir(parents=True)
        for index in range(45):
            path = root / directory / f"file-{index:02d}"
            path.write_bytes(rng.randbytes(rng.choice((0, 1, 700, 30_000))))
            path.chmod(rng.choice((0o600, 0o644, 0o755)))
        (root / directory / "link").symlink_to("file-01")
    for directory in ("a/deeper", "a", "b"):
        os.utime(root / directory, ns=(DIR_MTIME_NS, DIR_MTIME_NS))
    return root


def _small_backed_up(server, tmp_path: Path) -> tuple[BackupClient, Path]:
    source = _small_tree(tmp_path / "src")
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    return client, source


def _leftovers(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.endswith(".rpbtmp")]


def _restore_small_tree(
    server, tmp_path: Path, helper_starter, kind: type[RestoreHelper]
) -> tuple[RestoreResult, Path, Path, RestoreHelper]:
    """Back up the small tree, restore it with a helper of ``kind``: the result, the source,
    where it was restored and the helper."""
    client, source = _small_backed_up(server, tmp_path)
    helpers = helper_starter(client, kind)
    result = _restore(client, tmp_path / "out", helpers)
    return result, source, tmp_path / "out" / source.relative_to("/"), helpers.started[0]


def test_slices_of_small_files_written_by_the_helper_come_back_whole(
    server, tmp_path: Path, helper_starter, early_slices
) -> None:
    result, source, restored, helper = _restore_small_tree(
        server, tmp_path, helper_starter, RestoreHelper
    )

    assert result.errors == []
    assert (result.files, result.symlinks) == (135, 3)
    assert compare_trees(source, restored) == []
    for directory in ("a", "a/deeper", "b"):
        assert (restored / directory).stat().st_mtime_ns == DIR_MTIME_NS
    assert helper.slices > 0 and 0 < helper.small_files <= 135
    assert not helper.stopped


class _DiesAfterSecondSlice(RestoreHelper):
    def hand_slice(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().hand_slice(*args, **kwargs)
        if self.slices == 2:
            self._process.kill()
            self._process.join(timeout=60)


def test_slices_of_a_helper_that_dies_are_written_again_over_what_it_left(
    server, tmp_path: Path, helper_starter, early_slices
) -> None:
    result, source, restored, helper = _restore_small_tree(
        server, tmp_path, helper_starter, _DiesAfterSecondSlice
    )

    assert result.errors == []
    assert result.files == 135
    assert compare_trees(source, restored) == []
    assert _leftovers(tmp_path / "out") == []
    assert helper.stopped


def test_a_damaged_chunk_in_a_slice_fails_only_its_file(
    server, tmp_path: Path, helper_starter, early_slices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restorer, "_HANDED_SMALL_FILES", 1000)  # every small file to the helper
    source = _small_tree(tmp_path / "src")
    config = server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    victim = source / "b" / "file-03"
    damage_chunk(server, "alice", config.key, victim.read_bytes())
    helpers = helper_starter(client, RestoreHelper)

    result = _restore(client, tmp_path / "out", helpers)

    restored = tmp_path / "out" / source.relative_to("/")
    assert len(result.errors) == 1 and "/b/file-03" in result.errors[0]
    assert result.files == 134
    assert not (restored / "b" / "file-03").exists()
    victim.unlink()
    os.utime(source / "b", ns=(DIR_MTIME_NS, DIR_MTIME_NS))
    assert compare_trees(source, restored) == []
    assert helpers.started[0].small_files == 135


def test_a_restore_over_an_earlier_one_replaces_small_files_through_the_helper(
    server, tmp_path: Path, helper_starter, early_slices
) -> None:
    """Not fresh directories: the helper writes temporary names and renames them."""
    client, source = _small_backed_up(server, tmp_path)
    target = tmp_path / "out"
    _restore(client, target, helper_starter(client, RestoreHelper))
    restored = target / source.relative_to("/")
    for index in range(0, 45, 4):
        (restored / "a" / f"file-{index:02d}").write_bytes(b"scribbled over")
    (restored / "b" / "file-10").unlink()
    helpers = helper_starter(client, RestoreHelper)

    result = _restore(client, target, helpers)

    assert result.errors == []
    assert compare_trees(source, restored) == []
    assert _leftovers(target) == []
    assert helpers.started[0].small_files > 0


def _photos_backed_up(server, tmp_path: Path, count: int) -> tuple[BackupClient, Path]:
    """``count`` incompressible files of 2 MiB in one directory: small files to a restore
    (up to 4 MiB), each worth some of a core."""
    rng = random.Random(13)
    source = tmp_path / "src"
    source.mkdir()
    for index in range(count):
        (source / f"IMG_{index:04d}.jpg").write_bytes(rng.randbytes(2 * MIB))
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    return client, source


class _SliceSizes(RestoreHelper):
    """Records the bytes of each slice handed over."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.slice_bytes: list[int] = []

    def hand_slice(self, number: int, fd: int, fresh: bool, prefix: str, nodes: list[Node]) -> None:
        super().hand_slice(number, fd, fresh, prefix, nodes)
        self.slice_bytes.append(sum(node.size for node in nodes))


def test_a_few_hundred_files_of_some_mib_start_the_helper_by_their_bytes(
    server, tmp_path: Path, helper_starter
) -> None:
    """40 files of 2 MiB, far fewer than the 1,024 small files that would start it: past
    32 MiB of them the helper starts, and it is handed slices of at most 8 MiB."""
    client, source = _photos_backed_up(server, tmp_path, 40)
    helpers = helper_starter(client, _SliceSizes)

    result = _restore(client, tmp_path / "out", helpers)

    assert result.errors == [] and result.files == 40
    assert compare_trees(source, tmp_path / "out" / source.relative_to("/")) == []
    [helper] = helpers.started
    assert helper.slice_bytes and max(helper.slice_bytes) <= 8 * MIB


def test_files_over_a_mib_are_written_past_the_page_cache(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written once and not read back, as large files are; a file of a MiB or less is not."""
    client, source = _photos_backed_up(server, tmp_path, 3)
    (source / "small.txt").write_bytes(b"x" * MIB)
    client.backup([str(source)])
    direct: list[int] = []

    class Recording(restore_files.DirectWriter):
        def __init__(self, fd: int, stage_bytes: int, depth: int = 2) -> None:
            super().__init__(fd, stage_bytes, depth)
            direct.append(fd)

    monkeypatch.setattr(restore_files, "DirectWriter", Recording)

    with client.connection() as remote:
        result = Restorer(remote, client.key).restore(client.snapshots()[-1].root, tmp_path / "out")

    assert result.errors == [] and result.files == 4
    assert compare_trees(source, tmp_path / "out" / source.relative_to("/")) == []
    assert len(direct) == 3
