"""A backup's helper connection follows the backup's (`link`, `follow`): what the backup has
sent counts as present for the helper, for the same client only. Real Session threads on
socketpairs (tests/robustness/wire.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpybackup_core.protocol import RECORD
from rpybackup_core.repository import Repository
from tests.robustness.wire import Wire


@pytest.fixture
def repo() -> Iterator[tuple[Repository, dict[str, str]]]:
    """A repository with two clients, alice and bob, and their tokens."""
    root = Path(tempfile.mkdtemp(prefix="rpyb-link-"))
    repository = Repository(root / "data")
    tokens = {}
    try:
        for name in ("alice", "bob"):
            code = repository.add_client(name, admin=False, ttl=3600)
            _, tokens[name] = repository.enroll(code)
        yield repository, tokens
    finally:
        repository.close()
        shutil.rmtree(root, ignore_errors=True)


def _connect(repository: Repository, tokens: dict[str, str], name: str) -> Wire:
    wire = Wire(repository, pack_size=64 * 1024 * 1024)
    wire.auth(name, tokens[name])
    return wire


def _ok(wire: Wire, header: dict, payload: bytes = b"") -> tuple[dict, bytes]:
    replies = wire.request(header, payload)
    assert replies and replies[0][0].get("ok"), replies
    return replies[0]


def _link(wire: Wire) -> str:
    return str(_ok(wire, {"op": "link"})[0]["link"])


def _error(wire: Wire, header: dict) -> str:
    replies = wire.request(header)
    assert replies, "the connection closed"
    return str(replies[0][0].get("error", {}).get("code"))


CHUNK = bytes(range(32))


def _put(wire: Wire, chunk_id: bytes) -> None:
    _ok(wire, {"op": "put"}, RECORD.pack(chunk_id, 1) + b"x")


def _has(wire: Wire, chunk_id: bytes) -> bool:
    _, answer = _ok(wire, {"op": "has"}, chunk_id)
    return answer == b"\x01"


def test_a_helper_that_follows_finds_what_the_backup_has_sent_before_it_is_indexed(
    repo: tuple[Repository, dict[str, str]],
) -> None:
    repository, tokens = repo
    backup, helper = _connect(repository, tokens, "alice"), _connect(repository, tokens, "alice")
    link = _link(backup)
    _put(backup, CHUNK)
    assert not _has(helper, CHUNK), "another connection does not see an unindexed chunk"

    _ok(helper, {"op": "follow", "link": link})

    assert _has(helper, CHUNK)
    assert not _has(helper, bytes(32))
    backup.close()
    helper.close()


def test_a_link_is_the_same_while_its_connection_lasts_and_gone_after(
    repo: tuple[Repository, dict[str, str]],
) -> None:
    repository, tokens = repo
    backup, helper = _connect(repository, tokens, "alice"), _connect(repository, tokens, "alice")
    link = _link(backup)
    assert len(link) == 32 and _link(backup) == link

    backup.close()

    assert _error(helper, {"op": "follow", "link": link}) == "not_found"
    helper.close()


def test_another_client_cannot_follow_a_connection(
    repo: tuple[Repository, dict[str, str]],
) -> None:
    repository, tokens = repo
    alice, bob = _connect(repository, tokens, "alice"), _connect(repository, tokens, "bob")
    link = _link(alice)
    _put(alice, CHUNK)

    assert _error(bob, {"op": "follow", "link": link}) == "not_found"
    assert not _has(bob, CHUNK)
    assert _error(bob, {"op": "follow", "link": "0" * 32}) == "not_found"
    alice.close()
    bob.close()


def test_following_needs_authentication(repo: tuple[Repository, dict[str, str]]) -> None:
    repository, tokens = repo
    alice = _connect(repository, tokens, "alice")
    link = _link(alice)
    stranger = Wire(repository)

    assert _error(stranger, {"op": "follow", "link": link}) == "denied"
    alice.close()
    stranger.close()


def test_a_client_of_another_repository_cannot_follow_a_connection(
    repo: tuple[Repository, dict[str, str]], tmp_path: Path
) -> None:
    """Client ids are a repository's own: alice of a second repository in the same process
    (the same id) is not the alice who handed out the link."""
    repository, tokens = repo
    other = Repository(tmp_path / "other")
    try:
        _, token = other.enroll(other.add_client("alice", admin=False, ttl=3600))
        assert other.client_by_name("alice").id == repository.client_by_name("alice").id
        alice = _connect(repository, tokens, "alice")
        link = _link(alice)
        namesake = _connect(other, {"alice": token}, "alice")

        assert _error(namesake, {"op": "follow", "link": link}) == "not_found"
        alice.close()
        namesake.close()
    finally:
        other.close()
