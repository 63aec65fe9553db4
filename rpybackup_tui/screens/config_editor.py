"""Edit this client's TOML config; each field is checked as it is typed, and only a fully valid
form is written (atomically, by ClientConfig.save)."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Input, Label, Static, TextArea

from rpybackup_core.config import ClientConfig

from ..data.config_form import FIELDS, ConfigForm, apply_form, check_field, check_form
from ..data.format import display_path
from ..messages import ConfigSaved
from .base import AreaScreen

_LABELS = {
    "server": "Server address (HOST:PORT)",
    "sources": "Sources — directories to back up, one per line",
    "excludes": "Excludes — name or path patterns (*.tmp, /home/*/.cache), one per line",
    "quiet": "Watch: quiet period before a backup (e.g. 10s, 2m)",
    "max_delay": "Watch: longest wait while changes keep coming (e.g. 10m, 1h)",
}


class ConfigScreen(AreaScreen):
    AREA = "config"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+r", "revert", "Revert"),
        Binding("escape", "leave_field", "Leave field"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Static("", id="config-title", classes="area-title", markup=False)
        with VerticalScroll(id="config-form"):
            yield Label(_LABELS["server"])
            yield Input(id="server", compact=True)
            yield Static("", id="server-error", classes="field-error", markup=False)
            yield Label(_LABELS["sources"])
            yield TextArea(id="sources", soft_wrap=False, compact=True)
            yield Static("", id="sources-error", classes="field-error", markup=False)
            yield Label(_LABELS["excludes"])
            yield TextArea(id="excludes", soft_wrap=False, compact=True)
            yield Static("", id="excludes-error", classes="field-error", markup=False)
            yield Label(_LABELS["quiet"])
            yield Input(id="quiet", compact=True)
            yield Static("", id="quiet-error", classes="field-error", markup=False)
            yield Label(_LABELS["max_delay"])
            yield Input(id="max_delay", compact=True)
            yield Static("", id="max_delay-error", classes="field-error", markup=False)
        yield Static("", id="config-status", classes="status-line", markup=False)

    def on_mount(self) -> None:
        self.load(self.backend.config)

    def load(self, config: ClientConfig) -> None:
        form = ConfigForm.from_config(config)
        self.query_one("#config-title", Static).update(
            f"Client config · {display_path(config.path)}"
        )
        self.query_one("#server", Input).value = form.server
        self.query_one("#sources", TextArea).text = form.sources
        self.query_one("#excludes", TextArea).text = form.excludes
        self.query_one("#quiet", Input).value = form.quiet
        self.query_one("#max_delay", Input).value = form.max_delay
        self.set_status("ctrl+s saves · nothing is written while a field is marked")

    def form(self) -> ConfigForm:
        return ConfigForm(
            server=self.query_one("#server", Input).value,
            sources=self.query_one("#sources", TextArea).text,
            excludes=self.query_one("#excludes", TextArea).text,
            quiet=self.query_one("#quiet", Input).value,
            max_delay=self.query_one("#max_delay", Input).value,
        )

    def show_message(self, field: str, message: str) -> None:
        label = self.query_one(f"#{field}-error", Static)
        label.update(message)
        label.display = bool(message)
        self.query_one(f"#{field}").set_class(bool(message), "-invalid")

    @on(Input.Changed)
    def input_changed(self, event: Input.Changed) -> None:
        field = event.input.id or ""
        self.show_message(field, check_field(field, event.value))

    @on(TextArea.Changed)
    def text_changed(self, event: TextArea.Changed) -> None:
        field = event.text_area.id or ""
        self.show_message(field, check_field(field, event.text_area.text))

    def set_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#config-status", Static)
        status.set_class(error, "-error")
        status.update(text)

    def action_save(self) -> None:
        form = self.form()
        messages = check_form(form)
        for field in FIELDS:
            self.show_message(field, messages.get(field, ""))
        if messages:
            self.set_status(f"not saved: fix the {len(messages)} marked field(s)", error=True)
            return
        self.save(apply_form(self.backend.config, form))

    def action_revert(self) -> None:
        self.load(self.backend.config)

    def action_leave_field(self) -> None:
        self.set_focus(None)

    @work(thread=True, exclusive=True, group="config-save", exit_on_error=False)
    def save(self, config: ClientConfig) -> None:
        self.backend.save_config(config)
        self.post_message(ConfigSaved(config))

    @on(ConfigSaved)
    def saved(self, message: ConfigSaved) -> None:
        self.set_status(f"saved {display_path(message.config.path)}")
        self.notify(f"saved {message.config.path.name}", title="Config")

    def worker_failed(self, group: str, message: str) -> None:
        self.set_status(f"not saved: {message}", error=True)
