"""A server whose packs live in S3 (SeaweedFS on loopback), used through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rpybackup_core.demo import compare_trees
from rpybackup_core.pack import MAGIC

BIG = 20 * 1024 * 1024


def local_pack_files(root: Path) -> list[Path]:
    """Files anywhere under root that are (or begin like) a pack."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                if handle.read(len(MAGIC)) == MAGIC:
                    found.append(path)
    return found


def restore_latest(cli, config: Path, target: Path) -> None:
    result = cli("--config", str(config), "restore", "latest", "--target", str(target))
    assert result.code == 0, result.err


def test_packs_go_to_the_bucket_and_restore_survives_a_daemon_restart(
    s3_server, cli, sample_tree: Path, tmp_path: Path
) -> None:
    (sample_tree / "random.bin").write_bytes(os.urandom(BIG))
    alice = s3_server.enroll("alice")

    run = cli("--config", str(alice.path), "run", str(sample_tree), "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["uploaded_bytes"] >= BIG

    objects = s3_server.weed.objects("rpb", "backups/packs/")
    assert objects, "no pack objects in the bucket"
    assert sum(objects.values()) >= BIG
    assert local_pack_files(s3_server.root) == []

    first = tmp_path / "first"
    restore_latest(cli, alice.path, first)
    assert compare_trees(sample_tree, first / sample_tree.relative_to("/")) == []

    s3_server.restart()
    second = tmp_path / "second"
    restore_latest(cli, alice.path, second)
    assert compare_trees(sample_tree, second / sample_tree.relative_to("/")) == []


def test_credentials_are_never_written_to_our_files(s3_server) -> None:
    for path in s3_server.root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert s3_server.weed.secret_key.encode() not in content, path
            assert s3_server.weed.access_key.encode() not in content, path
    stored = (s3_server.root / "server.toml").read_text()
    assert 'url = "s3://rpb/backups"' in stored
    assert f's3_endpoint = "{s3_server.weed.endpoint}"' in stored
