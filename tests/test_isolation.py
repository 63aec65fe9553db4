"""Client isolation at the protocol level, hostile snapshots, and key recovery."""

from __future__ import annotations

import json
import socket
import sysconfig
from pathlib import Path

import pytest

from rpybackup_core.client import enroll
from rpybackup_core.crypto import MasterKey, Sealer
from rpybackup_core.demo import compare_trees
from rpybackup_core.errors import CryptoError, EnrollmentFailed, InvalidRequest, NotFound
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.tree import DIR, FILE, Node, encode_tree
from tests.conftest import commit_header


def connect(server, name: str) -> RemoteRepository:
    config = server.clients[name]
    return RemoteRepository.connect(config.server, config.fingerprint, config.name, config.token)


def test_a_client_cannot_reach_another_clients_chunks(server, sample_tree: Path) -> None:
    server.enroll("alice")
    server.enroll("bob")
    server.client("alice").backup([str(sample_tree)])
    alice_id = server.repo.client_by_name("alice").id
    alice_chunks = [
        bytes(row[0])
        for row in server.repo._query(
            "SELECT chunk_id FROM chunks WHERE client_id = ?", (alice_id,)
        )
    ]
    assert alice_chunks

    with connect(server, "bob") as bob:
        assert bob.has(alice_chunks) == [False] * len(alice_chunks)
        with pytest.raises(NotFound):
            list(bob.get(alice_chunks[:1]))
        with pytest.raises(NotFound):
            bob.refs(alice_chunks[:1])
        assert bob.snapshots() == []


def test_a_client_cannot_overwrite_its_stored_key(server) -> None:
    server.enroll("alice")
    with connect(server, "alice") as alice, pytest.raises(InvalidRequest, match="already stored"):
        alice.set_wrapped_key("{}")


def test_a_hostile_tree_with_dot_dot_is_refused_at_restore(server, tmp_path: Path) -> None:
    config = server.enroll("mallory")
    sealer = Sealer(MasterKey.from_text(config.key))
    payload = b"escaped!"
    data_id = sealer.chunk_id(payload)
    evil = Node(
        "..", FILE, 0o644, 0, size=len(payload), content=[data_id], digest="blake3:" + "0" * 64
    )
    inner = encode_tree([evil])
    inner_id = sealer.chunk_id(inner)
    root = encode_tree([Node("x", DIR, 0o755, 0, content=[inner_id])])
    root_id = sealer.chunk_id(root)
    with connect(server, "mallory") as remote:
        remote.put(
            [
                (cid, sealer.seal(cid, blob))
                for cid, blob in ((data_id, payload), (inner_id, inner), (root_id, root))
            ]
        )
        remote.refs([data_id, inner_id, root_id])
        remote.commit(commit_header(sealer, [root_id], {"hostname": "h", "paths": ["/x"]}))

    target = tmp_path / "target" / "inner"
    target.mkdir(parents=True)
    _, result = server.client("mallory").restore("latest", target)
    assert result.errors and "unsafe entry name" in result.errors[0]
    assert not (tmp_path / "target" / "x").exists()
    assert sorted(p.name for p in (tmp_path / "target").rglob("*")) == ["inner", "x"]
    assert list((target / "x").iterdir()) == []


def test_a_one_chunk_file_whose_content_is_not_its_id_is_refused_at_restore(
    server, tmp_path: Path
) -> None:
    """A one-chunk file carries no digest of its own: its chunk id is checked against what is
    written, so a blob sealed under another id (by a key holder) is not restored as the file."""
    config = server.enroll("mallory")
    sealer = Sealer(MasterKey.from_text(config.key))
    claimed = sealer.chunk_id(b"what the tree says")
    lie = Node("f", FILE, 0o644, 0, size=9, content=[claimed], digest="chunk:" + claimed.hex())
    root = encode_tree([lie])
    root_id = sealer.chunk_id(root)
    with connect(server, "mallory") as remote:
        remote.put(
            [(claimed, sealer.seal(claimed, b"different")), (root_id, sealer.seal(root_id, root))]
        )
        remote.refs([claimed, root_id])
        remote.commit(commit_header(sealer, [root_id], {"hostname": "h", "paths": ["/"]}))

    _, result = server.client("mallory").restore("latest", tmp_path / "target")
    assert result.errors and "does not match its chunk digest" in result.errors[0]
    assert list((tmp_path / "target").iterdir()) == []


def test_a_commit_referencing_chunks_the_server_lacks_is_refused(server) -> None:
    config = server.enroll("alice")
    sealer = Sealer(MasterKey.from_text(config.key))
    missing = sealer.chunk_id(b"never uploaded")
    with connect(server, "alice") as remote:
        with pytest.raises(NotFound):
            remote.refs([missing])
        with pytest.raises(InvalidRequest):
            remote.commit(commit_header(sealer, [missing]))
        assert remote.snapshots() == []


def test_reenrolling_recovers_the_key_with_the_passphrase(
    server, sample_tree: Path, tmp_path: Path
) -> None:
    original = server.enroll("alice")
    server.client("alice").backup([str(sample_tree)])

    code = server.repo.add_client("alice", admin=False, ttl=600, reenroll=True)
    with pytest.raises(CryptoError, match="wrong passphrase"):
        enroll(server.address, code, server.fingerprint, tmp_path / "bad.toml", passphrase="nope")
    code = server.repo.add_client("alice", admin=False, ttl=600, reenroll=True)
    recovered, _ = enroll(
        server.address, code, server.fingerprint, tmp_path / "new.toml", passphrase="pw"
    )
    assert recovered.key == original.key
    assert recovered.token != original.token

    code = server.repo.add_client("alice", admin=False, ttl=600, reenroll=True)
    with pytest.raises(EnrollmentFailed, match="passphrase"):
        enroll(server.address, code, server.fingerprint, tmp_path / "none.toml")


def test_an_enrolled_name_is_not_added_twice_by_accident(server, cli) -> None:
    server.enroll("alice")
    result = cli("--config", str(server.config.path), "client", "add", "alice")
    assert result.code == 1
    assert "--reenroll" in result.err


def test_a_real_tree_round_trips(server, cli, sample_tree: Path, tmp_path: Path) -> None:
    """Parts of the Python standard library next to the sample (binary, empty, non-ASCII,
    symlink): restore latest is byte-identical with modes and mtimes."""
    config = server.enroll("alice")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = [stdlib / "json", stdlib / "email", stdlib / "asyncio", sample_tree]
    run = cli("--config", str(config.path), "run", *map(str, sources), "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["files"] > 100
    target = tmp_path / "restored"
    restored = cli("--config", str(config.path), "restore", "latest", "--target", str(target))
    assert restored.code == 0, restored.err
    for source in sources:
        assert compare_trees(source, target / source.relative_to("/")) == [], source


def test_the_server_answers_while_a_client_stalls_mid_handshake(server, sample_tree: Path) -> None:
    server.enroll("alice")
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as stalled:
        stalled.sendall(b"\x16\x03\x01")
        server.client("alice").backup([str(sample_tree)])
    assert len(server.client("alice").snapshots()) == 1
