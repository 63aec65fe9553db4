"""Recent log lines, filterable by level: this console's own (every rpybackup_core call it made,
live) or, with an admin identity, the server's (fetched again every few seconds)."""

from __future__ import annotations

import datetime
import logging
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.timer import Timer
from textual.widgets import RichLog, Static

from rpybackup_core.logs import LEVELS, LogLine

from .base import AreaScreen

POLL_SECONDS = 5.0
NEEDS_ADMIN = "The server's log needs an admin identity ('client add NAME --admin')."


class LineLogged(Message):
    def __init__(self, line: LogLine) -> None:
        super().__init__()
        self.line = line


class ServerLogLoaded(Message):
    def __init__(self, level: str, lines: list[LogLine] | None) -> None:
        super().__init__()
        self.level = level
        self.lines = lines


def render_line(line: LogLine, styles: dict[str, str]) -> Text:
    when = datetime.datetime.fromtimestamp(line.created, datetime.UTC)
    return Text.assemble(
        (f"{when:%H:%M:%S} ", "dim"),
        (f"{line.level:<7} ", styles[line.level]),
        (f"{line.source}: ", "italic"),
        line.message,
    )


class LogsScreen(AreaScreen):
    AREA = "logs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "toggle_source", "Console/server"),
        Binding("d", "level('DEBUG')", "Debug+"),
        Binding("i", "level('INFO')", "Info+"),
        Binding("w", "level('WARNING')", "Warning+"),
        Binding("e", "level('ERROR')", "Errors"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.min_level = "INFO"
        self.source = "console"
        self.server_lines: list[LogLine] | None = []
        self._next_poll: Timer | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="logs-title", classes="area-title", markup=False)
        yield RichLog(id="log", wrap=True, max_lines=2000, markup=False)

    def on_screen_resume(self) -> None:
        self.console.log_buffer.listener = self.line_logged
        self.show_lines()
        if self.source == "server":
            self.poll()

    def on_screen_suspend(self) -> None:
        self.console.log_buffer.listener = None
        self.stop_polling()

    def line_logged(self, line: LogLine) -> None:
        """Called on the thread that logged: hand the line to the UI as a message."""
        self.post_message(LineLogged(line))

    def show_lines(self) -> None:
        view = self.query_one(RichLog)
        view.clear()
        if self.source == "console":
            lines = self.console.log_buffer.lines(self.min_level)
        else:
            lines = self.server_lines or []
            if self.server_lines is None:
                view.write(Text(NEEDS_ADMIN, style="bold"))
        self.query_one("#logs-title", Static).update(
            f"{self.source.capitalize()} log · {self.min_level.lower()} and above · "
            f"{len(lines)} line(s) · s switches"
        )
        styles = self.level_styles()
        for line in lines:
            view.write(render_line(line, styles))

    def level_styles(self) -> dict[str, str]:
        theme = self.app.current_theme
        return {
            "DEBUG": "dim",
            "INFO": "",
            "WARNING": theme.warning or "",
            "ERROR": f"bold {theme.error}",
        }

    def action_level(self, level: str) -> None:
        assert level in LEVELS
        self.min_level = level
        self.show_lines()
        if self.source == "server":
            self.poll()

    def action_toggle_source(self) -> None:
        self.source = "server" if self.source == "console" else "console"
        self.show_lines()
        if self.source == "server":
            self.poll()
        else:
            self.stop_polling()

    @on(LineLogged)
    def logged(self, message: LineLogged) -> None:
        if self.source == "console" and message.line.levelno >= logging.getLevelName(
            self.min_level
        ):
            self.query_one(RichLog).write(render_line(message.line, self.level_styles()))

    # ---- the server's log -------------------------------------------------------------------

    def poll(self) -> None:
        self.stop_polling()
        self.load_server_log(self.min_level)

    def stop_polling(self) -> None:
        if self._next_poll is not None:
            self._next_poll.stop()
            self._next_poll = None

    def schedule_poll(self) -> None:
        if self.source == "server" and self.is_current:
            self._next_poll = self.set_timer(POLL_SECONDS, self.poll)

    @work(thread=True, exclusive=True, group="server-log", exit_on_error=False)
    def load_server_log(self, level: str) -> None:
        self.post_message(ServerLogLoaded(level, self.backend.server_log(level)))

    @on(ServerLogLoaded)
    def server_log_loaded(self, message: ServerLogLoaded) -> None:
        if message.level == self.min_level:
            self.server_lines = message.lines
            if self.source == "server":
                self.show_lines()
        if message.lines is not None:
            self.schedule_poll()

    def worker_failed(self, group: str, message: str) -> None:
        self.query_one("#logs-title", Static).update(f"Server log · {message} · retrying")
        self.schedule_poll()
