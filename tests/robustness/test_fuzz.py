"""Property-based fuzzing of the frame decoder and of every request handler (HANDLERS).

Properties, for every case: the server side never fails with anything but a clean refusal or
a closed connection (no crash, no ERROR log, no "internal" reply), a reply never carries another
client's data that the request did not already contain, and the other client's backups are
untouched at the end. The quick profile is derandomized, so CI runs the same cases every time.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpybackup_core.config import ServerConfig
from rpybackup_core.errors import ConnectionClosed, ProtocolError
from rpybackup_core.protocol import MAX_HEADER, PREFIX, RECORD, FramedSocket
from rpybackup_core.repository import Repository
from rpybackup_core.session import HANDLERS
from rpybackup_core.tls import create_identity
from tests.conftest import ServerHarness

from .conftest import FIGURES, Profile
from .harness import manifest, restored_manifest
from .wire import ErrorLog, Wire


def _settings(examples: int, profile: Profile) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not profile.soak,
        suppress_health_check=list(HealthCheck),
    )


# ---- the frame decoder ---------------------------------------------------------------------

DECODER_PAYLOAD = 4096
LENGTHS = st.one_of(
    st.integers(0, 300),
    st.sampled_from(
        [0, 1, MAX_HEADER, MAX_HEADER + 1, DECODER_PAYLOAD, DECODER_PAYLOAD + 1, 2**31, 2**32 - 1]
    ),
)


HEADERS = [
    json.dumps(doc).encode()
    for doc in (
        {"op": "hello"},
        {"op": "ping", "id": 1},
        {"op": "put", "id": "x"},
        {},
        {"": None},
        {"op": 7},
        {"op": ["ping"]},
        {"id": {"deep": [1, 2]}},
    )
] + [b"[]", b"null", b'"op"', b"{", b"\xff\xfe", b"{}{}", b'{"op": "ping"', b" " * 8]

frames = st.builds(
    lambda header, payload, header_len, payload_len: (
        PREFIX.pack(
            len(header) if header_len is None else header_len,
            len(payload) if payload_len is None else payload_len,
        )
        + header
        + payload
    ),
    st.one_of(st.sampled_from(HEADERS), st.binary(max_size=40)),
    st.binary(max_size=300),
    st.one_of(st.none(), LENGTHS),
    st.one_of(st.none(), LENGTHS),
)
"""Frames that are nearly right: lengths that lie, headers that are not JSON objects."""


STREAMS = st.one_of(
    st.binary(max_size=2048),
    st.lists(frames, min_size=1, max_size=6).map(b"".join),
    st.tuples(st.lists(frames, min_size=1, max_size=4).map(b"".join), st.integers(0, 2000)).map(
        lambda pair: pair[0][: pair[1]]
    ),
)


def test_the_frame_decoder_accepts_only_whole_bounded_frames(profile: Profile) -> None:
    cases = 0

    @_settings(profile.fuzz_frames, profile)
    @given(STREAMS)
    def decode(data: bytes) -> None:
        nonlocal cases
        cases += 1
        sender, receiver = socket.socketpair()
        with sender, receiver:
            receiver.settimeout(10)
            sender.sendall(data)
            sender.shutdown(socket.SHUT_WR)
            framed = FramedSocket(receiver, max_payload=DECODER_PAYLOAD)
            for _ in range(len(data) // PREFIX.size + 1):
                try:
                    frame = framed.recv()
                except (ConnectionClosed, ProtocolError):
                    break
                assert isinstance(frame.header, dict)
                assert len(frame.payload) <= DECODER_PAYLOAD
            else:
                raise AssertionError("more frames decoded than the bytes could hold")
            # Allocation never runs ahead of the bound, whatever the lengths claim.
            assert len(framed._buffer) <= max(64 * 1024, MAX_HEADER + DECODER_PAYLOAD)

    decode()
    FIGURES["fuzz cases"] += cases
    assert cases >= profile.fuzz_frames


# ---- every handler, as a hostile client ------------------------------------------------------


@dataclass
class World:
    harness: ServerHarness
    source: Path
    alice_ids: list[bytes]
    mallory_ids: list[bytes]
    alice_secrets: list[bytes]
    mallory_token: str
    alice_before: dict[str, Any] = field(default_factory=dict)

    @property
    def repo(self) -> Repository:
        return self.harness.repo

    def alice_state(self) -> dict[str, Any]:
        alice = self.repo.client_by_name("alice")
        return {
            "snapshots": [snap.to_json() for snap in self.repo.list_snapshots(alice.id)],
            "chunks": self.repo.chunk_stats(alice.id),
            "key": self.repo.wrapped_key(alice.id),
            "refs": {sid: list(refs) for sid, refs in self.repo.iter_snapshot_refs(alice.id)},
        }


def _client_chunk_ids(repo: Repository, name: str) -> list[bytes]:
    client = repo.client_by_name(name)
    return sorted(
        location.chunk_id
        for pack in repo.pack_usage(client.id)
        for location in repo.pack_chunks(pack.id)
    )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # SQLite commits fsync; on tmpfs that costs nothing, and the fuzzers commit a lot.
    root = Path(
        tempfile.mkdtemp(prefix="rpyb-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    try:
        config = ServerConfig(path=root / "server.toml", data_dir=root / "data", listen_port=0)
        harness = ServerHarness(root, config, create_identity(config.tls_dir))
        harness.start()
        try:
            harness.enroll("root", admin=True)
            for name in ("alice", "mallory"):
                harness.enroll(name)
                source = root / f"{name}-files"
                source.mkdir()
                for index in range(3):
                    (source / f"{name}-{index}.txt").write_bytes(f"{name} {index}\n".encode() * 99)
                harness.client(name).backup([str(source)])
            repo = harness.repo
            alice_ids = _client_chunk_ids(repo, "alice")
            alice = repo.client_by_name("alice")
            secrets = [*alice_ids, *(i.hex().encode() for i in alice_ids)]
            for snap in repo.list_snapshots(alice.id):
                secrets += [snap.id.encode(), snap.sealed_meta.encode()]
            secrets.append((repo.wrapped_key(alice.id) or "").encode())
            world = World(
                harness,
                root / "alice-files",
                alice_ids,
                _client_chunk_ids(repo, "mallory"),
                secrets,
                harness.clients["mallory"].token,
            )
            world.alice_before = world.alice_state()
            yield world
        finally:
            harness.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


OPS = [*sorted(HANDLERS), "hello", "", "__init__", "op_put"]
FIELDS = [
    "code",
    "client",
    "token",
    "root",
    "time",
    "tags",
    "meta",
    "stats",
    "parent",
    "state",
    "last_result",
    "last_backup",
    "dry_run",
    "limit",
    "policy",
    "id",
    "magic",
    "protocol",
    "more",
    "count",
    "level",
]


def _requests(world: World) -> st.SearchStrategy[tuple[dict[str, Any], bytes]]:
    known_ids = st.sampled_from(world.alice_ids + world.mallory_ids)
    chunk_id = st.one_of(st.binary(min_size=32, max_size=32), known_ids)
    words = st.sampled_from(
        [
            "alice",
            "mallory",
            "admin",
            "2026-01-01T00:00:00Z",
            "1970-01-01",
            "9999-12-31T23:59:59",
            "watching",
            "idle",
            "../../etc/passwd",
            "\x1b[2J",
            base64.b64encode(b"x" * 40).decode(),
            *(i.hex() for i in world.alice_ids[:4]),
            *(i.hex() for i in world.mallory_ids[:4]),
        ]
    )
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=24), words
    )
    values = st.one_of(
        scalars,
        st.lists(scalars, max_size=3),
        st.sampled_from(
            [
                {},
                {"keep_last": 1},
                {"keep_last": -1},
                {"keep_daily": 10**12},
                {"x": [None]},
                {"files": 1, "bytes": "many"},
            ]
        ),
    )
    header = st.builds(
        lambda op, fields: {**fields, "op": op},
        st.one_of(st.sampled_from(OPS), st.text(max_size=10), st.integers()),
        st.dictionaries(st.sampled_from(FIELDS), values, max_size=5),
    )
    record = st.tuples(chunk_id, st.binary(max_size=48)).map(
        lambda r: RECORD.pack(r[0], len(r[1])) + r[1]
    )
    payload = st.one_of(
        st.just(b""),
        st.binary(max_size=200),
        st.lists(chunk_id, min_size=1, max_size=8).map(b"".join),
        st.lists(record, min_size=1, max_size=6).map(b"".join),
    )
    return st.tuples(header, payload)


def _leaks(world: World, request: bytes, replies: list[tuple[dict[str, Any], bytes]]) -> list[str]:
    """Alice's data in a reply to Mallory that Mallory did not send herself."""
    found = []
    for header, payload in replies:
        reply = json.dumps(header).encode() + payload
        for secret in world.alice_secrets:
            if secret and secret in reply and secret not in request:
                found.append(repr(secret[:16]))
    return found


