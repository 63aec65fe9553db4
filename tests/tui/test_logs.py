"""The logs screen: recent lines of the console process, filtered by level, live."""

from __future__ import annotations

import logging

from textual.widgets import RichLog

from rpybackup_tui.app import ConsoleApp

from .conftest import drive, outage, text_of, wait_for


def shown(app: ConsoleApp) -> str:
    return "\n".join(line.text for line in app.screen.query_one(RichLog).lines)


def test_lines_arrive_live_and_filter_by_level(server, alice) -> None:
    probe = logging.getLogger("rpybackup_core.probe")
    probe.setLevel(logging.DEBUG)

    async def scenario(app: ConsoleApp, pilot) -> None:
        await pilot.press("6")
        probe.info("an info line")
        probe.warning("a warning line")
        probe.debug("a debug line")
        await wait_for(pilot, lambda: "a warning line" in shown(app), "the live line")
        assert "an info line" in shown(app)
        assert "a debug line" not in shown(app), "info and above by default"
        await pilot.press("w")
        assert "a warning line" in shown(app) and "an info line" not in shown(app)
        assert "warning and above" in text_of(app, "#logs-title")
        await pilot.press("d")
        assert "a debug line" in shown(app)
        await pilot.press("e")
        assert "a warning line" not in shown(app)

    drive(alice, scenario)


def test_a_failed_server_call_is_in_the_log(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        await wait_for(pilot, lambda: "connected" in text_of(app, "#fleet-status"), "first poll")
        with outage(server):
            await pilot.press("r")
            await wait_for(
                pilot, lambda: "no answer" in text_of(app, "#fleet-status"), "the failure"
            )
        await pilot.press("6", "w")
        assert "cannot reach the server" in shown(app)

    drive(alice, scenario)


def test_an_admin_reads_the_servers_log_and_it_survives_a_restart(server, admin) -> None:
    server_log = logging.getLogger("rpybackup_core.server")

    async def scenario(app: ConsoleApp, pilot) -> None:
        server_log.warning("disk 91% full")
        await pilot.press("6", "s")
        await wait_for(pilot, lambda: "disk 91% full" in shown(app), "the server's line")
        assert "Server log" in text_of(app, "#logs-title")
        with outage(server):
            await pilot.press("w")
            await wait_for(
                pilot, lambda: "retrying" in text_of(app, "#logs-title"), "the outage in the title"
            )
        server_log.warning("back after the restart")
        await wait_for(
            pilot,
            lambda: "back after the restart" in shown(app),
            "a line from the restarted server, polled",
        )
        await pilot.press("s")
        assert "Console log" in text_of(app, "#logs-title")

    drive(admin, scenario)


def test_a_plain_identity_is_told_the_server_log_needs_an_admin(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        await pilot.press("6", "s")
        await wait_for(pilot, lambda: "needs an admin identity" in shown(app), "the explanation")

    drive(alice, scenario)
