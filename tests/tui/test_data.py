"""The console's plain-Python layer: states, policies, form checks, log ring, progress pacing."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest

from rpybackup_core.config import ClientConfig
from rpybackup_core.errors import ConfigError
from rpybackup_core.progress import Progress
from rpybackup_core.pruner import RetentionSetting
from rpybackup_core.retention import RetentionPolicy
from rpybackup_core.status import ClientStatus
from rpybackup_tui.data.config_form import ConfigForm, apply_form, check_form
from rpybackup_tui.data.fleet import client_state, short_policy
from rpybackup_tui.data.format import display_path, human_bytes
from rpybackup_tui.data.log_buffer import LogBuffer
from rpybackup_tui.data.retention_form import check_rule, form_values, policy_from
from rpybackup_tui.messages import ProgressUpdate, progress_poster

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def status(
    last_seen_minutes_ago: float | None, result: str | None = "ok", activity: str | None = None
) -> ClientStatus:
    seen = (
        None
        if last_seen_minutes_ago is None
        else (NOW - datetime.timedelta(minutes=last_seen_minutes_ago)).isoformat()
    )
    return ClientStatus(
        name="c",
        admin=False,
        state="enrolled",
        enrolled=None,
        last_seen=seen,
        snapshots=1,
        last_backup=None,
        last_result=result,
        stored_bytes=0,
        chunk_bytes=0,
        retention=RetentionSetting("c", RetentionPolicy(), True),
        last_prune=None,
        activity=activity,
    )


@pytest.mark.parametrize(
    ("seen", "result", "activity", "expected"),
    [
        (1, "ok", None, "online"),
        (1, None, None, "online"),
        (60, "ok", None, "idle"),
        (None, None, None, "idle"),
        (1, "ok", "watching", "watching"),
        (60, "ok", "watching", "idle"),
        (1, "ok", "idle", "online"),
        (1, "incomplete: 2 item(s) unreadable", "watching", "failing"),
        (600, "server unreachable", None, "failing"),
    ],
)
def test_client_state(seen, result, activity, expected) -> None:
    assert client_state(status(seen, result, activity), NOW) == expected


def test_short_policy() -> None:
    assert short_policy(RetentionPolicy()) == "keep all"
    assert short_policy(RetentionPolicy(keep_last=3)) == "last 3"
    assert short_policy(RetentionPolicy(keep_daily=7, keep_monthly=12, keep_within=172800)) == (
        "7d 12mo · within 2d"
    )


def test_human_bytes_and_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert display_path(tmp_path / "a" / "b.toml") == "~/a/b.toml"
    assert display_path(f"{tmp_path}x/c") == f"{tmp_path}x/c"


def form(tmp_path: Path, **fields: str) -> ConfigForm:
    values = {
        "server": "backup.example:7443",
        "sources": str(tmp_path),
        "excludes": "",
        "quiet": "10s",
        "max_delay": "10m",
    } | fields
    return ConfigForm(**values)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("server", "", "HOST:PORT"),
        ("server", "host:port", "non-numeric port"),
        ("server", "host:99999", "out of range"),
        ("sources", "relative", "absolute path"),
        ("sources", "/no/such/dir/anywhere", "does not exist"),
        ("quiet", "0s", "between 1s and 24h"),
        ("quiet", "2d", "between 1s and 24h"),
        ("quiet", "later", "not a duration"),
        ("max_delay", "8d", "between 1s and 7d"),
        ("max_delay", "5s", "shorter than the quiet period"),
    ],
)
def test_each_bad_field_gets_its_own_message(tmp_path: Path, field, value, message) -> None:
    messages = check_form(form(tmp_path, **{field: value}))
    assert list(messages) == [field]
    assert message in messages[field]


def test_apply_form_keeps_the_identity_and_refuses_bad_input(tmp_path: Path) -> None:
    config = ClientConfig(
        path=tmp_path / "c.toml", server="old:1", fingerprint="f", name="n", token="t", key="k"
    )
    updated = apply_form(config, form(tmp_path, excludes="*.tmp\n\n *.bak \n", quiet="1m"))
    assert (updated.server, updated.excludes, updated.quiet_seconds) == (
        "backup.example:7443",
        ["*.tmp", "*.bak"],
        60,
    )
    assert (updated.name, updated.token, updated.key) == ("n", "t", "k")
    with pytest.raises(ConfigError, match="quiet"):
        apply_form(config, form(tmp_path, quiet="x"))


def test_log_buffer_keeps_the_newest_lines_and_filters(tmp_path: Path) -> None:
    buffer = LogBuffer(capacity=3)
    logger = logging.getLogger("rpybackup_tui.test_ring")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(buffer)
    try:
        for index in range(5):
            logger.info("line %d", index)
        logger.error("broken")
    finally:
        logger.removeHandler(buffer)
    assert [line.message for line in buffer.lines()] == ["line 3", "line 4", "broken"]
    assert [line.message for line in buffer.lines("ERROR")] == ["broken"]


def test_progress_is_paced_and_the_final_event_always_arrives() -> None:
    posted: list[ProgressUpdate] = []
    report = progress_poster(lambda m: posted.append(m) or True, "backup", None, per_second=1)
    progress = Progress("backup")
    for _ in range(10_000):
        progress.bytes_done += 1
        report(progress)
    progress.phase = "done"
    report(progress)
    assert 2 <= len(posted) <= 3
    assert posted[-1].progress.phase == "done"
    assert posted[-1].progress.bytes_done == 10_000
    assert posted[0].progress is not progress, "a copy travels, not the live object"


def test_retention_form_round_trip_and_messages() -> None:
    policy = RetentionPolicy(keep_last=3, keep_daily=7, keep_within=2 * 86400)
    values = form_values(policy)
    assert values["keep_within"] == "2d" and values["keep_hourly"] == "0"
    assert policy_from(values) == policy
    assert policy_from({**values, "keep_within": "", "keep_daily": " "}) == RetentionPolicy(
        keep_last=3
    )
    assert "whole number" in check_rule("keep_last", "-1")
    assert "whole number" in check_rule("keep_daily", "1000001")
    assert "not a duration" in check_rule("keep_within", "soon")
    with pytest.raises(ConfigError, match="keep_weekly"):
        policy_from({**values, "keep_weekly": "x"})
