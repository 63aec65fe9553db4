"""Hard links: each name of a file with several is backed up with the same link key, and a
restore links the other names to the first one it writes."""

from __future__ import annotations

import os
import random
from pathlib import Path

from rpybackup_core.demo import compare_trees
from tests.conftest import backed_up, damage_chunk

MIB = 1024 * 1024


def _linked_tree(root: Path) -> Path:
    """Three names of a small file, two of a large one (fetched part by part), a file with one
    name, and a file with the small one's content under an inode of its own."""
    for folder in ("a", "b", "c"):
        (root / folder).mkdir(parents=True)
    small = root / "a" / "small.txt"
    small.write_text("one inode, three names\n" * 100)
    os.link(small, root / "b" / "small-again.txt")
    os.link(small, root / "c" / "small-third.txt")
    large = root / "a" / "large.bin"
    large.write_bytes(random.Random(1).randbytes(6 * MIB))
    os.link(large, root / "b" / "large-again.bin")
    (root / "c" / "alone.txt").write_text("one name")
    (root / "c" / "twin.txt").write_text("one inode, three names\n" * 100)
    return root


def _inode(path: Path) -> int:
    return os.lstat(path).st_ino


def _restored_whole(client, source: Path, target: Path, files: int) -> Path:
    """Restore the latest snapshot into ``target``, check it holds ``files`` files with no
    error and matches ``source``, and return where ``source`` came back."""
    _, result = client.restore("latest", target)
    restored = target / source.relative_to("/")
    assert result.errors == [] and result.files == files
    assert compare_trees(source, restored) == []
    return restored


def test_the_names_of_a_hard_linked_file_are_restored_as_links(server, tmp_path: Path) -> None:
    source = _linked_tree(tmp_path / "source")
    client = backed_up(server, source)
    restored = _restored_whole(client, source, tmp_path / "restored", files=7)
    small = [restored / name for name in ("a/small.txt", "b/small-again.txt", "c/small-third.txt")]
    assert len({_inode(path) for path in small}) == 1 and os.lstat(small[0]).st_nlink == 3
    assert _inode(restored / "a/large.bin") == _inode(restored / "b/large-again.bin")
    assert os.lstat(restored / "c/twin.txt").st_nlink == 1
    assert os.lstat(restored / "c/alone.txt").st_nlink == 1


def test_a_name_restored_without_its_first_is_a_file_of_its_own(server, tmp_path: Path) -> None:
    source = _linked_tree(tmp_path / "source")
    client = backed_up(server, source)
    target = tmp_path / "restored"
    client.restore("latest", target, include=str(source / "b"))
    again = target / source.relative_to("/") / "b" / "small-again.txt"
    assert again.read_bytes() == (source / "a" / "small.txt").read_bytes()
    assert os.lstat(again).st_nlink == 1


def test_a_restore_over_an_existing_tree_links_in_place_of_what_it_finds(
    server, tmp_path: Path
) -> None:
    source = _linked_tree(tmp_path / "source")
    client = backed_up(server, source)
    target = tmp_path / "restored"
    client.restore("latest", target)
    restored = target / source.relative_to("/")
    (restored / "b" / "small-again.txt").unlink()
    (restored / "b" / "small-again.txt").write_text("something else")
    _, result = client.restore("latest", target)
    assert result.errors == []
    assert compare_trees(source, restored) == []
    assert _inode(restored / "b/small-again.txt") == _inode(restored / "a/small.txt")


def test_names_linked_to_files_the_restore_helper_writes(server, tmp_path: Path) -> None:
    """Enough small files for the restore's helper process to write slices of them: the
    other names wait for each slice's report."""
    source = tmp_path / "source"
    (source / "first").mkdir(parents=True)
    (source / "second").mkdir()
    for index in range(1500):
        path = source / "first" / f"f{index:04d}"
        path.write_bytes(b"%d\n" % index * 50)
        os.link(path, source / "second" / f"f{index:04d}")
    client = backed_up(server, source)
    restored = _restored_whole(client, source, tmp_path / "restored", files=3000)
    for index in (0, 777, 1499):
        name = f"f{index:04d}"
        assert _inode(restored / "first" / name) == _inode(restored / "second" / name)


def test_names_the_filesystem_will_not_link_are_restored_as_files(
    server, tmp_path: Path, monkeypatch
) -> None:
    source = _linked_tree(tmp_path / "source")
    client = backed_up(server, source)

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    # As protected_hardlinks refuses a user a link to a file of someone else's.
    monkeypatch.setattr(os, "link", refused)
    restored = _restored_whole(client, source, tmp_path / "restored", files=7)
    assert os.lstat(restored / "b/small-again.txt").st_nlink == 1


def test_the_other_names_of_a_file_that_fails_fail_too_and_leave_nothing(
    server, tmp_path: Path
) -> None:
    source = _linked_tree(tmp_path / "source")
    config = server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    damage_chunk(server, "alice", config.key, (source / "a" / "small.txt").read_bytes())
    target = tmp_path / "restored"
    _, result = client.restore("latest", target)
    restored = target / source.relative_to("/")
    # Each name was tried as a file of its own, none linked to a file that failed (the twin
    # shares the damaged chunk).
    assert sorted(error.split(":", 1)[0] for error in result.errors) == [
        "/" + str((source / name).relative_to("/"))
        for name in ("a/small.txt", "b/small-again.txt", "c/small-third.txt", "c/twin.txt")
    ]
    assert not (restored / "b" / "small-again.txt").exists()
    assert _inode(restored / "a/large.bin") == _inode(restored / "b/large-again.bin")
