"""Runs: back up now with live progress, cancel, and the last runs with their outcome."""

from __future__ import annotations

import os
import re
from pathlib import Path

from textual.widgets import DataTable

from rpybackup_core.config import ClientConfig
from rpybackup_tui.app import ConsoleApp
from rpybackup_tui.widgets.progress_panel import ProgressPanel

from .conftest import drive, outage, text_of, wait_for


def outcomes(app: ConsoleApp) -> list[str]:
    table = app.screen.query_one("#runs", DataTable)
    return [str(getattr(table.get_row_at(i)[1], "plain", "")) for i in range(table.row_count)]


async def open_runs(app: ConsoleApp, pilot) -> DataTable:
    await pilot.press("4")
    table = app.screen.query_one("#runs", DataTable)
    await wait_for(pilot, lambda: table.row_count > 0, "the past runs")
    return table


def test_back_up_now_shows_progress_and_records_the_run(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        table = await open_runs(app, pilot)
        assert outcomes(app) == ["ok"]
        await pilot.press("b")
        await wait_for(pilot, lambda: len(app.runs) == 1, "the run to end")
        assert app.runs[0].outcome == "ok" and app.runs[0].files == 45
        assert not app.screen.query_one(ProgressPanel).display
        await wait_for(pilot, lambda: table.row_count == 2, "the new run in the list")
        assert outcomes(app) == ["ok", "ok"]
        await pilot.press("3")
        snapshots = app.screen.query_one("#snapshots", DataTable)
        await wait_for(pilot, lambda: snapshots.row_count == 2, "the new snapshot in Browse")

    drive(alice, scenario)
    assert len(server.client("alice").snapshots()) == 2


def test_cancel_stops_the_run_and_commits_nothing(server, tmp_path: Path) -> None:
    source = tmp_path / "huge"
    source.mkdir()
    # Sparse: gigabytes to read and hash, no disk used, so the run is still going when cancelled.
    with (source / "disk.img").open("wb") as handle:
        handle.truncate(8 * 1024**3)
    config = server.enroll("erin")
    config.sources = [str(source)]
    config.save()

    async def scenario(app: ConsoleApp, pilot) -> None:
        await pilot.press("4")
        runs = app.screen
        await pilot.press("b")
        counters = runs.query_one("#counters")
        # Zeros read fast: the first count shown may already be in GiB.
        await wait_for(
            pilot,
            lambda: re.search(r"[1-9][\d.]* [MG]iB read", str(counters.render())),
            "live progress",
        )
        text = str(counters.render())
        assert "files" in text and "uploaded" in text and "/s" in text
        await pilot.press("1")
        assert app.current_mode == "fleet", "the console answers while a backup runs"
        await pilot.press("4")
        await pilot.press("c")
        await wait_for(pilot, lambda: len(app.runs) == 1, "the run to stop")
        assert app.runs[0].outcome == "cancelled"
        assert "nothing was committed" in app.runs[0].message
        assert outcomes(app)[0] == "cancelled"

    drive(config, scenario)
    assert server.client("erin").snapshots() == []


def test_a_run_against_a_stopped_server_fails_with_a_message(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        await open_runs(app, pilot)
        with outage(server):
            await pilot.press("b")
            await wait_for(pilot, lambda: len(app.runs) == 1, "the failed run")
            assert app.runs[0].outcome == "failed"
            assert "cannot reach the server" in app.runs[0].message
            assert outcomes(app)[0] == "failed"
            app.screen.query_one("#runs", DataTable).move_cursor(row=0)
            await pilot.pause()
            assert "cannot reach the server" in text_of(app, "#run-detail"), "in full"
        await pilot.press("b")
        await wait_for(pilot, lambda: len(app.runs) == 2, "the run after the restart")
        assert app.runs[1].outcome == "ok"

    drive(alice, scenario)


def test_a_run_that_skips_files_is_incomplete(server, alice: ClientConfig, tmp_path: Path) -> None:
    alice.sources.append(os.fspath(tmp_path / "missing"))
    alice.save()

    async def scenario(app: ConsoleApp, pilot) -> None:
        await open_runs(app, pilot)
        await pilot.press("b")
        await wait_for(pilot, lambda: len(app.runs) == 1, "the run")
        assert app.runs[0].outcome == "incomplete"
        assert "missing" in app.runs[0].message

    drive(alice, scenario)
