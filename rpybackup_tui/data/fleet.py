"""Rows of the fleet status table, built from what the server reports."""

from __future__ import annotations

from dataclasses import dataclass

from rpybackup_core.client import SnapshotInfo

ONLINE = "online"
WATCHING = "watching"
IDLE = "idle"
FAILING = "failing"


@dataclass(frozen=True)
class FleetRow:
    name: str
    state: str
    last_backup: str | None
    last_result: str
    snapshots: int
    stored_bytes: int | None
    retention: str

    @property
    def failing(self) -> bool:
        return self.state == FAILING


@dataclass(frozen=True)
class Fleet:
    """What the home screen shows: every client for an admin, this client alone otherwise."""

    admin: bool
    rows: list[FleetRow]
    note: str = ""


def snapshot_result(snapshot: SnapshotInfo) -> str:
    errors = int(snapshot.stats.get("errors", 0) or 0)
    return f"{errors} unreadable" if errors else "ok"


def own_row(name: str, snapshots: list[SnapshotInfo]) -> FleetRow:
    """This client as seen through its own identity: it is online, since it just answered."""
    last = snapshots[-1] if snapshots else None
    result = snapshot_result(last) if last else "never"
    return FleetRow(
        name=name,
        state=FAILING if last and result != "ok" else ONLINE,
        last_backup=last.time if last else None,
        last_result=result,
        snapshots=len(snapshots),
        stored_bytes=None,
        retention="set on the server",
    )
