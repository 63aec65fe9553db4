"""The spine, end to end through the CLI: a real server on loopback, real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rpybackup_core.demo import compare_trees
from tests.conftest import settled


def test_put_rlist_get_returns_identical_bytes(server, cli, tmp_path: Path) -> None:
    config = server.enroll("alice")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))

    assert cli("--config", str(config.path), "put", str(payload)).code == 0
    listed = cli("--config", str(config.path), "rlist", "--json")
    paths = [entry["path"] for entry in json.loads(listed.out)["entries"]]
    assert str(payload) in paths

    dest = tmp_path / "back.bin"
    got = cli("--config", str(config.path), "get", str(payload), "-o", str(dest))
    assert got.code == 0, got.err
    assert dest.read_bytes() == payload.read_bytes()


def test_run_then_restore_latest_is_identical(
    server, cli, sample_tree: Path, tmp_path: Path
) -> None:
    config = server.enroll("alice")
    run = cli("--config", str(config.path), "run", str(sample_tree), "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["files"] > 40 and report["uploaded_bytes"] > 0

    target = tmp_path / "restored"
    restored = cli("--config", str(config.path), "restore", "latest", "--target", str(target))
    assert restored.code == 0, restored.err
    assert compare_trees(sample_tree, target / sample_tree.relative_to("/")) == []


def test_second_run_over_unchanged_data_uploads_almost_nothing(
    server, cli, sample_tree: Path
) -> None:
    config = server.enroll("alice")
    first = json.loads(cli("--config", str(config.path), "run", str(sample_tree), "--json").out)
    second = json.loads(cli("--config", str(config.path), "run", str(sample_tree), "--json").out)
    assert second["files"] == first["files"]
    assert second["uploaded_bytes"] < 4096
    snapshots = json.loads(cli("--config", str(config.path), "snapshots", "--json").out)
    assert [s["id"] for s in snapshots] == [first["snapshot"], second["snapshot"]]
    assert all(s["time"].endswith("Z") for s in snapshots)


def test_clients_are_isolated(server, cli, sample_tree: Path, tmp_path: Path) -> None:
    alice = server.enroll("alice")
    bob = server.enroll("bob")
    run = json.loads(cli("--config", str(alice.path), "run", str(sample_tree), "--json").out)

    assert json.loads(cli("--config", str(bob.path), "snapshots", "--json").out) == []
    denied = cli(
        "--config", str(bob.path), "restore", run["snapshot"], "--target", str(tmp_path / "steal")
    )
    assert denied.code == 1
    assert "no snapshot" in denied.err or "no snapshots" in denied.err
    assert not (tmp_path / "steal" / sample_tree.relative_to("/")).exists()


def test_a_file_rewritten_right_after_its_backup_is_read_again(server, tmp_path: Path) -> None:
    """Same size, same second: the files cache must not trust it (git's racy-file problem)."""
    config = server.enroll("alice")
    folder = tmp_path / "racy"
    folder.mkdir()
    target_file = folder / "f.txt"
    target_file.write_text("AAAA\n")
    client = server.client("alice")
    client.backup([str(folder)])
    stat_before = target_file.stat()
    target_file.write_text("BBBB\n")
    os.utime(target_file, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    client.backup([str(folder)])
    restored = tmp_path / "out"
    client.get_file(str(target_file), restored)
    assert restored.read_text() == "BBBB\n"
    assert config.name == "alice"


def test_names_that_are_not_utf8_are_backed_up_cached_and_restored(
    server, cli, tmp_path: Path
) -> None:
    """A name in another encoding (Latin-1 here) is bytes Python carries as a surrogate escape;
    it is stored, found unchanged by the files cache on the next run and restored as the same
    bytes."""
    source = tmp_path / "src"
    source.mkdir()
    latin1 = os.path.join(os.fsencode(source), b"caf\xe9.txt")
    with open(latin1, "wb") as handle:
        handle.write(b"latin-1 name")
    (source / "naïve.txt").write_bytes(b"utf-8 name")
    # Two in-process runs can both end within the files cache's racy window: neither would
    # leave a row.
    settled(source)
    config = server.enroll("alice")
    for _ in range(2):
        run = cli("--config", str(config.path), "run", str(source), "--json")
        assert run.code == 0, run.err
    listed = cli("--config", str(config.path), "list", str(source), "--json")
    assert {entry["state"] for entry in json.loads(listed.out)["entries"]} == {"backed up"}

    target = tmp_path / "restored"
    restored = cli("--config", str(config.path), "restore", "latest", "--target", str(target))
    assert restored.code == 0, restored.err
    back = os.path.join(os.fsencode(target / source.relative_to("/")), b"caf\xe9.txt")
    with open(back, "rb") as handle:
        assert handle.read() == b"latin-1 name"
    assert compare_trees(source, target / source.relative_to("/")) == []
