"""Recent log lines of the console process (which includes every rpybackup_core call it made),
filtered by level, following new lines as they arrive."""

from __future__ import annotations

import datetime
import logging
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import RichLog, Static

from ..data.log_buffer import LEVELS, LogLine
from .base import AreaScreen

_STYLES = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "bold red"}


class LineLogged(Message):
    def __init__(self, line: LogLine) -> None:
        super().__init__()
        self.line = line


def render_line(line: LogLine) -> Text:
    when = datetime.datetime.fromtimestamp(line.created, datetime.UTC)
    return Text.assemble(
        (f"{when:%H:%M:%S} ", "dim"),
        (f"{line.level:<7} ", _STYLES[line.level]),
        (f"{line.source}: ", "italic"),
        line.message,
    )


class LogsScreen(AreaScreen):
    AREA = "logs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "level('DEBUG')", "Debug+"),
        Binding("i", "level('INFO')", "Info+"),
        Binding("w", "level('WARNING')", "Warning+"),
        Binding("e", "level('ERROR')", "Errors"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.min_level = "INFO"

    def compose_body(self) -> ComposeResult:
        yield Static("", id="logs-title", classes="area-title", markup=False)
        yield RichLog(id="log", wrap=True, max_lines=2000, markup=False)

    def on_screen_resume(self) -> None:
        self.console.log_buffer.listener = self.line_logged
        self.show_lines()

    def line_logged(self, line: LogLine) -> None:
        """Called on the thread that logged: hand the line to the UI as a message."""
        self.post_message(LineLogged(line))

    def on_screen_suspend(self) -> None:
        self.console.log_buffer.listener = None

    def show_lines(self) -> None:
        lines = self.console.log_buffer.lines(self.min_level)
        self.query_one("#logs-title", Static).update(
            f"Console log · {self.min_level.lower()} and above · {len(lines)} line(s)"
        )
        view = self.query_one(RichLog)
        view.clear()
        for line in lines:
            view.write(render_line(line))

    def action_level(self, level: str) -> None:
        assert level in LEVELS
        self.min_level = level
        self.show_lines()

    @on(LineLogged)
    def logged(self, message: LineLogged) -> None:
        if message.line.levelno >= logging.getLevelName(self.min_level):
            self.query_one(RichLog).write(render_line(message.line))
