"""Owners and symlinks on restore: as root every entry gets its owner back, whether or not it
matches whom a new entry belongs to; a symlink already in the target is replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpybackup_core.demo import compare_trees
from tests.conftest import backed_up

OTHER_UID, OTHER_GID = 1234, 2345


def _owned_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Directories, files and symlinks, some owned by root and some not; their owners by path
    relative to ``root``."""
    owners = {
        "theirs": (OTHER_UID, OTHER_GID),
        "theirs/mine.txt": (0, 0),
        "theirs/theirs.txt": (OTHER_UID, OTHER_GID),
        "theirs/link-theirs": (OTHER_UID, 0),
        "theirs/mine": (0, OTHER_GID),
        "theirs/mine/link-mine": (0, 0),
        "theirs/mine/group.txt": (0, OTHER_GID),
        "mine": (0, 0),
        "mine/link-theirs": (OTHER_UID, OTHER_GID),
    }
    for relative in owners:
        path = root / relative
        if "link" in path.name:
            path.symlink_to("target-" + path.name)
        elif path.suffix == ".txt":
            path.write_text(relative)
        else:
            path.mkdir(parents=True)
    for relative, (uid, gid) in owners.items():
        os.chown(root / relative, uid, gid, follow_symlinks=False)
    return owners


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give entries to other owners")
def test_a_restore_as_root_gives_every_entry_its_owner(server, tmp_path: Path) -> None:
    source = tmp_path / "source"
    owners = _owned_tree(source)
    client = backed_up(server, source)

    _, result = client.restore("latest", tmp_path / "restored")

    restored = tmp_path / "restored" / source.relative_to("/")
    assert result.errors == [] and compare_trees(source, restored) == []
    found = {}
    for relative in owners:
        st = os.lstat(restored / relative)
        found[relative] = (st.st_uid, st.st_gid)
    assert found == owners


def test_a_restore_over_an_earlier_one_puts_back_symlinks_changed_since(
    server, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "folder").mkdir(parents=True)
    (source / "folder" / "link").symlink_to("where-it-pointed")
    (source / "top-link").symlink_to("folder")
    client = backed_up(server, source)
    target = tmp_path / "restored"
    client.restore("latest", target)
    restored = target / source.relative_to("/")
    for link in (restored / "folder" / "link", restored / "top-link"):
        link.unlink()
        link.symlink_to("somewhere-else")

    _, result = client.restore("latest", target)

    assert result.errors == [] and result.symlinks == 2
    assert compare_trees(source, restored) == []
