"""The home screen: the fleet's status, kept fresh, surviving a server restart."""

from __future__ import annotations

from textual.widgets import DataTable

from rpybackup_tui.app import ConsoleApp

from .conftest import drive, outage, text_of, wait_for


def cell(table: DataTable, row: str, column: int) -> str:
    value = table.get_row(row)[column]
    return getattr(value, "plain", value)


def test_plain_identity_sees_itself_with_its_last_backup(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = app.screen.query_one("#fleet", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, "the fleet table")
        assert [cell(table, "alice", c) for c in range(5)] == [
            "alice",
            "online",
            "2026-01-02 12:00",
            "ok",
            "1",
        ]
        assert "this client only" in text_of(app, "#fleet-status")

    drive(alice, scenario)


def test_admin_identity_sees_every_client_and_a_failing_one_stands_out(server, admin) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = app.screen.query_one("#fleet", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3, "every client")
        assert {str(key.value) for key in table.rows} == {"alice", "bob", "root"}
        assert cell(table, "alice", 1) == "online"
        assert cell(table, "alice", 4) == "1"
        assert cell(table, "bob", 1) == "failing"
        assert cell(table, "bob", 3) == "incomplete"
        assert cell(table, "bob", 2) == "2026-01-08 12:00"
        assert cell(table, "bob", 4) == "6"
        assert cell(table, "bob", 5) == "5.0 MiB"
        assert "(default)" not in cell(table, "bob", 6), "the table cell stays short"
        table.move_cursor(row=table.get_row_index("bob"))
        await pilot.pause()
        detail = text_of(app, "#fleet-detail")
        assert "incomplete: 1 item(s) unreadable" in detail
        assert "(the server default)" in detail
        bob_name = table.get_row("bob")[0]
        assert "bold" in str(bob_name.style), "a failing client must stand out"
        assert "every client" in text_of(app, "#fleet-status")

    drive(admin, scenario)


def test_the_fleet_refreshes_on_its_own_and_shows_a_watching_client(server, admin) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = app.screen.query_one("#fleet", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3, "every client")
        server.enroll("carol")
        await wait_for(pilot, lambda: table.row_count == 4, "the new client, unasked")
        server.client("alice").report_state("watching", "2026-01-02T12:00:00Z", "ok")
        await wait_for(pilot, lambda: cell(table, "alice", 1) == "watching", "alice watching")
        server.client("alice").report_state("idle", "2026-01-02T12:00:00Z", "ok")
        await wait_for(pilot, lambda: cell(table, "alice", 1) == "online", "alice stopped")

    drive(admin, scenario)


def test_a_stopped_server_is_a_message_and_the_console_recovers(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = app.screen.query_one("#fleet", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, "the fleet table")
        with outage(server):
            await pilot.press("r")
            await wait_for(
                pilot, lambda: "no answer" in text_of(app, "#fleet-status"), "the outage message"
            )
            assert "cannot reach the server" in text_of(app, "#fleet-status")
            assert table.row_count == 1, "the last known state stays on screen"
        await pilot.press("r")
        await wait_for(pilot, lambda: "connected" in text_of(app, "#fleet-status"), "reconnection")

    drive(alice, scenario)