def _exchange(world: World, wire: Wire, header: dict[str, Any], payload: bytes) -> bool:
    """One hostile request; False once the server has closed the connection."""
    replies = wire.request(header, payload)
    if replies is None:
        return False
    request = json.dumps(header).encode() + payload
    assert not _leaks(world, request, replies), (header, replies)
    for reply, _ in replies:
        error = reply.get("error")
        assert not (isinstance(error, dict) and error.get("code") == "internal"), (header, reply)
    return True


def test_every_handler_survives_hostile_requests(world: World, profile: Profile) -> None:
    cases = 0

    @_settings(profile.fuzz_handlers, profile)
    @given(st.booleans(), st.lists(_requests(world), min_size=1, max_size=5))
    def attack(authenticated: bool, requests: list[tuple[dict[str, Any], bytes]]) -> None:
        nonlocal cases
        cases += 1
        with ErrorLog() as errors:
            wire = Wire(world.repo)
            if authenticated:
                wire.auth("mallory", world.mallory_token)
            for header, payload in requests:
                if not _exchange(world, wire, header, payload):
                    break
            wire.close()
        assert not wire.crashes, wire.crashes
        assert not errors.records, [record.getMessage() for record in errors.records]

    attack()
    FIGURES["fuzz cases"] += cases
    assert cases >= profile.fuzz_handlers
    assert world.alice_state() == world.alice_before
    _alice_still_restores(world, "after-fuzz")


