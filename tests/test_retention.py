"""The retention plan, checked against a table of golden cases (restic forget semantics, UTC)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pytest

from rpybackup_core.errors import InvalidRequest
from rpybackup_core.retention import (
    DEFAULT_POLICY,
    Plan,
    RetentionPolicy,
    apply_policy,
    format_duration,
)


@dataclass(frozen=True)
class Snap:
    id: str
    time: float


def snaps(*stamps: str) -> list[Snap]:
    """Snapshots named by their own UTC time, e.g. ``2026-01-05T10:00``."""
    return [
        Snap(s, datetime.datetime.fromisoformat(s).replace(tzinfo=datetime.UTC).timestamp())
        for s in stamps
    ]


DAYS_TWICE = [f"2026-03-0{d}T{h}:00" for d in range(1, 6) for h in ("08", "20")]

# (name, snapshots oldest first, policy, {kept id: reasons}); everything else must be removed.
GOLDEN = [
    (
        "empty policy keeps everything",
        snaps("2026-01-01T00:00", "2026-01-02T00:00"),
        RetentionPolicy(),
        {"2026-01-02T00:00": ["no retention policy"], "2026-01-01T00:00": ["no retention policy"]},
    ),
    ("no snapshots, nothing to do", [], RetentionPolicy(keep_last=3), {}),
    (
        "last two",
        snaps("2026-01-01T00:00", "2026-01-02T00:00", "2026-01-03T00:00"),
        RetentionPolicy(keep_last=2),
        {"2026-01-03T00:00": ["last snapshot"], "2026-01-02T00:00": ["last snapshot"]},
    ),
    (
        "newest of each of the last three days",
        snaps(*DAYS_TWICE),
        RetentionPolicy(keep_daily=3),
        {
            "2026-03-05T20:00": ["daily snapshot"],
            "2026-03-04T20:00": ["daily snapshot"],
            "2026-03-03T20:00": ["daily snapshot"],
        },
    ),
    (
        "counts left over keep the oldest snapshot too",
        snaps("2026-03-01T08:00", "2026-03-01T20:00", "2026-03-02T08:00", "2026-03-02T20:00"),
        RetentionPolicy(keep_daily=7),
        {
            "2026-03-02T20:00": ["daily snapshot"],
            "2026-03-01T20:00": ["daily snapshot"],
            "2026-03-01T08:00": ["daily snapshot"],
        },
    ),
    (
        "hours",
        snaps("2026-01-01T10:05", "2026-01-01T10:40", "2026-01-01T11:10", "2026-01-01T11:50"),
        RetentionPolicy(keep_hourly=2),
        {"2026-01-01T11:50": ["hourly snapshot"], "2026-01-01T10:40": ["hourly snapshot"]},
    ),
    (
        "ISO weeks across the year end",
        snaps(
            "2025-12-27T12:00",
            "2025-12-28T12:00",
            "2025-12-29T12:00",
            "2026-01-01T12:00",
            "2026-01-05T12:00",
        ),
        RetentionPolicy(keep_weekly=3),
        {
            "2026-01-05T12:00": ["weekly snapshot"],
            "2026-01-01T12:00": ["weekly snapshot"],
            "2025-12-28T12:00": ["weekly snapshot"],
        },
    ),
    (
        "months",
        snaps("2026-01-31T12:00", "2026-02-01T12:00", "2026-02-28T12:00", "2026-03-15T12:00"),
        RetentionPolicy(keep_monthly=2),
        {"2026-03-15T12:00": ["monthly snapshot"], "2026-02-28T12:00": ["monthly snapshot"]},
    ),
    (
        "years split at midnight UTC",
        snaps("2024-12-31T23:59", "2025-01-01T00:00", "2025-06-01T00:00"),
        RetentionPolicy(keep_yearly=2),
        {"2025-06-01T00:00": ["yearly snapshot"], "2024-12-31T23:59": ["yearly snapshot"]},
    ),
    (
        "within counts back from the newest snapshot, boundary included",
        snaps(
            "2026-03-01T12:00",
            "2026-03-08T11:59",
            "2026-03-08T12:00",
            "2026-03-09T12:00",
            "2026-03-10T12:00",
        ),
        RetentionPolicy(keep_within=2 * 86400),
        {
            "2026-03-10T12:00": ["within 2d"],
            "2026-03-09T12:00": ["within 2d"],
            "2026-03-08T12:00": ["within 2d"],
        },
    ),
    (
        "each rule counts on its own",
        snaps("2026-01-03T12:00", "2026-01-04T12:00", "2026-01-05T12:00"),
        RetentionPolicy(keep_daily=1, keep_weekly=2),
        {
            "2026-01-05T12:00": ["daily snapshot", "weekly snapshot"],
            "2026-01-04T12:00": ["weekly snapshot"],
        },
    ),
    (
        "every reason is listed",
        snaps("2026-01-01T00:00", "2026-01-02T00:00"),
        RetentionPolicy(keep_last=1, keep_daily=1, keep_within=3600),
        {"2026-01-02T00:00": ["last snapshot", "within 1h", "daily snapshot"]},
    ),
]


@pytest.mark.parametrize(
    ("snapshots", "policy", "kept"), [case[1:] for case in GOLDEN], ids=[case[0] for case in GOLDEN]
)
def test_golden_plans(
    snapshots: list[Snap], policy: RetentionPolicy, kept: dict[str, list[str]]
) -> None:
    plan = apply_policy(snapshots, policy)
    assert {d.id: list(d.reasons) for d in plan.keep} == kept
    assert {d.id for d in plan.remove} == {s.id for s in snapshots} - set(kept)
    assert all(d.reasons == () for d in plan.remove)


def test_plan_lists_newest_first() -> None:
    plan = apply_policy(snaps(*DAYS_TWICE), RetentionPolicy(keep_daily=3))
    assert [d.id for d in plan.keep] == sorted((d.id for d in plan.keep), reverse=True)
    assert [d.id for d in plan.remove] == sorted((d.id for d in plan.remove), reverse=True)


def test_equal_times_count_the_later_listed_snapshot_as_newer() -> None:
    plan = apply_policy([Snap("a", 100.0), Snap("b", 100.0)], RetentionPolicy(keep_last=1))
    assert [d.id for d in plan.keep] == ["b"]
    assert [d.id for d in plan.remove] == ["a"]


def test_input_order_does_not_matter() -> None:
    ordered = snaps(*DAYS_TWICE)
    shuffled = ordered[5:] + ordered[:5]
    policy = RetentionPolicy(keep_daily=2, keep_last=1)
    assert apply_policy(shuffled, policy) == apply_policy(ordered, policy)


def test_any_non_empty_policy_keeps_the_newest() -> None:
    history = snaps(*DAYS_TWICE)
    for rule in (
        "keep_last",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "keep_within",
    ):
        plan = apply_policy(history, RetentionPolicy(**{rule: 1}))
        assert plan.keep[0].id == "2026-03-05T20:00", rule


def test_plan_round_trips_through_json() -> None:
    plan = apply_policy(snaps(*DAYS_TWICE), RetentionPolicy(keep_daily=3))
    assert Plan.from_json(plan.to_json()) == plan


def test_policy_json_and_description() -> None:
    policy = RetentionPolicy(keep_last=3, keep_within=36 * 3600)
    assert RetentionPolicy.from_json(policy.to_json()) == policy
    assert policy.describe() == "last 3, within 1d12h"
    assert RetentionPolicy().describe() == "keep everything"
    assert not DEFAULT_POLICY.is_empty


@pytest.mark.parametrize(
    "doc",
    [
        {"keep_daily": -1},
        {"keep_daily": "3"},
        {"keep_daily": True},
        {"keep_forever": 1},
        ["keep_last", 1],
    ],
)
def test_bad_policies_are_refused(doc: object) -> None:
    with pytest.raises(InvalidRequest):
        RetentionPolicy.from_json(doc)


def test_format_duration() -> None:
    assert format_duration(90) == "1m30s"
    assert format_duration(8 * 86400) == "1w1d"
    assert format_duration(0) == "0s"
