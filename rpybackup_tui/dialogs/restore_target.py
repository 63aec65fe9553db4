"""Ask where a restore goes; returns the chosen directory, or None when cancelled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


def check_target(text: str) -> str:
    """Why ``text`` cannot be a restore target; empty when it can."""
    path = os.path.expanduser(text.strip())
    if not path:
        return "give the directory to restore into"
    if not os.path.isabs(path):
        return "give an absolute path (or one starting with ~)"
    if os.path.exists(path) and not os.path.isdir(path):
        return "that is a file, not a directory"
    return ""


class RestoreDialog(ModalScreen[Path | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, what: str, suggestion: str) -> None:
        super().__init__()
        self.what = what
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Restore {self.what}", classes="dialog-title", markup=False)
            yield Static("Into directory (created if missing; existing files are replaced):")
            yield Input(self.suggestion, id="target")
            yield Static("", id="target-error", classes="field-error")
            yield Static("enter restore · escape cancel", classes="dialog-hint")

    @on(Input.Changed, "#target")
    def changed(self, event: Input.Changed) -> None:
        self.query_one("#target-error", Static).update(check_target(event.value))

    @on(Input.Submitted, "#target")
    def submitted(self, event: Input.Submitted) -> None:
        problem = check_target(event.value)
        if problem:
            self.query_one("#target-error", Static).update(problem)
            return
        self.dismiss(Path(os.path.expanduser(event.value.strip())))

    def action_cancel(self) -> None:
        self.dismiss(None)
