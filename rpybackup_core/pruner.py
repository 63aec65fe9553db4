"""Prune: apply a client's retention policy, then garbage-collect its chunks and packs, keyless.

Every snapshot row lists the chunk rows it references, so the server finds dead data without
the client's key. The steps, in this order (docs/retention.md has the crash-safety argument):

1. delete the removed snapshots' rows (one transaction);
2. delete chunk rows no remaining snapshot and no live session needs (one transaction that
   re-checks new snapshots and session pins under the write lock);
3. unindex packs left without a live chunk, then delete their files;
4. repack mostly-unused packs: copy their live blobs into a new pack, make it durable, re-point
   the rows and unindex the old packs in one transaction, then delete the old files;
5. delete pack files that no index row has named for a grace period (left by a crash).

A kill at any point leaves every kept snapshot restorable; the worst case is unreferenced data
that the next prune reclaims.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .crypto import storage_hash_matches
from .errors import RPyBackupError
from .pack import ENTRY, MAGIC, TAIL, PackWriter
from .repository import PACKS, ChunkLocation, ClientRecord, PackUsage, Repository, iso_time
from .retention import DEFAULT_POLICY, Plan, RetentionPolicy, apply_policy, parse_utc
from .rowset import RowSet

if TYPE_CHECKING:
    from .config import ServerConfig

log = logging.getLogger(__name__)

LOCK_FILE = "prune.lock"


@dataclass(frozen=True)
class PruneSettings:
    default_policy: RetentionPolicy = DEFAULT_POLICY
    repack_unused: float = 0.5
    """Repack a pack once at least this fraction of its bytes is unused."""
    pack_size: int = 32 * 1024 * 1024
    orphan_grace: float = 3600.0
    """A pack file no index row names is deleted only after this long: a session commits a
    pack by storing the file first and indexing it a moment later."""

    @classmethod
    def from_config(cls, config: ServerConfig) -> PruneSettings:
        return cls(
            default_policy=config.retention,
            repack_unused=config.repack_unused_percent / 100,
            pack_size=config.pack_size,
        )


@dataclass(frozen=True)
class RetentionSetting:
    """A client's effective policy, and whether it is the server default."""

    client: str
    policy: RetentionPolicy
    is_default: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "policy": self.policy.to_json(),
            "default": self.is_default,
            "describe": self.policy.describe(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RetentionSetting:
        return cls(
            str(doc["client"]), RetentionPolicy.from_json(doc["policy"]), bool(doc["default"])
        )


@dataclass(frozen=True)
class PrunePlan:
    """What a client's policy would keep (and why) and remove, newest first."""

    client: str
    policy: RetentionPolicy
    plan: Plan

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "policy": self.policy.to_json(), **self.plan.to_json()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PrunePlan:
        return cls(
            str(doc["client"]), RetentionPolicy.from_json(doc["policy"]), Plan.from_json(doc)
        )


@dataclass
class PruneResult:
    """What a prune did, or with ``dry_run`` would do.

    ``chunk_bytes_freed`` counts the chunks that become unreferenced; ``bytes_freed`` is the
    storage actually given back (deleted packs minus the packs written by repacking), 0 in a dry
    run.
    """

    client: str
    dry_run: bool
    policy: RetentionPolicy
    plan: Plan
    chunks_freed: int = 0
    chunk_bytes_freed: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "dry_run": self.dry_run,
            "policy": self.policy.to_json(),
            **self.plan.to_json(),
            "chunks_freed": self.chunks_freed,
            "chunk_bytes_freed": self.chunk_bytes_freed,
            "packs_deleted": self.packs_deleted,
            "packs_repacked": self.packs_repacked,
            "bytes_freed": self.bytes_freed,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PruneResult:
        return cls(
            client=str(doc["client"]),
            dry_run=bool(doc["dry_run"]),
            policy=RetentionPolicy.from_json(doc["policy"]),
            plan=Plan.from_json(doc),
            chunks_freed=int(doc["chunks_freed"]),
            chunk_bytes_freed=int(doc["chunk_bytes_freed"]),
            packs_deleted=int(doc["packs_deleted"]),
            packs_repacked=int(doc["packs_repacked"]),
            bytes_freed=int(doc["bytes_freed"]),
            seconds=float(doc["seconds"]),
        )

    def history_entry(self) -> dict[str, Any]:
        return {
            "removed": [d.id for d in self.plan.remove],
            "kept": len(self.plan.keep),
            "chunks_freed": self.chunks_freed,
            "packs_deleted": self.packs_deleted,
            "packs_repacked": self.packs_repacked,
            "bytes_freed": self.bytes_freed,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class PruneRecord:
    """One entry of the prune history."""

    time: float
    client: str
    origin: str
    """``manual`` (CLI), ``console`` (an admin over the network) or ``schedule``."""
    removed: list[str]
    kept: int
    bytes_freed: int
    chunks_freed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": iso_time(self.time),
            "client": self.client,
            "origin": self.origin,
            "removed": self.removed,
            "kept": self.kept,
            "bytes_freed": self.bytes_freed,
            "chunks_freed": self.chunks_freed,
        }

    @classmethod
    def from_row(cls, row: tuple[float, str, str, dict[str, Any]]) -> PruneRecord:
        stamp, client, origin, doc = row
        return cls(
            stamp,
            client,
            origin,
            list(doc["removed"]),
            int(doc["kept"]),
            int(doc["bytes_freed"]),
            int(doc["chunks_freed"]),
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PruneRecord:
        return cls(
            parse_utc(str(doc["time"])),
            str(doc["client"]),
            str(doc["origin"]),
            list(doc["removed"]),
            int(doc["kept"]),
            int(doc["bytes_freed"]),
            int(doc["chunks_freed"]),
        )


@dataclass
class _Garbage:
    chunks: int = 0
    chunk_bytes: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    bytes_freed: int = 0


def _unused(pack: PackUsage) -> int:
    """Bytes of a pack that a repack would not copy (its own framing counts as used)."""
    used = pack.live_bytes + pack.live_chunks * ENTRY.size + len(MAGIC) + TAIL.size
    return pack.size - used


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """One prune at a time per repository, across threads and processes (CLI and daemon)."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Pruner:
    def __init__(self, repo: Repository, settings: PruneSettings) -> None:
        self.repo = repo
        self.settings = settings

    # ---- policy -----------------------------------------------------------------------------

    def retention(self, client: ClientRecord) -> RetentionSetting:
        stored = self.repo.retention_policy(client.id)
        if stored is None:
            return RetentionSetting(client.name, self.settings.default_policy, True)
        return RetentionSetting(client.name, RetentionPolicy.from_json(stored), False)

    def set_retention(self, name: str, policy: RetentionPolicy | None) -> RetentionSetting:
        """Give a client its own policy, or None to follow the server default again."""
        client = self.repo.client_by_name(name)
        self.repo.set_retention_policy(client.id, policy.to_json() if policy else None)
        self.repo.audit("retention", name, policy=policy.to_json() if policy else "default")
        return self.retention(client)

    def plan(self, name: str) -> PrunePlan:
        return self._plan(self.repo.client_by_name(name))

    def _plan(self, client: ClientRecord) -> PrunePlan:
        policy = self.retention(client).policy
        plan = apply_policy(self.repo.list_snapshots(client.id), policy)
        return PrunePlan(client.name, policy, plan)

    # ---- prune ------------------------------------------------------------------------------

    def prune(self, name: str, dry_run: bool = False, origin: str = "manual") -> PruneResult:
        started = time.monotonic()
        with exclusive(self.repo.data_dir / LOCK_FILE):
            client = self.repo.client_by_name(name)
            planned = self._plan(client)
            plan = planned.plan
            result = PruneResult(client.name, dry_run, planned.policy, plan)
            if dry_run:
                self._estimate(client, plan, result)
            else:
                if plan.remove:
                    self.repo.delete_snapshots(client.id, [d.id for d in plan.remove])
                garbage = self.collect_garbage(client)
                result.chunks_freed = garbage.chunks
                result.chunk_bytes_freed = garbage.chunk_bytes
                result.packs_deleted = garbage.packs_deleted
                result.packs_repacked = garbage.packs_repacked
                result.bytes_freed = garbage.bytes_freed
            result.seconds = time.monotonic() - started
            if not dry_run:
                self.repo.record_prune(client.id, origin, result.history_entry())
                self.repo.audit(
                    "prune",
                    client.name,
                    origin=origin,
                    removed=len(plan.remove),
                    bytes_freed=result.bytes_freed,
                )
                self.repo.compact()
                log.info(
                    "pruned %s (%s): %d snapshots removed, %d kept, %d bytes freed",
                    client.name,
                    origin,
                    len(plan.remove),
                    len(plan.keep),
                    result.bytes_freed,
                )
        return result

    def prune_all(
        self, origin: str, should_stop: Callable[[], bool] = lambda: False
    ) -> list[PruneResult]:
        """Prune every client; one client's failure is logged and does not stop the others."""
        results = []
        for client in self.repo.list_clients():
            if should_stop():
                break
            try:
                results.append(self.prune(client.name, origin=origin))
            except RPyBackupError as exc:
                log.error("prune of %s failed: %s", client.name, exc)
        return results

    def history(self, name: str | None = None, limit: int = 100) -> list[PruneRecord]:
        client_id = self.repo.client_by_name(name).id if name else None
        return [PruneRecord.from_row(row) for row in self.repo.prune_history(client_id, limit)]

    def _estimate(self, client: ClientRecord, plan: Plan, result: PruneResult) -> None:
        """What the chunk GC would free if the plan ran now (pins of live sessions aside)."""
        going = {d.id for d in plan.remove}
        live = RowSet()
        for snapshot_id, refs in self.repo.iter_snapshot_refs(client.id):
            if snapshot_id not in going:
                live.update(refs)
        dead = self._unlisted(client, live)
        result.chunks_freed = len(dead)
        result.chunk_bytes_freed = self.repo.chunk_bytes(dead)

    # ---- garbage collection -----------------------------------------------------------------

    def collect_garbage(self, client: ClientRecord) -> _Garbage:
        garbage = _Garbage()
        candidates, seen = self._unreferenced(client)
        garbage.chunks, garbage.chunk_bytes = self.repo.delete_dead_chunks(
            client.id, candidates, seen
        )
        to_repack = []
        for pack in self.repo.pack_usage(client.id):
            if pack.live_chunks == 0:
                if self.repo.drop_empty_pack(pack.id):
                    self.repo.backend.delete(PACKS, pack.name)
                    garbage.packs_deleted += 1
                    garbage.bytes_freed += pack.size
            elif _unused(pack) >= self.settings.repack_unused * pack.size:
                to_repack.append(pack)
        self._repack(client, to_repack, garbage)
        self._sweep_orphans(client, garbage)
        return garbage

    def _unreferenced(self, client: ClientRecord) -> tuple[RowSet, set[str]]:
        """Chunk rows no snapshot references, and the snapshots that judgement rests on."""
        seen: set[str] = set()
        live = RowSet()
        for snapshot_id, refs in self.repo.iter_snapshot_refs(client.id):
            seen.add(snapshot_id)
            live.update(refs)
        return self._unlisted(client, live), seen

    def _unlisted(self, client: ClientRecord, live: RowSet) -> RowSet:
        """The client's chunk rows that are not in ``live``."""
        return RowSet(rowid for rowid in self.repo.chunk_rowids(client.id) if rowid not in live)

    def _repack(self, client: ClientRecord, packs: list[PackUsage], garbage: _Garbage) -> None:
        writer: PackWriter | None = None
        batch: list[PackUsage] = []
        moves: list[tuple[int, int, int]] = []
        try:
            for pack in packs:
                blobs = self._live_blobs(pack)
                if blobs is None:
                    continue
                if writer is None:
                    writer = self.repo.new_pack()
                for location, data in blobs:
                    entry = writer.append(location.chunk_id, location.storage_hash, data)
                    moves.append((location.rowid, pack.id, entry.offset))
                batch.append(pack)
                if writer.size >= self.settings.pack_size:
                    self._commit_repack(client, writer, batch, moves, garbage)
                    writer, batch, moves = None, [], []
            if writer is not None:
                self._commit_repack(client, writer, batch, moves, garbage)
                writer = None
        finally:
            if writer is not None:
                writer.abort()

    def _live_blobs(self, pack: PackUsage) -> list[tuple[ChunkLocation, bytes]] | None:
        """The live blobs of a pack, each verified; None (pack left alone) if one is damaged."""
        blobs = []
        for location in self.repo.pack_chunks(pack.id):
            data = self.repo.backend.get_range(PACKS, pack.name, location.offset, location.length)
            if not storage_hash_matches(data, location.storage_hash):
                log.error(
                    "not repacking %s: chunk %s fails its storage hash (run check)",
                    pack.name,
                    location.chunk_id.hex()[:16],
                )
                return None
            blobs.append((location, data))
        return blobs

    def _commit_repack(
        self,
        client: ClientRecord,
        writer: PackWriter,
        batch: list[PackUsage],
        moves: list[tuple[int, int, int]],
        garbage: _Garbage,
    ) -> None:
        """Store the new pack, re-point (row id, old pack id, new offset), drop the old packs."""
        emptied = set(self.repo.commit_repack(client.id, writer, moves, [p.id for p in batch]))
        garbage.bytes_freed -= writer.size
        for pack in batch:
            if pack.id in emptied:
                self.repo.backend.delete(PACKS, pack.name)
                garbage.packs_repacked += 1
                garbage.bytes_freed += pack.size

    def _sweep_orphans(self, client: ClientRecord, garbage: _Garbage) -> None:
        prefix = f"{client.id}/"
        stored = {name for name in self.repo.backend.list(PACKS) if name.startswith(prefix)}
        orphans = stored - self.repo.pack_names()
        for name in self.repo.age_orphans(prefix, orphans, self.settings.orphan_grace):
            size = self.repo.backend.size(PACKS, name)
            self.repo.backend.delete(PACKS, name)
            self.repo.forget_orphan(name)
            garbage.bytes_freed += size
            log.info("deleted orphaned pack %s (%d bytes)", name, size)


class PruneScheduler:
    """The daemon's own prune of every client, every ``interval`` seconds.

    The first run is due one interval after the last scheduled prune recorded in the repository
    (or after the daemon started, if there is none), so restarts do not postpone it forever.
    """

    def __init__(self, pruner: Pruner, interval: int, stopping: threading.Event) -> None:
        self.pruner = pruner
        self.interval = interval
        self.stopping = stopping
        self._thread = threading.Thread(target=self._run, name="prune-scheduler", daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        base = self.pruner.repo.last_prune_time("schedule") or time.time()
        while not self.stopping.wait(max(0.0, base + self.interval - time.time())):
            try:
                self.pruner.prune_all("schedule", self.stopping.is_set)
            except Exception:
                log.exception("scheduled prune failed")
            base = time.time()
