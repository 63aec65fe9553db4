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


def test_a_local_repository_copied_into_a_bucket_keeps_working(
    server, aws_env, cli, sample_tree: Path, tmp_path: Path
) -> None:
    """The migration docs/storage.md describes: copy DATA/storage/packs/, switch storage.url."""
    alice = server.enroll("alice")
    assert cli("--config", str(alice.path), "run", str(sample_tree)).code == 0
    port = server.server.address[1]
    server.stop()
    packs = server.config.data_dir / "storage" / "packs"
    prefix = f"moved-{os.getpid()}-{tmp_path.name}"
    s3 = aws_env.client()
    for pack in packs.rglob("*"):
        if pack.is_file():
            s3.upload_file(str(pack), "conformance", f"{prefix}/packs/{pack.relative_to(packs)}")
    server.config.storage_url = f"s3://conformance/{prefix}"
    server.config.s3_endpoint = aws_env.endpoint
    server.config.listen_port = port
    server.config.save()
    (server.config.data_dir / "storage").rename(tmp_path / "old-storage")

    server.start()

    target = tmp_path / "restored"
    restore_latest(cli, alice.path, target)
    assert compare_trees(sample_tree, target / sample_tree.relative_to("/")) == []
    check = cli("--config", str(server.config.path), "check", "--read-data", "--json")
    assert check.code == 0, check.err
    assert json.loads(check.out)["ok"] is True
