"""Rows of the fleet status table, built from what the server reports."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from rpybackup_core.client import SnapshotInfo
from rpybackup_core.retention import RetentionPolicy, format_duration
from rpybackup_core.status import ClientStatus

ONLINE = "online"
WATCHING = "watching"
IDLE = "idle"
FAILING = "failing"

ONLINE_SECONDS = 15 * 60
"""A client the server heard from this recently counts as online (watch mode reports every
five minutes)."""


@dataclass(frozen=True)
class FleetRow:
    name: str
    state: str
    last_backup: str | None
    last_result: str
    snapshots: int
    stored_bytes: int | None
    retention: str
    retention_is_default: bool = False

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


def _age(iso: str | None, now: datetime.datetime) -> float | None:
    if not iso:
        return None
    moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (now - moment).total_seconds()


def client_state(status: ClientStatus, now: datetime.datetime) -> str:
    """failing beats everything (the admin must see it); then watching, if the client said so
    and its heartbeat is recent (a watcher that died stops counting); then online by last
    contact."""
    if status.last_result not in (None, "ok"):
        return FAILING
    age = _age(status.last_seen, now)
    recent = age is not None and age <= ONLINE_SECONDS
    if recent and status.activity == WATCHING:
        return WATCHING
    return ONLINE if recent else IDLE


_RULES = (
    ("keep_last", "last"),
    ("keep_hourly", "h"),
    ("keep_daily", "d"),
    ("keep_weekly", "w"),
    ("keep_monthly", "mo"),
    ("keep_yearly", "y"),
)


def short_policy(policy: RetentionPolicy) -> str:
    """``last 10 · 7d 4w 12mo`` for a table cell; the long form is on the pruning screen."""
    if policy.is_empty:
        return "keep all"
    counts = [
        f"{getattr(policy, name)}{unit}" for name, unit in _RULES[1:] if getattr(policy, name)
    ]
    parts = [f"last {policy.keep_last}"] if policy.keep_last else []
    if counts:
        parts.append(" ".join(counts))
    if policy.keep_within:
        parts.append(f"within {format_duration(policy.keep_within)}")
    return " · ".join(parts)


def status_row(status: ClientStatus, now: datetime.datetime) -> FleetRow:
    policy = short_policy(status.retention.policy)
    return FleetRow(
        name=status.name,
        state=client_state(status, now),
        last_backup=status.last_backup,
        last_result=status.last_result or "never",
        snapshots=status.snapshots,
        stored_bytes=status.stored_bytes,
        retention=policy,
        retention_is_default=status.retention.is_default,
    )