def _alice_still_restores(world: World, name: str) -> None:
    target = world.harness.root / name
    world.harness.client("alice").restore("latest", target)
    assert restored_manifest(target, world.source) == manifest(world.source)


# ---- one client addressing another's ids, request by request ---------------------------------


def _well_formed(world: World, op: str, victim_ids: list[bytes]) -> tuple[dict[str, Any], bytes]:
    """A request of type ``op`` that is valid in form and names Alice's objects."""
    alice = world.repo.client_by_name("alice")
    snapshot = world.repo.list_snapshots(alice.id)[-1]
    ids = b"".join(victim_ids)
    meta = base64.b64encode(b"m" * 32).decode()
    requests: dict[str, tuple[dict[str, Any], bytes]] = {
        "ping": ({}, b""),
        "enroll": ({"code": "AAAAA-BBBBB-CCCCC"}, b""),
        "auth": ({"client": "alice", "token": "guess"}, b""),
        "has": ({}, ids),
        "put": ({}, b""),
        "refs": ({}, ids),
        "sync": ({}, b""),
        # Mallory's own link; a link is a secret she can only guess.
        "link": ({}, b""),
        "follow": ({"link": "0" * 32}, b""),
        "commit": (
            {
                "time": "2026-01-01T00:00:00Z",
                "tags": [],
                "meta": meta,
                "stats": {},
                "root": [victim_ids[0].hex()],
                "parent": snapshot.id,
            },
            b"",
        ),
        "snapshots": ({}, b""),
        "get": ({}, ids),
        "set_key": ({}, b"{}"),
        "get_key": ({}, b""),
        "clients": ({}, b""),
        "report": ({"state": "idle", "last_result": "ok"}, b""),
        "admin_status": ({}, b""),
        "admin_retention": ({"client": "alice"}, b""),
        "admin_set_retention": ({"client": "alice", "policy": {"keep_last": 1}}, b""),
        "admin_prune_plan": ({"client": "alice"}, b""),
        "admin_prune": ({"client": "alice", "dry_run": False}, b""),
        "admin_prune_history": ({"client": "alice"}, b""),
        "admin_log": ({"level": "DEBUG", "limit": 100}, b""),
    }
    header, payload = requests[op]
    return {"op": op, **header}, payload


