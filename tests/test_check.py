"""`check` and `check --read-data` on a real repository: clean data passes, damage is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3

from rpybackup_core.pack import END_MAGIC_V1, ENTRY_V1, MAGIC, MAGIC_V1, TAIL
from rpybackup_core.repository import PACKS


def backed_up(server, cli, tmp_path: Path) -> str:
    """Back up one random file for alice; returns the snapshot id."""
    alice = server.enroll("alice")
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(1024 * 1024))
    run = cli("--config", str(alice.path), "run", str(source), "--json")
    assert run.code == 0, run.err
    return json.loads(run.out)["snapshot"]


def only_pack(server) -> tuple[str, Path]:
    [name] = server.repo.backend.list(PACKS)
    return name, server.config.data_dir / "storage" / PACKS / name


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def check(cli, server, *args: str):
    return cli("--config", str(server.config.path), "check", *args)


def test_clean_repository_passes(server, cli, tmp_path: Path) -> None:
    backed_up(server, cli, tmp_path)
    assert check(cli, server).code == 0
    result = check(cli, server, "--read-data", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["ok"] is True and report["problems"] == []
    assert report["snapshots"] == 1 and report["packs"] == 1
    assert report["bytes_read"] > 1024 * 1024


def test_a_flipped_byte_in_a_blob_fails_read_data_naming_pack_and_snapshot(
    server, cli, tmp_path: Path
) -> None:
    snapshot = backed_up(server, cli, tmp_path)
    name, path = only_pack(server)
    flip_byte(path, path.stat().st_size // 2)

    assert check(cli, server).code == 0, "without --read-data the blobs are not re-read"
    result = check(cli, server, "--read-data")
    assert result.code == 1
    assert name in result.err
    assert "fails its storage hash" in result.err
    assert f"affects 1 snapshot(s) of alice: {snapshot[:8]}" in result.err

    report = json.loads(check(cli, server, "--read-data", "--json").out)
    assert report["ok"] is False
    [problem] = report["problems"]
    assert problem["pack"] == name and problem["affects"] == [snapshot]


def test_a_damaged_trailer_fails_even_the_quick_check(server, cli, tmp_path: Path) -> None:
    backed_up(server, cli, tmp_path)
    name, path = only_pack(server)
    flip_byte(path, path.stat().st_size - TAIL.size - 10)  # the last entry's chunk id

    result = check(cli, server)
    assert result.code == 1
    assert name in result.err and "disagrees with the pack's trailer" in result.err


def test_a_missing_pack_is_reported_with_what_it_affects(server, cli, tmp_path: Path) -> None:
    snapshot = backed_up(server, cli, tmp_path)
    name, path = only_pack(server)
    path.unlink()

    result = check(cli, server)
    assert result.code == 1
    assert name in result.err and "missing" in result.err and snapshot[:8] in result.err


def test_a_truncated_pack_is_reported(server, cli, tmp_path: Path) -> None:
    backed_up(server, cli, tmp_path)
    name, path = only_pack(server)
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 1)

    result = check(cli, server)
    assert result.code == 1
    assert name in result.err and "the index says" in result.err


def in_first_format(server, path: Path) -> None:
    """Rewrite the only pack as the first format wrote it: offsets and storage hashes in the
    trailer."""
    data = path.read_bytes()
    [pack] = server.repo.pack_usage(server.repo.client_by_name("alice").id)
    rows = sorted(server.repo.pack_chunks(pack.id), key=lambda row: row.offset)
    end = rows[-1].offset + rows[-1].length
    # That format's storage hashes, in the trailer and the index, were 32 bytes long.
    hashes = [blake3.blake3(data[row.offset : row.offset + row.length]).digest() for row in rows]
    trailer = b"".join(
        ENTRY_V1.pack(row.chunk_id, row.offset, row.length, whole)
        for row, whole in zip(rows, hashes, strict=True)
    )
    old = MAGIC_V1 + data[len(MAGIC) : end] + trailer + TAIL.pack(len(trailer), END_MAGIC_V1)
    path.write_bytes(old)
    with server.repo._transaction() as db:
        db.execute("UPDATE packs SET size = ? WHERE id = ?", (len(old), pack.id))
        db.executemany(
            "UPDATE chunks SET hash = ? WHERE id = ?",
            [(whole, row.rowid) for row, whole in zip(rows, hashes, strict=True)],
        )


def test_a_pack_of_the_first_format_checks_restores_and_has_its_damage_named(
    server, cli, tmp_path: Path
) -> None:
    snapshot = backed_up(server, cli, tmp_path)
    name, path = only_pack(server)
    in_first_format(server, path)

    assert check(cli, server, "--read-data").code == 0
    alice = server.clients["alice"]
    restored = cli(
        "--config", str(alice.path), "restore", snapshot, "--target", str(tmp_path / "out")
    )
    assert restored.code == 0, restored.err
    [copy] = (tmp_path / "out").rglob("data.bin")
    assert copy.read_bytes() == (tmp_path / "src" / "data.bin").read_bytes()

    flip_byte(path, len(MAGIC_V1) + 100)
    result = check(cli, server, "--read-data")
    assert result.code == 1
    assert name in result.err and "fails its storage hash" in result.err
