"""The top line: the console's areas with the key that opens each, the current one marked."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

AREAS: tuple[tuple[str, str, str], ...] = (
    ("1", "fleet", "Fleet"),
    ("2", "config", "Config"),
    ("3", "browse", "Browse"),
    ("4", "runs", "Runs"),
    ("5", "prune", "Prune"),
    ("6", "logs", "Logs"),
)


class AreaBar(Static):
    def __init__(self, current: str, identity: str) -> None:
        super().__init__()
        self.current = current
        self.identity = identity

    def render(self) -> Text:
        line = Text(" rPyBackup ", style="bold reverse")
        for key, mode, label in AREAS:
            style = "bold reverse" if mode == self.current else ""
            line.append(" ")
            line.append(f" {key} {label} ", style=style)
        room = self.size.width - line.cell_len - 2
        if room > 0:
            who = self.identity[:room]
            line.append(" " * (room - len(who) + 1))
            line.append(who, style="italic")
        return line