ALLOWED_FOR_MALLORY = {"ping", "snapshots", "get_key", "report", "put", "sync", "link"}


def test_a_client_can_never_reach_another_clients_data(world: World, profile: Profile) -> None:
    for op in HANDLERS:  # a KeyError here: a new request type needs its cross-client case
        _well_formed(world, op, world.alice_ids[:1])
    # The handler fuzzer may have stored chunks under Alice's ids in Mallory's own namespace;
    # those are Mallory's to see, so the victims are the ids only Alice holds.
    victims = sorted(set(world.alice_ids) - set(_client_chunk_ids(world.repo, "mallory")))
    assert victims
    cases = 0

    @_settings(profile.fuzz_cross_client, profile)
    @given(
        st.sampled_from(sorted(HANDLERS)),
        st.lists(st.sampled_from(victims), min_size=1, max_size=6),
    )
    def cross(op: str, victim_ids: list[bytes]) -> None:
        nonlocal cases
        cases += 1
        header, payload = _well_formed(world, op, victim_ids)
        with ErrorLog() as errors:
            wire = Wire(world.repo)
            wire.auth("mallory", world.mallory_token)
            replies = wire.request(header, payload)
            wire.close()
        assert replies is not None and not wire.crashes and not errors.records
        reply, body = replies[-1]
        request = json.dumps(header).encode() + payload
        assert not _leaks(world, request, replies)
        if op == "has":
            assert body == bytes(len(victim_ids))
        elif op not in ALLOWED_FOR_MALLORY:
            assert "error" in reply, (op, reply)
        if op == "snapshots":
            assert all(
                snap["id"].encode() not in world.alice_secrets for snap in reply["snapshots"]
            )

    cross()
    FIGURES["fuzz cases"] += cases
    assert cases >= profile.fuzz_cross_client
    assert world.alice_state() == world.alice_before
    _alice_still_restores(world, "after-cross")


ADMIN_OPS = sorted(op for op in HANDLERS if op.startswith("admin_") or op == "clients")


def test_admin_handlers_survive_hostile_requests_from_an_admin(
    world: World, profile: Profile
) -> None:
    """Last in this module: an admin may legitimately change Alice's retention."""
    admin_token = world.harness.clients["root"].token
    header = st.builds(
        lambda op, request: {**request[0], "op": op}, st.sampled_from(ADMIN_OPS), _requests(world)
    )
    cases = 0

    @_settings(profile.fuzz_admin, profile)
    @given(st.lists(header, min_size=1, max_size=4))
    def attack(headers: list[dict[str, Any]]) -> None:
        nonlocal cases
        cases += 1
        with ErrorLog() as errors:
            wire = Wire(world.repo)
            wire.auth("root", admin_token)
            for request in headers:
                replies = wire.request(request)
                if replies is None:
                    break
                error = replies[-1][0].get("error")
                assert not (isinstance(error, dict) and error.get("code") == "internal"), request
            wire.close()
        assert not wire.crashes, wire.crashes
        assert not errors.records, [record.getMessage() for record in errors.records]

    attack()
    FIGURES["fuzz cases"] += cases
    assert cases >= profile.fuzz_admin
