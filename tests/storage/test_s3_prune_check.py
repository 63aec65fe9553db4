"""Prune, GC and `check --read-data` on a server whose packs live in S3 (SeaweedFS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rpybackup_core.demo import compare_trees

MiB = 1024 * 1024


def admin(cli, server, *args: str) -> dict:
    result = cli("--config", str(server.config_path), *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def backup(cli, client, source: Path, when: str) -> None:
    result = cli("--config", str(client.path), "run", str(source), "--time", when, "--json")
    assert result.code == 0, result.err


def bucket_bytes(server) -> int:
    return sum(server.weed.objects("rpb", "backups/packs/").values())


def test_prune_frees_objects_in_the_bucket_and_check_reads_them_back(
    s3_server, cli, tmp_path: Path
) -> None:
    alice = s3_server.enroll("alice")
    source = tmp_path / "home"
    source.mkdir()
    (source / "notes.txt").write_text("keep me\n")
    big = source / "video.bin"
    big.write_bytes(os.urandom(24 * MiB))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    big.unlink()
    for day in (2, 3):
        (source / "notes.txt").write_text(f"keep me, day {day}\n")
        backup(cli, alice, source, f"2026-03-0{day}T08:00:00Z")
    admin(cli, s3_server, "client", "retention", "alice", "--keep-last", "2")
    before = bucket_bytes(s3_server)

    result = admin(cli, s3_server, "prune", "--client", "alice")["clients"][0]

    assert before - bucket_bytes(s3_server) >= 20 * MiB
    assert result["bytes_freed"] >= 20 * MiB
    report = admin(cli, s3_server, "check", "--read-data")
    assert report["ok"] is True
    target = tmp_path / "restored"
    restored = cli("--config", str(alice.path), "restore", "latest", "--target", str(target))
    assert restored.code == 0, restored.err
    assert compare_trees(source, target / source.relative_to("/")) == []


def test_check_read_data_finds_a_damaged_object_in_the_bucket(
    s3_server, cli, tmp_path: Path
) -> None:
    alice = s3_server.enroll("alice")
    source = tmp_path / "home"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(2 * MiB))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    s3 = s3_server.weed.client()
    key = max(s3_server.weed.objects("rpb", "backups/packs/").items(), key=lambda kv: kv[1])[0]
    damaged = bytearray(s3.get_object(Bucket="rpb", Key=key)["Body"].read())
    damaged[len(damaged) // 3] ^= 0x01
    s3.put_object(Bucket="rpb", Key=key, Body=bytes(damaged))

    assert admin(cli, s3_server, "check")["ok"] is True
    result = cli("--config", str(s3_server.config_path), "check", "--read-data")
    assert result.code == 1
    assert "problem" in result.err


def test_check_reports_a_pack_missing_from_the_bucket(s3_server, cli, tmp_path: Path) -> None:
    alice = s3_server.enroll("alice")
    source = tmp_path / "home"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(MiB))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    key = next(iter(s3_server.weed.objects("rpb", "backups/packs/")))
    s3_server.weed.client().delete_object(Bucket="rpb", Key=key)

    result = cli("--config", str(s3_server.config_path), "check")

    assert result.code == 1
    assert key.removeprefix("backups/packs/") in result.err
