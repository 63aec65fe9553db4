"""`check`: the index, the pack files and the snapshots agree; with read_data every blob is re-read.

All of it works without any client's key: every snapshot's chunk rows exist, every chunk row
matches the trailer of its pack, every pack exists with its indexed size, and with read_data
every blob of every pack (live or not) still matches its storage hash. Each problem names the
client, the pack and the snapshots it affects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .crypto import storage_hash_matches
from .errors import IntegrityError, NotFound, StorageError
from .pack import PackEntry, read_entries
from .pruner import LOCK_FILE, exclusive
from .repository import PACKS, ChunkLocation, ClientRecord, PackUsage, Repository
from .rowset import RowSet
from .storage import Backend

_READ_WINDOW = 8 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    client: str
    pack: str | None
    message: str
    affects: list[str]
    """Ids of the snapshots that can no longer be restored whole because of it."""

    def describe(self) -> str:
        where = f"pack {self.pack}: " if self.pack else ""
        if self.affects:
            shown = ", ".join(s[:8] for s in self.affects[:10])
            more = f" and {len(self.affects) - 10} more" if len(self.affects) > 10 else ""
            impact = f"affects {len(self.affects)} snapshot(s) of {self.client}: {shown}{more}"
        else:
            impact = f"no snapshot of {self.client} refers to it"
        return f"{where}{self.message}; {impact}"

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "pack": self.pack,
            "message": self.message,
            "affects": self.affects,
        }


@dataclass
class CheckReport:
    read_data: bool
    clients: int = 0
    snapshots: int = 0
    packs: int = 0
    chunks: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    unindexed_packs: list[str] = field(default_factory=list)
    """Pack files no index row names: unreferenced data the next prune reclaims."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "read_data": self.read_data,
            "clients": self.clients,
            "snapshots": self.snapshots,
            "packs": self.packs,
            "chunks": self.chunks,
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
            "problems": [problem.to_json() for problem in self.problems],
            "unindexed_packs": self.unindexed_packs,
        }


def read_trailer(backend: Backend, name: str, size: int) -> list[PackEntry]:
    """A pack's entries, read from its header and trailer only; IntegrityError if malformed."""
    return read_entries(lambda offset, length: backend.get_range(PACKS, name, offset, length), size)


def _windows(entries: list[PackEntry]) -> list[list[PackEntry]]:
    """Entries grouped so that each group is read with one request of bounded size."""
    groups: list[list[PackEntry]] = []
    for entry in sorted(entries, key=lambda e: e.offset):
        if groups:
            first = groups[-1][0]
            if entry.offset + entry.length - first.offset <= _READ_WINDOW:
                groups[-1].append(entry)
                continue
        groups.append([entry])
    return groups


class Checker:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.backend = repo.backend

    def run(self, read_data: bool = False) -> CheckReport:
        """Check every client. Prunes wait meanwhile (a repack would move data under the
        check); backups go on, and what they add is either complete or not yet visible."""
        report = CheckReport(read_data)
        with exclusive(self.repo.data_dir / LOCK_FILE):
            for client in self.repo.list_clients():
                report.clients += 1
                _ClientCheck(self, client, report).run()
            stored = set(self.backend.list(PACKS))
            report.unindexed_packs = sorted(stored - self.repo.pack_names())
        return report


