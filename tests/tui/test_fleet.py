"""The home screen: the fleet's status, kept fresh, surviving a server restart."""

from __future__ import annotations

from textual.widgets import DataTable, Static

from rpybackup_tui.app import ConsoleApp

from .conftest import drive, wait_for


def status_text(app: ConsoleApp) -> str:
    return str(app.screen.query_one("#fleet-status", Static).render())


def test_plain_identity_sees_itself_with_its_last_backup(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = app.screen.query_one("#fleet", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, "the fleet table")
        row = table.get_row("alice")
        assert row[0].plain == "alice"
        assert row[1].plain == "online"
        assert row[3].plain == "ok"
        assert row[4] == "1"
        assert "this client only" in status_text(app)

    drive(alice, scenario)


def test_a_stopped_server_is_a_message_and_the_console_recovers(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = app.screen.query_one("#fleet", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, "the fleet table")
        port = server.server.address[1]
        server.stop()
        await pilot.press("r")
        await wait_for(pilot, lambda: "no answer" in status_text(app), "the outage message")
        assert "cannot reach the server" in status_text(app)
        server.config.listen_port = port
        server.start()
        await pilot.press("r")
        await wait_for(pilot, lambda: "connected" in status_text(app), "reconnection")
        assert table.row_count == 1

    drive(alice, scenario)
