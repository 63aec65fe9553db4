"""The server's recent log lines over the admin API: admins only, filtered, safe to display."""

from __future__ import annotations

import logging

import pytest

from rpybackup_core.admin import AdminClient
from rpybackup_core.errors import InvalidRequest, PermissionDenied
from rpybackup_core.logs import RecentLog, setup_logging


def test_an_admin_reads_the_servers_recent_lines_by_level(server) -> None:
    admin = AdminClient(server.enroll("root", admin=True))
    server_log = logging.getLogger("rpybackup_core.server")
    server_log.warning("disk almost full \x1b[2J on /srv")
    server_log.error("pack 42 unreadable")
    warnings = admin.log_lines("WARNING")
    messages = [line.message for line in warnings]
    assert messages[-2:] == ["disk almost full \\x1b[2J on /srv", "pack 42 unreadable"]
    assert {line.level for line in warnings} <= {"WARNING", "ERROR"}
    assert [line.message for line in admin.log_lines("ERROR", limit=1)] == ["pack 42 unreadable"]


def test_a_plain_client_may_not_read_the_server_log(server) -> None:
    alice = AdminClient(server.enroll("alice"))
    with pytest.raises(PermissionDenied):
        alice.log_lines()


def test_bad_log_requests_are_refused(server) -> None:
    admin = AdminClient(server.enroll("root", admin=True))
    with pytest.raises(InvalidRequest):
        admin.log_lines("LOUD")
    with pytest.raises(InvalidRequest):
        admin.log_lines("INFO", limit=100_000)


def test_the_ring_keeps_the_newest_lines() -> None:
    ring = RecentLog(capacity=2)
    logger = logging.getLogger("rpybackup_core.test_ring")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(ring)
    try:
        for index in range(3):
            logger.info("line %d", index)
        try:
            raise OSError("no space left")
        except OSError:
            logger.exception("write failed")
    finally:
        logger.removeHandler(ring)
    assert [line.message for line in ring.lines()] == [
        "line 2",
        "write failed (OSError: no space left)",
    ]


def test_a_log_line_for_the_journal_cannot_drive_a_terminal_or_forge_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file's name in a message (a backup's "skipped ...") is escaped on stderr: no escape
    sequence reaches the terminal, no newline starts a line that looks like another record."""
    setup_logging("warning")
    logging.getLogger("rpybackup_core.archiver").warning(
        "skipped %s", "/home/x/\x1b[2Jfake\n2026-01-01 00:00:00,000 ERROR forged"
    )
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(
        "WARNING rpybackup_core.archiver: skipped /home/x/\\x1b[2Jfake\\x0a"
        "2026-01-01 00:00:00,000 ERROR forged"
    )
