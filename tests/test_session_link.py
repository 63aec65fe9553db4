"""A backup's helper connection follows the backup's (`link`, `follow`): what either has sent
counts as present for the other, for the same client only, and the backup's snapshot counts
on the helper's chunks only once they are indexed. Real Session threads on socketpairs
(tests/robustness/wire.py)."""

from __future__ import annotations

import base64
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpybackup_core import session
from rpybackup_core.errors import StorageError
from rpybackup_core.protocol import RECORD
from rpybackup_core.repository import Repository
from tests.conftest import stored_copies
from tests.robustness.wire import IO_TIMEOUT, Wire


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


def _has(wire: Wire, chunk_id: bytes, reference: bool = False) -> bool:
    _, answer = _ok(wire, {"op": "has", "reference": reference}, chunk_id)
    return answer == b"\x01"


def _commit(wire: Wire, root: bytes) -> list[tuple[dict, bytes]] | None:
    header = {
        "op": "commit",
        "time": "2026-01-01T00:00:00Z",
        "tags": [],
        "meta": base64.b64encode(b"sealed").decode(),
        "stats": {},
        "root": [root.hex()],
    }
    return wire.request(header)


def _committed(repository: Repository, reply: list[tuple[dict, bytes]] | None) -> set[int]:
    """The row ids the snapshot a commit reply names refers to."""
    assert reply and reply[0][0].get("ok"), reply
    alice = repository.client_by_name("alice").id
    return set(repository.snapshot_refs(alice, reply[0][0]["snapshot"]))


def _disk_full(*args: object) -> dict[bytes, int]:
    raise StorageError("no space left on device")


Linked = tuple[Repository, Wire, Wire]


@pytest.fixture
def linked(repo: tuple[Repository, dict[str, str]]) -> Iterator[Linked]:
    """alice's repository, a backup's connection and its helper's, following it."""
    repository, tokens = repo
    backup, helper = _connect(repository, tokens, "alice"), _connect(repository, tokens, "alice")
    _ok(helper, {"op": "follow", "link": _link(backup)})
    yield repository, backup, helper
    helper.close()
    backup.close()


def _lend(backup: Wire, helper: Wire) -> None:
    """The helper accepts CHUNK and holds it unindexed; the backup borrows it."""
    _put(helper, CHUNK)
    assert _has(backup, CHUNK, reference=True)


class _WatchedCondition(threading.Condition):
    """A condition that tells when someone waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


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


def test_a_backup_finds_what_its_helper_has_accepted_and_references_it_once_indexed(
    linked: Linked,
) -> None:
    repository, backup, helper = linked
    _put(helper, CHUNK)

    assert _has(backup, CHUNK, reference=True)

    _ok(helper, {"op": "sync"})
    refs = _committed(repository, _commit(backup, CHUNK))
    assert refs == set(repository.lookup(repository.client_by_name("alice").id, [CHUNK]).values())


def test_a_commit_waits_for_the_helper_to_index_what_it_lent(linked: Linked) -> None:
    repository, backup, helper = linked
    _lend(backup, helper)
    watched = backup.session.followed = _WatchedCondition()
    replies: list = []
    committing = threading.Thread(target=lambda: replies.append(_commit(backup, CHUNK)))
    committing.start()

    assert watched.waited.wait(IO_TIMEOUT), "the commit did not wait for the helper"
    _ok(helper, {"op": "sync"})
    committing.join(IO_TIMEOUT)

    assert len(_committed(repository, replies[0])) == 1


def test_a_helper_that_hangs_up_still_stores_what_it_lent(linked: Linked) -> None:
    repository, backup, helper = linked
    _lend(backup, helper)

    helper.close()

    assert len(_committed(repository, _commit(backup, CHUNK))) == 1


def test_a_commit_never_counts_on_a_chunk_the_helper_does_not_store(
    linked: Linked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that holds a chunk and never syncs: the commit gives up, and no snapshot
    refers to a chunk the server may never have."""
    monkeypatch.setattr(session, "BORROW_WAIT", 0.2)
    repository, backup, helper = linked
    _lend(backup, helper)

    reply = _commit(backup, CHUNK)

    assert reply and reply[0][0]["error"]["code"] == "not_found", reply
    assert "never stored" in reply[0][0]["error"]["message"]
    again = _commit(backup, CHUNK)
    assert again and again[0][0]["error"]["code"] == "not_found", "a second try counts on it"
    assert repository.list_snapshots(repository.client_by_name("alice").id) == []


