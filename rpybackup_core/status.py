"""Every client's status, as the server sees it: for `status`, the console and scripts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .pruner import Pruner, PruneRecord, RetentionSetting
from .repository import ClientRecord, Repository, SnapshotRecord, iso_time


def backup_result(snapshot: SnapshotRecord | None, report: dict[str, Any] | None) -> str | None:
    """The result of the client's last run: what it reported itself (watch mode reports
    failures too) if that is newer than its newest snapshot, else ``ok`` or how many items the
    newest snapshot had to skip; None before any backup."""
    newest = iso_time(snapshot.time) if snapshot else None
    if report and report["last_result"] and (newest is None or report["last_report"] > newest):
        return str(report["last_result"])
    if snapshot is None:
        return None
    errors = snapshot.stats.get("errors", 0)
    if isinstance(errors, int) and errors > 0:
        return f"incomplete: {errors} item(s) unreadable"
    return "ok"


def client_state(client: ClientRecord) -> str:
    if client.revoked:
        return "revoked"
    return "enrolled" if client.enrolled else "pending"


@dataclass(frozen=True)
class ClientStatus:
    name: str
    admin: bool
    state: str
    enrolled: str | None
    last_seen: str | None
    snapshots: int
    last_backup: str | None
    last_result: str | None
    stored_bytes: int
    """Pack bytes on the server's storage: the client's data after dedup and compression."""
    chunk_bytes: int
    retention: RetentionSetting
    last_prune: PruneRecord | None
    activity: str | None = None
    """What a watching client last reported doing (``watching``, ``idle``); None otherwise."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "admin": self.admin,
            "state": self.state,
            "enrolled": self.enrolled,
            "last_seen": self.last_seen,
            "snapshots": self.snapshots,
            "last_backup": self.last_backup,
            "last_result": self.last_result,
            "stored_bytes": self.stored_bytes,
            "chunk_bytes": self.chunk_bytes,
            "retention": self.retention.to_json(),
            "last_prune": self.last_prune.to_json() if self.last_prune else None,
            "activity": self.activity,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClientStatus:
        prune = doc.get("last_prune")
        return cls(
            name=str(doc["name"]),
            admin=bool(doc["admin"]),
            state=str(doc["state"]),
            enrolled=doc.get("enrolled"),
            last_seen=doc.get("last_seen"),
            snapshots=int(doc["snapshots"]),
            last_backup=doc.get("last_backup"),
            last_result=doc.get("last_result"),
            stored_bytes=int(doc["stored_bytes"]),
            chunk_bytes=int(doc["chunk_bytes"]),
            retention=RetentionSetting.from_json(doc["retention"]),
            last_prune=PruneRecord.from_json(prune) if prune else None,
            activity=doc.get("activity"),
        )


@dataclass(frozen=True)
class ServerStatus:
    clients: list[ClientStatus]

    def to_json(self) -> dict[str, Any]:
        return {"clients": [client.to_json() for client in self.clients]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ServerStatus:
        return cls([ClientStatus.from_json(item) for item in doc.get("clients", [])])


def collect_status(repo: Repository, pruner: Pruner) -> ServerStatus:
    clients = []
    reports = repo.client_states()
    for client in repo.list_clients():
        report = reports.get(client.id)
        snapshots = repo.list_snapshots(client.id)
        newest = snapshots[-1] if snapshots else None
        stats = repo.chunk_stats(client.id)
        history = pruner.history(client.name, limit=1)
        clients.append(
            ClientStatus(
                name=client.name,
                admin=client.admin,
                state=client_state(client),
                enrolled=iso_time(client.enrolled) if client.enrolled else None,
                last_seen=iso_time(client.last_seen) if client.last_seen else None,
                snapshots=len(snapshots),
                last_backup=iso_time(newest.time) if newest else None,
                last_result=backup_result(newest, report),
                stored_bytes=stats["stored_bytes"],
                chunk_bytes=stats["chunk_bytes"],
                retention=pruner.retention(client),
                last_prune=history[0] if history else None,
                activity=report["state"] if report else None,
            )
        )
    return ServerStatus(clients)
