"""Pruning: the policy, a dry run that says why, a confirmed prune, and the prune history."""

from __future__ import annotations

from textual.widgets import DataTable, Input, Select

from rpybackup_core.admin import AdminClient
from rpybackup_core.retention import RetentionPolicy
from rpybackup_tui.app import ConsoleApp

from .conftest import drive, outage, text_of, wait_for


def plan_rows(app: ConsoleApp) -> list[tuple[str, str, str]]:
    table = app.screen.query_one("#plan", DataTable)
    rows = [table.get_row_at(i) for i in range(table.row_count)]
    return [(str(r[0]), str(getattr(r[1], "plain", r[1])), str(r[2])) for r in rows]


async def preview_bob(app: ConsoleApp, pilot) -> None:
    await pilot.press("5")
    select = app.screen.query_one("#prune-client", Select)
    await wait_for(pilot, lambda: select.value == "alice", "the client list")
    select.value = "bob"
    await wait_for(pilot, lambda: text_of(app, "#policy").startswith("bob"), "bob's dry run")


def test_dry_run_explains_then_prune_after_confirmation(server, admin) -> None:
    AdminClient(admin).set_retention("bob", RetentionPolicy(keep_last=2))

    async def scenario(app: ConsoleApp, pilot) -> None:
        await preview_bob(app, pilot)
        assert "last 2" in text_of(app, "#policy")
        rows = plan_rows(app)
        assert [r[1] for r in rows] == ["keep", "keep", "remove", "remove", "remove", "remove"]
        assert rows[0][0] == "2026-01-08 12:00:00"
        assert "last" in rows[0][2]
        assert rows[-1] == ("2026-01-03 12:00:00", "remove", "no rule keeps it")
        assert "4 to remove" in text_of(app, "#prune-status")
        assert len(server.client("bob").snapshots()) == 6, "a dry run changes nothing"

        await pilot.press("p")
        await wait_for(pilot, lambda: app.screen.query("#yes"), "the confirmation")
        await pilot.press("n")
        assert len(server.client("bob").snapshots()) == 6, "no means no"

        await pilot.press("p")
        await wait_for(pilot, lambda: app.screen.query("#yes"), "the confirmation")
        await pilot.press("y")
        history = app.screen.query_one("#history", DataTable)
        await wait_for(pilot, lambda: history.row_count == 1, "the prune in the history")
        row = history.get_row_at(0)
        assert row[1:5] == ["bob", "console", "4", "2"]
        await wait_for(
            pilot, lambda: "keeps every snapshot" in text_of(app, "#prune-status"), "the fresh plan"
        )

    drive(admin, scenario)
    assert len(server.client("bob").snapshots()) == 2


def test_plain_identity_is_told_pruning_needs_an_admin(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        await pilot.press("5")
        await wait_for(
            pilot, lambda: "admin identity" in text_of(app, "#prune-status"), "the explanation"
        )
        await pilot.press("p")
        assert len(server.client("alice").snapshots()) == 1

    drive(alice, scenario)


def test_pruning_survives_a_server_restart(server, admin) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        await preview_bob(app, pilot)
        with outage(server):
            await pilot.press("d")
            await wait_for(
                pilot, lambda: "cannot reach" in text_of(app, "#prune-status"), "the outage message"
            )
        await pilot.press("d")
        await wait_for(
            pilot,
            lambda: "dry run" in text_of(app, "#prune-status"),
            "the dry run after the restart",
        )

    drive(admin, scenario)


def test_edit_a_clients_policy_then_back_to_the_server_default(server, admin) -> None:
    admin_api = AdminClient(admin)

    async def scenario(app: ConsoleApp, pilot) -> None:
        await preview_bob(app, pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.query("#keep_last"), "the policy editor")
        dialog = app.screen
        for name in ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
            dialog.query_one(f"#{name}", Input).value = "0"
        dialog.query_one("#keep_last", Input).value = "many"
        await pilot.pause()
        assert "whole number" in text_of(app, "#keep_last-error")
        await pilot.press("ctrl+s")
        assert app.screen is dialog, "a marked rule is never applied"
        dialog.query_one("#keep_last", Input).value = "1"
        dialog.query_one("#keep_within", Input).value = "3d"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "within 3d" in text_of(app, "#policy"), "the new policy")
        setting = admin_api.retention("bob")
        assert setting.policy == RetentionPolicy(keep_last=1, keep_within=3 * 86400)
        assert not setting.is_default
        await wait_for(
            pilot,
            lambda: "dry run: 2 to remove" in text_of(app, "#prune-status"),
            "the plan under the new policy",
        )

        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.query("#keep_last"), "the policy editor")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: admin_api.retention("bob").is_default, "the default back")
        assert len(server.client("bob").snapshots()) == 6, "editing a policy prunes nothing"

    drive(admin, scenario)