@pytest.mark.parametrize("first", ["helper", "helper-indexed", "backup"])
def test_a_copy_the_other_connection_stored_first_is_not_stored_again(
    linked: Linked, first: str
) -> None:
    """Both asked before either put: the second put of the chunk stores nothing and
    references the first, whether that is still in the other's hands or indexed by now."""
    repository, backup, helper = linked
    assert not _has(backup, CHUNK, reference=True)
    assert not _has(helper, CHUNK)
    earlier, later = (backup, helper) if first == "backup" else (helper, backup)
    _put(earlier, CHUNK)
    if first == "helper-indexed":
        _ok(helper, {"op": "sync"})

    header, _ = _ok(later, {"op": "put"}, RECORD.pack(CHUNK, 1) + b"x")

    assert header["stored"] == 0
    _ok(helper, {"op": "sync"})
    assert len(_committed(repository, _commit(backup, CHUNK))) == 1
    backup.close()
    helper.close()
    assert stored_copies(repository.data_dir)[CHUNK] == 1


def test_connections_follow_one_leader_that_follows_none(
    repo: tuple[Repository, dict[str, str]], linked: Linked
) -> None:
    """No chains and no cycles: a follower follows once, a followed connection follows no
    other and a follower is followed by none, and no connection follows itself."""
    repository, backup, helper = linked
    other = _connect(repository, repo[1], "alice")

    assert _error(helper, {"op": "follow", "link": _link(other)}) == "invalid"
    assert _error(backup, {"op": "follow", "link": _link(other)}) == "invalid"
    assert _error(other, {"op": "follow", "link": _link(helper)}) == "invalid"
    assert _error(other, {"op": "follow", "link": _link(other)}) == "not_found"
    _ok(other, {"op": "follow", "link": _link(backup)})
    other.close()


def test_two_linked_connections_putting_a_chunk_at_once_store_it_once(linked: Linked) -> None:
    repository, backup, helper = linked
    chunks = [index.to_bytes(32, "big") for index in range(1, 101)]
    together = threading.Barrier(2, timeout=IO_TIMEOUT)

    def put_all(wire: Wire) -> None:
        for chunk_id in chunks:
            together.wait()
            _put(wire, chunk_id)

    other = threading.Thread(target=put_all, args=(helper,))
    other.start()
    put_all(backup)
    other.join(IO_TIMEOUT)
    _ok(helper, {"op": "sync"})
    _ok(backup, {"op": "sync"})

    copies = stored_copies(repository.data_dir)
    assert [copies[chunk_id] for chunk_id in chunks] == [1] * len(chunks)


def test_borrowed_chunks_the_helper_has_indexed_do_not_pile_up_before_the_commit(
    linked: Linked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "MAX_BORROWED", 2)
    repository, backup, helper = linked
    early = [bytes([n]) * 32 for n in (1, 2, 3)]
    for chunk_id in early:
        _put(helper, chunk_id)
    _ok(backup, {"op": "has", "reference": True}, b"".join(early))
    assert len(backup.session.borrowed) == 3, "none is indexed yet: all stay borrowed"
    _ok(helper, {"op": "sync"})
    late = bytes([4]) * 32
    _put(helper, late)

    assert _has(backup, late, reference=True)

    assert backup.session.borrowed == {late}
    _ok(helper, {"op": "sync"})
    assert len(_committed(repository, _commit(backup, early[0]))) == 4


def test_a_put_whose_index_lookup_failed_is_stored_when_put_again(
    repo: tuple[Repository, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put claims its chunks before it looks them up: a failed lookup gives them up again."""
    repository, tokens = repo
    backup = _connect(repository, tokens, "alice")
    record = RECORD.pack(CHUNK, 1) + b"x"
    with monkeypatch.context() as failing:
        failing.setattr(repository, "lookup_pinned", _disk_full)
        [(header, _)] = backup.request({"op": "put"}, record) or []
        assert header["error"]["code"] == "storage", header

    assert _ok(backup, {"op": "put"}, record)[0]["stored"] == 1
    backup.close()
    assert stored_copies(repository.data_dir)[CHUNK] == 1
