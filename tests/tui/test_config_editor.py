"""The config editor: messages next to bad fields, nothing written until the form is valid."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea

from rpybackup_core.config import ClientConfig
from rpybackup_tui.app import ConsoleApp

from .conftest import drive, text_of, wait_for


async def open_editor(app: ConsoleApp, pilot) -> None:
    await pilot.press("2")
    await wait_for(pilot, lambda: app.screen.query("#quiet"), "the config editor")


def test_invalid_input_is_marked_and_never_written(server, alice) -> None:
    before = alice.path.read_bytes()

    async def scenario(app: ConsoleApp, pilot) -> None:
        await open_editor(app, pilot)
        assert app.screen.query_one("#server", Input).value == alice.server
        assert app.screen.query_one("#sources", TextArea).text == alice.sources[0]
        assert text_of(app, "#server-error") == ""
        quiet = app.screen.query_one("#quiet", Input)
        quiet.value = "soon"
        await pilot.pause()
        assert "not a duration" in text_of(app, "#quiet-error")
        app.screen.query_one("#sources", TextArea).text = "relative/path"
        await pilot.pause()
        assert "absolute path" in text_of(app, "#sources-error")
        await pilot.press("escape", "ctrl+s")
        assert "not saved" in text_of(app, "#config-status")

    drive(alice, scenario)
    assert alice.path.read_bytes() == before


def test_a_valid_form_is_saved_and_used(server, alice, tmp_path: Path) -> None:
    extra = tmp_path / "more"
    extra.mkdir()

    async def scenario(app: ConsoleApp, pilot) -> None:
        await open_editor(app, pilot)
        sources = app.screen.query_one("#sources", TextArea)
        sources.text = f"{alice.sources[0]}\n{extra}\n"
        app.screen.query_one("#excludes", TextArea).text = "*.tmp\n\n*/cache\n"
        app.screen.query_one("#quiet", Input).value = "2m"
        app.screen.query_one("#max_delay", Input).value = "1h"
        await pilot.pause()
        await pilot.press("escape", "ctrl+s")
        await wait_for(pilot, lambda: "saved" in text_of(app, "#config-status"), "the save")
        assert app.backend.config.sources == [alice.sources[0], str(extra)]

    drive(alice, scenario)
    saved = ClientConfig.load(alice.path)
    assert saved.sources == [alice.sources[0], str(extra)]
    assert saved.excludes == ["*.tmp", "*/cache"]
    assert saved.quiet_seconds == 120
    assert saved.max_delay == 3600
    assert (saved.token, saved.key, saved.name) == (alice.token, alice.key, alice.name)
    assert not list(alice.path.parent.glob(f".{alice.path.name}.*.tmp")), "no temp file left"


def test_digits_typed_into_a_field_stay_in_the_field(server, alice) -> None:
    async def scenario(app: ConsoleApp, pilot) -> None:
        await open_editor(app, pilot)
        quiet = app.screen.query_one("#quiet", Input)
        quiet.focus()
        quiet.value = ""
        await pilot.press("4", "5", "s")
        assert quiet.value == "45s"
        assert app.current_mode == "config"
        await pilot.press("escape", "1")
        assert app.current_mode == "fleet"

    drive(alice, scenario)
