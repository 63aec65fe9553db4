"""How the main screens look at 80x24 (pytest-textual-snapshot; --snapshot-update to accept).

Everything shown is fixed by the fixtures: backdated snapshots, seeded file contents, paths
under a home directory shown as ~, no random ids on screen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, TextArea, Tree

from rpybackup_core.admin import AdminClient
from rpybackup_core.config import ClientConfig
from rpybackup_core.retention import RetentionPolicy
from rpybackup_tui.app import ConsoleApp
from rpybackup_tui.data.log_buffer import LogBuffer

from .conftest import table_settled, text_of, wait_for

SIZE = (80, 24)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_fleet_home_as_admin(server, admin: ClientConfig, snap_compare) -> None:
    async def loaded(pilot: Pilot[None]) -> None:
        table = pilot.app.screen.query_one("#fleet", DataTable)
        await table_settled(pilot, table, 3, "every client")

    assert snap_compare(ConsoleApp(admin), terminal_size=SIZE, run_before=loaded)


def test_config_editor_with_a_field_marked(server, alice: ClientConfig, snap_compare) -> None:
    async def edited(pilot: Pilot[None]) -> None:
        await pilot.press("2")
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.query("#server"), "the editor")
        # The real address has a random port and the sources a random temp path.
        screen.query_one("#server", Input).value = "backup.example.net:7443"
        screen.query_one("#sources", TextArea).text = "~/sample"
        screen.query_one("#quiet", Input).value = "soon"
        await pilot.press("escape")

    assert snap_compare(ConsoleApp(alice), terminal_size=SIZE, run_before=edited)


def test_backup_browser_with_a_snapshot_open(server, alice: ClientConfig, snap_compare) -> None:
    async def opened(pilot: Pilot[None]) -> None:
        await pilot.press("3")
        screen = pilot.app.screen
        table = screen.query_one("#snapshots", DataTable)
        await table_settled(pilot, table, 1, "the snapshot list")
        table.focus()
        await pilot.press("enter")
        tree = screen.query_one("#files", Tree)
        await wait_for(pilot, lambda: tree.root.children, "the top folder")

    assert snap_compare(ConsoleApp(alice), terminal_size=SIZE, run_before=opened)


def test_runs_with_the_last_run(server, alice: ClientConfig, snap_compare) -> None:
    async def listed(pilot: Pilot[None]) -> None:
        await pilot.press("4")
        table = pilot.app.screen.query_one("#runs", DataTable)
        await table_settled(pilot, table, 1, "the last runs")

    assert snap_compare(ConsoleApp(alice), terminal_size=SIZE, run_before=listed)


def test_pruning_dry_run(server, admin: ClientConfig, snap_compare) -> None:
    AdminClient(admin).set_retention("bob", RetentionPolicy(keep_last=2, keep_daily=1))

    async def planned(pilot: Pilot[None]) -> None:
        await pilot.press("5")
        app = pilot.app
        select = app.screen.query_one("#prune-client", Select)
        await wait_for(pilot, lambda: select.value == "alice", "the client list")
        select.value = "bob"
        await wait_for(pilot, lambda: text_of(app, "#policy").startswith("bob"), "the plan")
        plan = app.screen.query_one("#plan", DataTable)
        await table_settled(pilot, plan, 6, "the plan's rows")
        plan.focus()

    assert snap_compare(ConsoleApp(admin), terminal_size=SIZE, run_before=planned)


def test_logs_filtered_to_warnings(server, alice: ClientConfig, snap_compare) -> None:
    buffer = LogBuffer()
    for level, source, message in [
        (logging.INFO, "rpybackup_core.archiver", "backing up ~/sample"),
        (logging.WARNING, "rpybackup_core.archiver", "skipped ~/sample/locked: Permission denied"),
        (logging.ERROR, "rpybackup_tui.app", "fleet: cannot reach the server at 10.0.0.5:7443"),
    ]:
        record = logging.LogRecord(source, level, __file__, 1, message, None, None)
        record.created = 1_767_355_200.0
        buffer.emit(record)

    async def filtered(pilot: Pilot[None]) -> None:
        await pilot.press("6", "w")

    assert snap_compare(ConsoleApp(alice, buffer), terminal_size=SIZE, run_before=filtered)
