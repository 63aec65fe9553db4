"""One client connection on the server: hello, authentication, then an allow-list of requests.

Every request after ``auth`` runs against the authenticated client's id only; there is no request
that names another client's data. Errors a client can cause become an error reply (the
connection stays usable); protocol violations close the connection; nothing a client sends can
stop the server.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import __version__
from .chunker import MAX_SIZE
from .crypto import ID_SIZE, SEAL_OVERHEAD
from .errors import (
    AuthenticationFailed,
    ConnectionClosed,
    EnrollmentFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RPyBackupError,
    ServerError,
    StorageError,
)
from .logs import LEVELS, RecentLog
from .packer import MAX_QUEUED_RECORDS, Packer, Record
from .protocol import (
    MAGIC,
    PROTOCOL_VERSION,
    RECORD,
    Blob,
    Frame,
    FramedSocket,
    record_parts,
    split_ids,
    unpack_records,
)
from .pruner import Pruner, PruneSettings
from .ratelimit import AttemptLimiter
from .repository import ClientRecord, Repository
from .retention import RetentionPolicy
from .rowset import RowSet
from .status import collect_status

log = logging.getLogger(__name__)

# A sealed chunk: the largest plaintext chunk, stored raw, plus the AEAD framing.
MAX_SEALED = MAX_SIZE + SEAL_OVERHEAD + 1024
MAX_IDS_PER_REQUEST = 65536
GET_FRAME_BYTES = 4 * 1024 * 1024
# An open pack is sealed at this many chunks whatever its size: tiny chunks must not let one
# connection pile up index entries in memory (tests/robustness/test_memory.py).
MAX_PACK_ENTRIES = 32768
# Records handed to the pack writer in one job: small jobs keep the queue's bound meaningful.
SUBMIT_RECORDS = 1024
# Chunks accepted but not yet indexed: a committing pack, the open one and what is queued.
MAX_PENDING = 2 * MAX_PACK_ENTRIES + MAX_QUEUED_RECORDS
# Seconds a connection may stay silent before it has authenticated (then the server's idle
# timeout applies): a silent stranger must not hold a connection slot for long.
AUTH_TIMEOUT = 30.0
MAX_REFS_PER_SNAPSHOT = 20_000_000
MAX_TAGS = 64
MAX_TEXT = 4096
MAX_SEALED_META = 48 * 1024
# How long a commit waits for a follower to index chunks it was told are present because the
# follower had accepted them: a helper's connection that broke off seals its open pack as it
# ends, which takes an fsync.
BORROW_WAIT = 60.0
# Borrowed chunks held before those indexed meanwhile are referenced (~100 bytes each).
MAX_BORROWED = 65536

Handler = Callable[["Session", Frame], tuple[dict[str, Any], bytes] | None]


class _Links:
    """Sessions that handed out a link for a helper process of their client (``link``), by
    it, while they last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def add(self, link: str, session: Session) -> None:
        with self._lock:
            self._sessions[link] = session

    def find(self, link: str) -> Session | None:
        with self._lock:
            return self._sessions.get(link)

    def remove(self, link: str) -> None:
        with self._lock:
            self._sessions.pop(link, None)


_LINKS = _Links()
# Held while a connection starts following another (``follow``).
_FOLLOWING = threading.Lock()


def _text(header: dict[str, Any], key: str, default: str | None = None) -> str:
    value = header.get(key, default)
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidRequest(f"field {key!r} must be a string of at most {MAX_TEXT} characters")
    return value


def _text_list(header: dict[str, Any], key: str) -> list[str]:
    value = header.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise InvalidRequest(f"field {key!r} must be a list of at most {MAX_TAGS} strings")
    if not all(isinstance(item, str) and len(item) <= MAX_TEXT for item in value):
        raise InvalidRequest(f"field {key!r} must hold short strings")
    return value


def _hex_ids(header: dict[str, Any], key: str) -> list[bytes]:
    value = header.get(key)
    if not isinstance(value, list) or not value or len(value) > 4096:
        raise InvalidRequest(f"field {key!r} must be a non-empty list of chunk ids")
    ids = []
    for item in value:
        if not isinstance(item, str) or len(item) != 2 * ID_SIZE:
            raise InvalidRequest(f"field {key!r} holds a malformed chunk id")
        try:
            ids.append(bytes.fromhex(item))
        except ValueError as exc:
            raise InvalidRequest(f"field {key!r} holds a malformed chunk id") from exc
    return ids


