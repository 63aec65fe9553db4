"""Retention as a pure function: which snapshots a policy keeps, and the rules that keep each.

The semantics are restic's ``forget``: snapshots are walked newest first; every rule counts on
its own; a period rule (hourly ... yearly) keeps the newest snapshot of each period until its
count is spent, and while it still has counts left it also keeps the oldest snapshot of all, so
a young history is kept as long as possible. ``keep_within`` keeps every snapshot taken within
that duration of the *newest* snapshot (not of the clock), so a client that stopped backing up
does not lose its last snapshots to the calendar. Periods are UTC. An empty policy keeps
everything. Deleting and garbage collection live in pruner.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from .errors import InvalidRequest

_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: int) -> str:
    """The shortest unit form, e.g. ``1w3d`` or ``36h``: what parse_duration reads back."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _utc(stamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC)


def parse_utc(text: str) -> float:
    """Epoch seconds of an ISO 8601 time as the JSON documents write it (``...Z``)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: int = 0
    """Seconds; 0 means the rule is off."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"retention {item.name} must be a whole number >= 0")

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, item.name) for item in fields(self))

    def describe(self) -> str:
        """One line for tables: ``last 10, daily 7, within 2d`` or ``keep everything``."""
        parts = [
            f"{item.name.removeprefix('keep_')} {getattr(self, item.name)}"
            for item in fields(self)
            if item.name != "keep_within" and getattr(self, item.name)
        ]
        if self.keep_within:
            parts.append(f"within {format_duration(self.keep_within)}")
        return ", ".join(parts) or "keep everything"

    def to_json(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_json(cls, doc: Any) -> RetentionPolicy:
        if not isinstance(doc, dict):
            raise InvalidRequest("a retention policy must be an object")
        names = {item.name for item in fields(cls)}
        unknown = set(doc) - names
        if unknown:
            raise InvalidRequest(f"unknown retention rule(s): {', '.join(sorted(unknown))}")
        return cls(**doc)


DEFAULT_POLICY = RetentionPolicy(
    keep_last=10, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3
)


class Dated(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def time(self) -> float: ...


@dataclass(frozen=True)
class Decision:
    id: str
    time: float
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        moment = _utc(self.time).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"id": self.id, "time": moment, "reasons": list(self.reasons)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Decision:
        return cls(str(doc["id"]), parse_utc(str(doc["time"])), tuple(doc.get("reasons", ())))


@dataclass(frozen=True)
class Plan:
    """Newest first, like ``restic forget`` prints them."""

    keep: list[Decision]
    remove: list[Decision]

    def to_json(self) -> dict[str, Any]:
        return {
            "keep": [d.to_json() for d in self.keep],
            "remove": [d.to_json() for d in self.remove],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        return cls(
            [Decision.from_json(d) for d in doc.get("keep", [])],
            [Decision.from_json(d) for d in doc.get("remove", [])],
        )


def _hour(stamp: float) -> tuple[int, ...]:
    t = _utc(stamp)
    return (t.year, t.month, t.day, t.hour)


def _day(stamp: float) -> tuple[int, ...]:
    t = _utc(stamp)
    return (t.year, t.month, t.day)


def _week(stamp: float) -> tuple[int, ...]:
    iso = _utc(stamp).isocalendar()
    return (iso.year, iso.week)


def _month(stamp: float) -> tuple[int, ...]:
    t = _utc(stamp)
    return (t.year, t.month)


def _year(stamp: float) -> tuple[int, ...]:
    return (_utc(stamp).year,)


_PERIODS: tuple[tuple[str, str, Callable[[float], tuple[int, ...]]], ...] = (
    ("keep_hourly", "hourly", _hour),
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
    ("keep_yearly", "yearly", _year),
)


def apply_policy(snapshots: Sequence[Dated], policy: RetentionPolicy) -> Plan:
    """Split snapshots into keep and remove; equal times count the later-listed one as newer."""
    ordered = [snap for _, snap in sorted(enumerate(snapshots), key=lambda p: (p[1].time, p[0]))]
    ordered.reverse()
    if policy.is_empty:
        everything = [Decision(s.id, s.time, ("no retention policy",)) for s in ordered]
        return Plan(everything, [])
    counts = {name: getattr(policy, name) for name, _, _ in _PERIODS}
    last_seen: dict[str, tuple[int, ...] | None] = {name: None for name, _, _ in _PERIODS}
    newest = ordered[0].time if ordered else 0.0
    keep: list[Decision] = []
    remove: list[Decision] = []
    for position, snap in enumerate(ordered):
        reasons: list[str] = []
        if position < policy.keep_last:
            reasons.append("last snapshot")
        if policy.keep_within and snap.time >= newest - policy.keep_within:
            reasons.append(f"within {format_duration(policy.keep_within)}")
        for name, label, bucket in _PERIODS:
            if counts[name] <= 0:
                continue
            period = bucket(snap.time)
            if period != last_seen[name] or position == len(ordered) - 1:
                last_seen[name] = period
                counts[name] -= 1
                reasons.append(f"{label} snapshot")
        decision = Decision(snap.id, snap.time, tuple(reasons))
        (keep if reasons else remove).append(decision)
    return Plan(keep, remove)
