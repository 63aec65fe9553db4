"""The console as a whole: areas by key, quitting, and starting without a usable config."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpybackup_tui.app import ConsoleApp, main

from .conftest import drive, outage, text_of, wait_for


def test_every_area_is_one_key_away_and_ctrl_q_quits(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        for key, mode in zip(
            "234561", ("config", "browse", "runs", "prune", "logs", "fleet"), strict=True
        ):
            await pilot.press(key)
            assert app.current_mode == mode
        await pilot.press("ctrl+q")
        assert app.return_code == 0 and not app.is_running

    drive(alice, scenario)


def test_the_first_frame_does_not_wait_for_the_server(server, alice) -> None:
    """Opened while the server is down: the home screen is there, saying it is connecting."""

    async def scenario(app: ConsoleApp, pilot) -> None:
        assert app.current_mode == "fleet"
        await wait_for(
            pilot, lambda: "no answer" in text_of(app, "#fleet-status"), "the outage message"
        )

    with outage(server):
        drive(alice, scenario)


def test_a_missing_config_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--config", str(tmp_path / "nowhere.toml")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "no client config" in err
