"""Edit one client's retention policy; returns the choice, or None when cancelled."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from rpybackup_core.errors import ConfigError
from rpybackup_core.retention import RetentionPolicy

from ..data.retention_form import RULES, RetentionChoice, check_rule, form_values, policy_from

_LABELS = {
    "keep_last": "last",
    "keep_hourly": "hourly",
    "keep_daily": "daily",
    "keep_weekly": "weekly",
    "keep_monthly": "monthly",
    "keep_yearly": "yearly",
    "keep_within": "within",
}


class RetentionDialog(ModalScreen[RetentionChoice | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "apply", "Apply"),
        Binding("ctrl+t", "server_default", "Server default"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, client: str, policy: RetentionPolicy) -> None:
        super().__init__()
        self.client = client
        self.values = form_values(policy)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Retention of {self.client}", classes="dialog-title")
            yield Static(
                "last N keeps the N newest snapshots; hourly … yearly N keep the "
                "newest of each of the last N periods; within keeps every snapshot "
                "younger than that (e.g. 7d); 0 turns a rule off.",
                classes="dialog-body",
            )
            for name in RULES:
                with Horizontal(classes="rule"):
                    yield Label(_LABELS[name])
                    yield Input(self.values[name], id=name, compact=True)
                    yield Static("", id=f"{name}-error", classes="rule-error", markup=False)
            yield Static(
                "ctrl+s apply · ctrl+t follow the server default · escape cancel",
                classes="dialog-hint",
            )

    @on(Input.Changed)
    def changed(self, event: Input.Changed) -> None:
        name = event.input.id or ""
        message = check_rule(name, event.value)
        self.query_one(f"#{name}-error", Static).update(message)
        event.input.set_class(bool(message), "-invalid")

    def action_apply(self) -> None:
        values = {name: self.query_one(f"#{name}", Input).value for name in RULES}
        try:
            policy = policy_from(values)
        except ConfigError:
            self.notify("fix the marked rules first", severity="warning")
            return
        self.dismiss(RetentionChoice(policy))

    def action_server_default(self) -> None:
        self.dismiss(RetentionChoice(None))

    def action_cancel(self) -> None:
        self.dismiss(None)