def _sealed_meta(header: dict[str, Any]) -> str:
    """The client's encrypted snapshot metadata (host, paths): opaque base64 to the server."""
    value = header.get("meta")
    if not isinstance(value, str) or not value or len(value) > MAX_SEALED_META:
        raise InvalidRequest(f"field 'meta' must be base64 of at most {MAX_SEALED_META} characters")
    try:
        base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise InvalidRequest("field 'meta' is not base64") from exc
    return value


def _parse_time(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"snapshot time {text!r} is not ISO 8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    stamp = moment.timestamp()
    if not math.isfinite(stamp):
        raise InvalidRequest("snapshot time is out of range")
    return stamp


class Session:
    def __init__(
        self,
        repo: Repository,
        framed: FramedSocket,
        peer: str,
        pack_size: int,
        prune_settings: PruneSettings | None = None,
        limiter: AttemptLimiter | None = None,
        recent_log: RecentLog | None = None,
        auth_timeout: float = AUTH_TIMEOUT,
    ) -> None:
        self.repo = repo
        self.recent_log = recent_log
        self.framed = framed
        self.peer = peer
        self.host = peer.rsplit(":", 1)[0]
        self.limiter = limiter or AttemptLimiter()
        self.auth_timeout = auth_timeout
        self.idle_timeout = framed.sock.gettimeout()
        self.pack_size = pack_size
        self.prune_settings = prune_settings or PruneSettings(pack_size=pack_size)
        # Chunks this session was told exist, or uploaded, are pinned under this key against
        # GC until the session ends (see docs/retention.md).
        self.pin_key = secrets.token_hex(8)
        self.client: ClientRecord | None = None
        self.packer: Packer | None = None
        # Chunks accepted from puts and not yet indexed (queued, in the open pack, committing).
        # Every chunk put counts as referenced by the snapshot this session commits next, from
        # the moment its pack is indexed: a client uploads only what its snapshot refers to.
        self.pending: set[bytes] = set()
        # Row ids of the chunks referenced so far: a session may reference millions.
        self.refs = RowSet()
        # Chunks put but lost to a storage failure before they were indexed (or borrowed from a
        # follower that never stored them): a commit waits until each is put again.
        self.lost: set[bytes] = set()
        # This session's link for a helper process (``link``), and the session of the process
        # this one helps (``follow``): chunks it has accepted count as present here too.
        self.link: str | None = None
        self.leader: Session | None = None
        # The sessions following this one, and the chunks this one was told are present
        # because one of them had accepted them (not yet indexed then): they are referenced
        # once indexed, and a commit waits for that. Followers join, leave and index under
        # ``followed``.
        self.followed = threading.Condition()
        self.followers: list[Session] = []
        self.borrowed: set[bytes] = set()

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        idle = self.idle_timeout
        self.framed.sock.settimeout(
            self.auth_timeout if idle is None else min(idle, self.auth_timeout)
        )
        try:
            self._hello()
            while True:
                # An authenticated client's payloads are kept: a put is queued for the pack
                # writer as it arrived, not copied out of a shared buffer.
                frame = self.framed.recv(keep=self.client is not None)
                if not self._dispatch(frame):
                    break
                # Its buffer can take the next payload once nothing refers to this one.
                del frame
        except ConnectionClosed:
            pass
        finally:
            try:
                self._seal_open_pack()
            finally:
                if self.packer is not None:
                    self.packer.close()
                if self.leader is not None:
                    self._stop_following()
                if self.client is not None:
                    self.repo.release_pins(self.pin_key)
                if self.link is not None:
                    _LINKS.remove(self.link)

    def _hello(self) -> None:
        frame = self.framed.recv()
        header = frame.header
        if header.get("op") != "hello" or header.get("magic") != MAGIC:
            raise ProtocolError("the first frame must be a hello")
        if header.get("protocol") != PROTOCOL_VERSION:
            self._reply(
                header,
                error=InvalidRequest(
                    f"protocol {header.get('protocol')!r} is not supported; server speaks "
                    f"{PROTOCOL_VERSION}"
                ),
            )
            raise ProtocolError("protocol version mismatch")
        self._reply(
            header,
            body={
                "protocol": PROTOCOL_VERSION,
                "server": f"rpybackup/{__version__}",
                "max_payload": self.framed.max_payload,
            },
        )

    def _dispatch(self, frame: Frame) -> bool:
        """Handle one request; False closes the connection."""
        op = frame.op
        handler = HANDLERS.get(op)
        try:
            if handler is None:
                raise InvalidRequest(f"unknown operation {op!r}")
            if op not in PUBLIC_OPS and self.client is None:
                raise PermissionDenied("authenticate first")
            result = handler(self, frame)
        except ProtocolError:
            raise
        except RPyBackupError as exc:
            log.info("%s %s: %s refused: %s", self.peer, self._who(), op, exc)
            self._reply(frame.header, error=exc)
            return True
        except Exception:
            log.exception("%s %s: %s failed", self.peer, self._who(), op)
            self._reply(
                frame.header, error=ServerError("internal server error; see the server log")
            )
            return False
        if result is not None:
            body, payload = result
            self._reply(frame.header, body=body, parts=[payload])
        return True

    def _reply(
        self,
        request: dict[str, Any],
        body: dict[str, Any] | None = None,
        parts: Sequence[Blob] = (),
        error: RPyBackupError | None = None,
    ) -> None:
        header: dict[str, Any] = {"id": request.get("id")}
        if error is not None:
            header["error"] = {"code": error.code, "message": str(error)}
        else:
            header["ok"] = True
            header.update(body or {})
        self.framed.send_parts(header, parts)

    def _who(self) -> str:
        return self.client.name if self.client else "(unauthenticated)"

    def _require_admin(self) -> ClientRecord:
        if self.client is None or not self.client.admin:
            raise PermissionDenied("this request needs an admin identity")
        return self.client

    # ---- pack handling ----------------------------------------------------------------------

    def _seal_open_pack(self) -> None:
        """Make every accepted chunk durable and indexed (chunks of a broken-off run are kept)."""
        if self.packer is not None:
            self._indexed(self._packing(lambda packer: packer.drain(seal=True)))

    def _packing(self, step: Callable[[Packer], list[dict[bytes, int]]]) -> list[dict[bytes, int]]:
        """Run a packer step; after a write failure every chunk not yet indexed is lost."""
        assert self.packer is not None
        try:
            return step(self.packer)
        except StorageError:
            self.lost.update(self.pending)
            self.pending.clear()
            raise

    def _indexed(self, committed: list[dict[bytes, int]]) -> None:
        """Packs the writer committed: their chunks now have row ids (pinned for this session)
        and are referenced."""
        for rowids in committed:
            self.pending.difference_update(rowids)
            self.refs.update(rowids.values())
        if committed and self.leader is not None and self.leader.borrowed:
            with self.leader.followed:
                self.leader.followed.notify_all()

    # ---- following ---------------------------------------------------------------------------

    def _stop_following(self) -> None:
        """This follower ends: what it had accepted is sealed and indexed (or lost) by now."""
        assert self.leader is not None
        with self.leader.followed:
            self.leader.followers.remove(self)
            self.leader.followed.notify_all()

    def _held_by_followers(self, ids: Iterable[bytes]) -> set[bytes]:
        """Those of ``ids`` a follower has accepted and not yet indexed."""
        with self.followed:
            followers = tuple(self.followers)
        return {i for i in ids if any(i in follower.pending for follower in followers)}

    def _reference_borrowed(self) -> None:
        """Reference the borrowed chunks that are indexed by now."""
        assert self.client is not None
        found = self.repo.lookup_pinned(self.client.id, list(self.borrowed), self.pin_key)
        self.refs.update(found.values())
        self.borrowed.difference_update(found)

    def _settle_borrowed(self) -> None:
        """Before a commit: reference each borrowed chunk once its follower has indexed it.
        One that no follower holds any longer and is not indexed, or that is still held when
        ``BORROW_WAIT`` is over, is lost: the snapshot must not count on it."""
        deadline = time.monotonic() + BORROW_WAIT
        while self.borrowed:
            # What the followers still hold is taken before the lookup: a chunk leaves a
            # follower's pending set only once indexed, so one missing from both was lost.
            held = self._held_by_followers(self.borrowed)
            self._reference_borrowed()
            if not self.borrowed:
                return
            left = deadline - time.monotonic()
            if not self.borrowed <= held or left <= 0:
                # Lost until put again, so no later commit of this session counts on them.
                count = len(self.borrowed)
                self.lost.update(self.borrowed)
                self.borrowed.clear()
                raise NotFound(
                    f"{count} chunks of this snapshot that a helper connection had accepted "
                    "were never stored"
                )
            with self.followed:
                self.followed.wait(min(left, 1.0))

    # ---- handlers ---------------------------------------------------------------------------

    def op_ping(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        return {}, b""

    def op_enroll(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        code = _text(frame.header, "code")
        self.limiter.check(self.host, "enrollment")
        try:
            client, token = self.repo.enroll(code)
        except EnrollmentFailed as exc:
            self.limiter.failure(self.host, f"enrollment refused: {exc}")
            raise
        log.info("%s enrolled as client %s", self.peer, client.name)
        return {
            "client": client.name,
            "token": token,
            "admin": client.admin,
            "has_key": client.has_key,
        }, b""

    def op_auth(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        if self.client is not None:
            raise InvalidRequest("already authenticated")
        name = _text(frame.header, "client")
        token = _text(frame.header, "token")
        self.limiter.check(self.host, "authentication")
        try:
            self.client = self.repo.authenticate(name, token)
        except AuthenticationFailed:
            self.limiter.failure(self.host, f"authentication as {name!r} refused")
            raise
        try:
            self.repo.touch(self.client.id)
        except StorageError as exc:
            # When a client was last seen is for `status`: a full disk must not lock clients out
            # of listing and restoring what is stored.
            log.warning("%s: could not record that %s was seen: %s", self.peer, name, exc)
        self.framed.sock.settimeout(self.idle_timeout)
        log.info("%s authenticated as %s", self.peer, name)
        return {"client": self.client.name, "admin": self.client.admin}, b""

    def op_has(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        ids = split_ids(frame.payload, ID_SIZE, MAX_IDS_PER_REQUEST)
        known = self.repo.lookup_pinned(self.client.id, ids, self.pin_key)
        # The leader's accepted chunks are as good as stored for a helper: the leader indexes
        # them before it commits, and its commit is the only one that references them.
        leading = self.leader.pending if self.leader is not None else frozenset()
        # A follower's are too: two processes of one backup that read copies of a file at once
        # store it once.
        held = self._held_unindexed(ids, known)
        answer = bytes(
            1 if (i in known or i in self.pending or i in leading or i in held) else 0 for i in ids
        )
        if frame.header.get("reference") is True:
            # The client will reference what it is told is here (unchanged files): counting it
            # now spares a second lookup of the same ids in a refs request.
            self._add_refs(ids, known, held)
        return {"count": len(ids)}, answer

    def op_put(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        records = unpack_records(frame.payload)
        if any(len(sealed) > MAX_SEALED for _, sealed in records):
            raise InvalidRequest("a sealed chunk exceeds the maximum chunk size")
        self._check_refs_bound(len(records))
        if self.packer is None:
            self.packer = Packer(
                self.repo, self.client.id, self.pin_key, self.pack_size, MAX_PACK_ENTRIES
            )
        stored = 0
        piece: list[Record] = []
        for record in records:
            piece.append(record)
            if len(piece) >= SUBMIT_RECORDS:
                stored += self._accept(piece)
                piece = []
        if piece:
            stored += self._accept(piece)
        return {"stored": stored}, b""

    def _accept(self, records: list[Record]) -> int:
        """Hand the pack writer the records of chunks not stored yet; returns how many.

        A copy of a chunk that was accepted or indexed since the client asked about it is
        referenced, not stored twice: the two processes of a backup can read copies of one
        file at once. Linked connections claim chunks under the leader's lock, each taking
        into its pending set those no other holds, and only then look them up in the index
        (a chunk leaves a pending set once indexed): of two copies put at once, one is
        stored."""
        assert self.client is not None
        leading = self.leader.pending if self.leader is not None else frozenset()
        with (self.leader or self).followed:
            held = self._held_by_followers(i for i, _ in records) if self.followers else set()
            claimed = {
                i: None
                for i, _ in records
                if i not in self.pending and i not in leading and i not in held
            }
            self.pending.update(claimed)
        try:
            indexed = self.repo.lookup_pinned(self.client.id, list(claimed), self.pin_key)
        except BaseException:
            # Unclaimed, or a put of them again would be taken for one already accepted.
            self.pending.difference_update(claimed)
            raise
        self.pending.difference_update(indexed)
        self.refs.update(indexed.values())
        batch: list[Record] = []
        for chunk_id, sealed in records:
            if chunk_id in held:
                self.lost.discard(chunk_id)
                self.borrowed.add(chunk_id)
            elif chunk_id in claimed:
                self.lost.discard(chunk_id)
                if chunk_id not in indexed:
                    batch.append((chunk_id, sealed))
                # A second record of the chunk in this put is not stored again.
                del claimed[chunk_id]
        if batch:
            self._submit(batch)
        return len(batch)

    def _submit(self, batch: list[Record]) -> None:
        self._indexed(self._packing(lambda packer: packer.submit(batch)))

    def op_sync(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        """Every chunk this connection sent is durable and indexed once this is answered: a
        backup's helper process syncs before the backup's own connection references them."""
        self._seal_open_pack()
        return {}, b""

    def op_link(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        """A secret a helper process of this client presents with ``follow``."""
        if self.link is None:
            self.link = secrets.token_hex(16)
            _LINKS.add(self.link, self)
        return {"link": self.link}, b""

    def op_follow(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        """Help the session that handed out this link: a copy of what either has accepted is
        not put twice by the other. Only a session of the same client of the same repository
        can be followed (client ids are a repository's; links are kept per process)."""
        assert self.client is not None
        leader = _LINKS.find(_text(frame.header, "link"))
        if (
            leader is None
            or leader is self
            or leader.repo is not self.repo
            or leader.client is None
            or leader.client.id != self.client.id
        ):
            raise NotFound("no such session to follow")
        # One leader and its followers, no chains or cycles: a connection locks only its
        # leader's lock, or its own (``_accept``), so two cannot wait for each other.
        with _FOLLOWING:
            if self.leader is not None or self.followers or leader.leader is not None:
                raise InvalidRequest("a connection follows at most one that follows none")
            self.leader = leader
            with leader.followed:
                leader.followers.append(self)
        return {}, b""

    def op_refs(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        ids = split_ids(frame.payload, ID_SIZE, MAX_IDS_PER_REQUEST)
        indexed = self.repo.lookup_pinned(self.client.id, ids, self.pin_key)
        missing = self._add_refs(ids, indexed, self._held_unindexed(ids, indexed))
        if missing:
            raise NotFound(f"{missing} referenced chunks are not stored on the server")
        return {"count": len(ids)}, b""

    def _held_unindexed(self, ids: list[bytes], indexed: dict[bytes, int]) -> set[bytes]:
        """Those of ``ids``, neither indexed nor accepted here, that a follower holds."""
        if not self.followers:
            return set()
        return self._held_by_followers(i for i in ids if i not in indexed and i not in self.pending)

    def _add_refs(self, ids: list[bytes], indexed: dict[bytes, int], held: set[bytes]) -> int:
        """Count ids as referenced by the coming snapshot; returns how many are not stored.
        A chunk this session put is referenced once its pack is indexed, one a follower
        holds (``held``) once the follower has indexed it (``_settle_borrowed``)."""
        self._check_refs_bound(len(ids))
        self.refs.update(indexed.values())
        if held:
            self.borrowed.update(held)
            if len(self.borrowed) > MAX_BORROWED:
                # What a follower has indexed since leaves the set: the rest is bounded by
                # what the followers hold.
                self._reference_borrowed()
        return sum(1 for i in ids if i not in indexed and i not in self.pending and i not in held)

    def _check_refs_bound(self, more: int) -> None:
        if len(self.refs) + len(self.pending) + len(self.borrowed) + more > MAX_REFS_PER_SNAPSHOT:
            raise InvalidRequest("too many chunk references for one snapshot")

    def op_commit(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        header = frame.header
        stats = header.get("stats", {})
        if not isinstance(stats, dict) or len(stats) > 64:
            raise InvalidRequest("field 'stats' must be a small object")
        root = _hex_ids(header, "root")
        parent = header.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise InvalidRequest("field 'parent' must be a string")
        meta = {
            "time": _parse_time(_text(header, "time")),
            "tags": _text_list(header, "tags"),
            "sealed_meta": _sealed_meta(header),
            "stats": stats,
            "root": root,
            "parent": parent,
        }
        self._seal_open_pack()
        self._settle_borrowed()
        if self.lost:
            raise NotFound(
                f"{len(self.lost)} chunks of this snapshot were lost to a storage failure "
                "and not sent again"
            )
        root_rows = self.repo.lookup(self.client.id, root)
        if len(root_rows) != len(root) or not all(r in self.refs for r in root_rows.values()):
            raise InvalidRequest("snapshot root is not among its references")
        snapshot_id = self.repo.add_snapshot(self.client.id, meta, self.refs)
        self.refs = RowSet()
        log.info("client %s committed snapshot %s", self.client.name, snapshot_id)
        self.repo.audit("snapshot", self.client.name, snapshot=snapshot_id)
        return {"snapshot": snapshot_id}, b""

    def op_snapshots(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        snapshots = self.repo.list_snapshots(self.client.id)
        return {"snapshots": [snap.to_json() for snap in snapshots]}, b""

    def op_get(self, frame: Frame) -> None:
        """Stream the asked blobs back in frames that stay under the payload bound."""
        assert self.client is not None
        ids = split_ids(frame.payload, ID_SIZE, MAX_IDS_PER_REQUEST)
        if not self.pending.isdisjoint(ids):
            self._seal_open_pack()
        locations = self.repo.locate(self.client.id, ids)
        missing = [chunk_id for chunk_id in ids if chunk_id not in locations]
        if missing:
            raise NotFound(f"chunk {missing[0].hex()[:16]} is not stored on the server")
        batch: list[tuple[bytes, bytes | memoryview]] = []
        batch_size = 0
        # Frames of a few MiB keep both peers' buffers small; the client pipelines anyway.
        limit = min(self.framed.max_payload - 4096, GET_FRAME_BYTES)
        for chunk_id, sealed in self.repo.read_chunks(self.client.id, ids, locations):
            if batch and batch_size + len(sealed) + RECORD.size > limit:
                self._reply(frame.header, {"more": True, "count": len(batch)}, record_parts(batch))
                batch, batch_size = [], 0
            batch.append((chunk_id, sealed))
            batch_size += len(sealed) + RECORD.size
        self._reply(frame.header, {"more": False, "count": len(batch)}, record_parts(batch))
        return None

    def op_set_key(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        try:
            wrapped = frame.payload.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest("wrapped key is not UTF-8") from exc
        if len(wrapped) > 16384:
            raise InvalidRequest("wrapped key is too large")
        self.repo.set_wrapped_key(self.client.id, wrapped)
        return {}, b""

    def op_get_key(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        assert self.client is not None
        wrapped = self.repo.wrapped_key(self.client.id)
        if wrapped is None:
            raise NotFound("no wrapped key is stored for this client")
        return {}, wrapped.encode("utf-8")

    def op_clients(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        self._require_admin()
        return {"clients": [client.to_json() for client in self.repo.list_clients()]}, b""

    REPORT_STATES = frozenset({"watching", "idle"})
    MAX_REPORT_RESULT = 512

    def op_report(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        """A client's own state (watch mode): stored for status; every field is checked."""
        assert self.client is not None
        header = frame.header
        state = _text(header, "state")
        if state not in self.REPORT_STATES:
            raise InvalidRequest(f"field 'state' must be one of {sorted(self.REPORT_STATES)}")
        result = _text(header, "last_result", "")
        # Shown in the admin's terminal: no control characters, no escape sequences.
        if len(result) > self.MAX_REPORT_RESULT or not result.isprintable():
            raise InvalidRequest(
                f"field 'last_result' must be printable text of at most "
                f"{self.MAX_REPORT_RESULT} characters"
            )
        last_backup = None
        if header.get("last_backup") is not None:
            text = _text(header, "last_backup")
            try:
                if len(text) > 64:
                    raise InvalidRequest("too long")
                last_backup = _parse_time(text)
            except InvalidRequest as exc:
                raise InvalidRequest("field 'last_backup' must be an ISO 8601 time") from exc
            if not 0 <= last_backup <= time.time() + 86400:
                raise InvalidRequest("field 'last_backup' is out of range")
        self.repo.report_state(self.client.id, state, last_backup, result)
        return {}, b""

    # ---- admin: retention, prune, status (docs/retention.md) ---------------------------------
    # Replies carry a JSON document as payload: a plan for many snapshots outgrows a header.

    def _pruner(self) -> Pruner:
        return Pruner(self.repo, self.prune_settings)

    @staticmethod
    def _document(doc: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        return {}, json.dumps(doc).encode("utf-8")

    def op_admin_status(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        self._require_admin()
        return self._document(collect_status(self.repo, self._pruner()).to_json())

    def op_admin_retention(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        self._require_admin()
        client = self.repo.client_by_name(_text(frame.header, "client"))
        return self._document(self._pruner().retention(client).to_json())

    def op_admin_set_retention(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        admin = self._require_admin()
        raw = frame.header.get("policy")
        policy = None if raw is None else RetentionPolicy.from_json(raw)
        setting = self._pruner().set_retention(_text(frame.header, "client"), policy)
        log.info(
            "admin %s set the retention of %s to %s",
            admin.name,
            setting.client,
            setting.policy.describe(),
        )
        return self._document(setting.to_json())

    def op_admin_prune_plan(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        self._require_admin()
        return self._document(self._pruner().plan(_text(frame.header, "client")).to_json())

    def op_admin_prune(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        admin = self._require_admin()
        dry_run = frame.header.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidRequest("field 'dry_run' must be true or false")
        name = _text(frame.header, "client")
        log.info("admin %s prunes %s%s", admin.name, name, " (dry run)" if dry_run else "")
        return self._document(self._pruner().prune(name, dry_run, origin="console").to_json())

    def op_admin_prune_history(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        self._require_admin()
        name = frame.header.get("client")
        if name is not None:
            name = _text(frame.header, "client")
        limit = frame.header.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise InvalidRequest("field 'limit' must be a number from 1 to 10000")
        records = self._pruner().history(name, limit)
        return self._document({"history": [record.to_json() for record in records]})

    MAX_LOG_LINES = 1000

    def op_admin_log(self, frame: Frame) -> tuple[dict[str, Any], bytes]:
        """The server's recent log lines at ``level`` or above, oldest first."""
        self._require_admin()
        level = _text(frame.header, "level", "INFO")
        if level not in LEVELS:
            raise InvalidRequest(f"field 'level' must be one of {', '.join(LEVELS)}")
        limit = frame.header.get("limit", 200)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not (1 <= limit <= self.MAX_LOG_LINES)
        ):
            raise InvalidRequest(f"field 'limit' must be a number from 1 to {self.MAX_LOG_LINES}")
        lines = self.recent_log.lines(level, limit) if self.recent_log else []
        return self._document({"lines": [line.to_json() for line in lines]})


HANDLERS: dict[str, Handler] = {
    "ping": Session.op_ping,
    "enroll": Session.op_enroll,
    "auth": Session.op_auth,
    "has": Session.op_has,
    "put": Session.op_put,
    "refs": Session.op_refs,
    "sync": Session.op_sync,
    "link": Session.op_link,
    "follow": Session.op_follow,
    "commit": Session.op_commit,
    "snapshots": Session.op_snapshots,
    "get": Session.op_get,
    "set_key": Session.op_set_key,
    "get_key": Session.op_get_key,
    "clients": Session.op_clients,
    "admin_status": Session.op_admin_status,
    "admin_retention": Session.op_admin_retention,
    "admin_set_retention": Session.op_admin_set_retention,
    "admin_prune_plan": Session.op_admin_prune_plan,
    "admin_prune": Session.op_admin_prune,
    "admin_prune_history": Session.op_admin_prune_history,
    "report": Session.op_report,
    "admin_log": Session.op_admin_log,
}
PUBLIC_OPS = frozenset({"ping", "enroll", "auth"})