class _ClientCheck:
    """One client's part of the check. Problems found in packs name chunk rows; which
    snapshots those rows break is resolved at the end, in one pass over the snapshots, so only
    one snapshot's references are in memory at a time."""

    def __init__(self, checker: Checker, client: ClientRecord, report: CheckReport) -> None:
        self.repo = checker.repo
        self.backend = checker.backend
        self.client = client
        self.report = report
        self.found: list[tuple[str | None, str, set[int]]] = []

    def _problem(self, pack: str | None, message: str, rowids: set[int]) -> None:
        self.found.append((pack, message, rowids))

    def run(self) -> None:
        self._check_snapshots()
        for pack in self.repo.pack_usage(self.client.id):
            self.report.packs += 1
            self._check_pack(pack)
        self._report_found()

    def _report_found(self) -> None:
        if not self.found:
            return
        affects: list[list[str]] = [[] for _ in self.found]
        for snapshot_id, refs in self.repo.iter_snapshot_refs(self.client.id):
            referenced = RowSet(refs)
            for index, (_, _, rowids) in enumerate(self.found):
                if any(rowid in referenced for rowid in rowids):
                    affects[index].append(snapshot_id)
        for (pack, message, _), snapshots in zip(self.found, affects, strict=True):
            self.report.problems.append(Problem(self.client.name, pack, message, sorted(snapshots)))

    def _snapshot_problem(self, snapshot_id: str, message: str) -> None:
        self.report.problems.append(Problem(self.client.name, None, message, [snapshot_id]))

    def _check_snapshots(self) -> None:
        # Snapshots first, chunk rows second: a backup committing meanwhile adds rows before
        # its snapshot, so every listed snapshot's rows are among those read after it.
        roots = {snap.id: snap.root for snap in self.repo.list_snapshots(self.client.id)}
        rowids = RowSet(self.repo.chunk_rowids(self.client.id))
        self.report.chunks += len(rowids)
        for snapshot_id in roots:
            self.report.snapshots += 1
            referenced = RowSet(self.repo.snapshot_refs(self.client.id, snapshot_id))
            missing = sum(1 for rowid in referenced if rowid not in rowids)
            if missing:
                self._snapshot_problem(
                    snapshot_id,
                    f"snapshot {snapshot_id[:8]} references {missing} chunk(s) that "
                    "are not in the index",
                )
            root = self.repo.lookup(self.client.id, roots[snapshot_id])
            if len(root) != len(roots[snapshot_id]) or not all(
                rowid in referenced for rowid in root.values()
            ):
                self._snapshot_problem(
                    snapshot_id,
                    f"snapshot {snapshot_id[:8]} has a root tree outside its references",
                )

    def _check_pack(self, pack: PackUsage) -> None:
        rows = self.repo.pack_chunks(pack.id)
        rowids = {row.rowid for row in rows}
        try:
            size = self.backend.size(PACKS, pack.name)
            if size != pack.size:
                raise IntegrityError(f"pack is {size} bytes, the index says {pack.size}")
            entries = read_trailer(self.backend, pack.name, size)
        except (IntegrityError, NotFound, StorageError) as exc:
            self._problem(pack.name, str(exc), rowids)
            return
        by_id = {entry.chunk_id: entry for entry in entries}
        for row in rows:
            entry = by_id.get(row.chunk_id)
            if (
                entry is None
                or (entry.offset, entry.length) != (row.offset, row.length)
                or entry.storage_hash not in (None, row.storage_hash)
            ):
                self._problem(
                    pack.name,
                    f"index row of chunk {row.chunk_id.hex()[:16]} disagrees with the pack's "
                    "trailer",
                    {row.rowid},
                )
        if self.report.read_data:
            self._read_blobs(pack.name, entries, {row.chunk_id: row for row in rows})

    def _read_blobs(
        self, name: str, entries: list[PackEntry], indexed: dict[bytes, ChunkLocation]
    ) -> None:
        """Each blob against its storage hash: the index's, or the trailer's in a pack of the
        first format (which also covers a duplicate the index points elsewhere for)."""
        for group in _windows(entries):
            start = group[0].offset
            end = max(e.offset + e.length for e in group)
            try:
                window = self.backend.get_range(PACKS, name, start, end - start)
            except (NotFound, StorageError) as exc:
                self._problem(
                    name,
                    f"cannot read bytes {start}-{end}: {exc}",
                    {indexed[e.chunk_id].rowid for e in group if e.chunk_id in indexed},
                )
                continue
            for entry in group:
                row = indexed.get(entry.chunk_id)
                expected = entry.storage_hash or (row.storage_hash if row is not None else None)
                if expected is None:
                    # Unindexed (its chunk is indexed in another pack): garbage for the next
                    # prune, with nothing to compare it with.
                    continue
                blob = window[entry.offset - start : entry.offset - start + entry.length]
                self.report.blobs_read += 1
                self.report.bytes_read += entry.length
                if not storage_hash_matches(blob, expected):
                    self._problem(
                        name,
                        f"chunk {entry.chunk_id.hex()[:16]} at offset {entry.offset} fails its "
                        "storage hash",
                        {row.rowid} if row is not None else set(),
                    )
