"""Pruning: each client's retention policy, a dry-run plan saying why every snapshot stays or
goes, a prune after confirmation, and the prune history with the space freed."""

from __future__ import annotations

import datetime
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Select, Static

from rpybackup_core.pruner import PruneRecord, PruneResult
from rpybackup_core.retention import RetentionPolicy

from ..data.fleet import Fleet
from ..data.format import human_bytes
from ..data.retention_form import RetentionChoice
from ..dialogs.confirm import ConfirmDialog
from ..dialogs.retention import RetentionDialog
from ..messages import FleetLoaded, PruneAnswered, PruneHistoryLoaded, RetentionChanged
from .base import AreaScreen

NEEDS_ADMIN = (
    "Pruning is the server's job and needs an admin identity: on the server run "
    "'rpybackup-core client add NAME --admin', enroll it, and open the console with that config."
)


def _when(stamp: float, seconds: bool = False) -> str:
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


class PruneScreen(AreaScreen):
    AREA = "prune"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "preview", "Dry run"),
        Binding("p", "prune", "Prune…"),
        Binding("e", "edit_policy", "Edit policy…"),
        Binding("u", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.preview: PruneResult | None = None
        self.admin = False
        self.policies: dict[str, str] = {}

    def compose_body(self) -> ComposeResult:
        yield Select[str]([], prompt="client", id="prune-client", compact=True)
        yield Static("", id="policy", classes="area-title", markup=False)
        yield DataTable(id="plan", cursor_type="row", zebra_stripes=True)
        yield Static("Prune history", classes="section-title")
        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
        yield Static("loading clients…", id="prune-status", classes="status-line", markup=False)

    def on_mount(self) -> None:
        self.query_one("#plan", DataTable).add_columns("Snapshot time (UTC)", "Plan", "Why")
        self.query_one("#history", DataTable).add_columns(
            "When (UTC)", "Client", "By", "Removed", "Kept", "Freed"
        )

    def on_screen_resume(self) -> None:
        self.call_after_refresh(self.load_clients)

    @property
    def client(self) -> str | None:
        value = self.query_one("#prune-client", Select).value
        return value if isinstance(value, str) else None

    def set_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#prune-status", Static)
        status.set_class(error, "-error")
        status.update(text)

    # ---- clients ----------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.load_clients()

    @work(thread=True, exclusive=True, group="prune-clients", exit_on_error=False)
    def load_clients(self) -> None:
        self.post_message(FleetLoaded(self.backend.fleet()))

    @on(FleetLoaded)
    def clients_loaded(self, message: FleetLoaded) -> None:
        fleet: Fleet = message.fleet
        self.admin = fleet.admin
        if not fleet.admin:
            self.query_one("#policy", Static).update("needs an admin identity")
            self.set_status(NEEDS_ADMIN, error=True)
            return
        select = self.query_one("#prune-client", Select)
        current = self.client
        names = [row.name for row in fleet.rows]
        self.policies = {
            row.name: f"{row.retention} (server default)"
            if row.retention_is_default
            else row.retention
            for row in fleet.rows
        }
        select.set_options((row.name, row.name) for row in fleet.rows)
        if names:
            select.value = current if current in names else names[0]
        self.load_history(None)

    @on(Select.Changed, "#prune-client")
    def client_changed(self, event: Select.Changed) -> None:
        if self.client is not None:
            self.action_preview()

    # ---- preview and prune ------------------------------------------------------------------

    def action_preview(self) -> None:
        if not self.admin or self.client is None:
            self.notify(NEEDS_ADMIN if not self.admin else "pick a client", severity="warning")
            return
        self.set_status(f"asking the server what a prune of {self.client} would do…")
        self.run_prune(self.client, dry_run=True)

    def action_prune(self) -> None:
        preview = self.preview
        if not self.admin or preview is None or preview.client != self.client:
            self.notify("run a dry run first (d)", severity="warning")
            return
        gone = len(preview.plan.remove)
        if not gone:
            self.notify(f"the policy keeps every snapshot of {preview.client}")
            return
        body = (
            f"Remove {gone} of {gone + len(preview.plan.keep)} snapshot(s) of "
            f"{preview.client} and free about {human_bytes(preview.chunk_bytes_freed)}? "
            "This cannot be undone."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.set_status(f"pruning {preview.client}…")
                self.run_prune(preview.client, dry_run=False)

        self.app.push_screen(ConfirmDialog(f"Prune {preview.client}", body, "Prune"), answered)

    @work(thread=True, exclusive=True, group="prune", exit_on_error=False)
    def run_prune(self, client: str, dry_run: bool) -> None:
        backend = self.backend
        result = backend.prune_preview(client) if dry_run else backend.prune(client)
        self.post_message(PruneAnswered(result))

    @on(PruneAnswered)
    def answered(self, message: PruneAnswered) -> None:
        result = message.result
        if result.dry_run:
            # An answer for a client no longer selected (the user moved on) is stale.
            if result.client == self.client:
                self.show_plan(result)
            return
        self.preview = None
        self.notify(
            f"{result.client}: removed {len(result.plan.remove)} snapshot(s), "
            f"freed {human_bytes(result.bytes_freed)}",
            title="Prune done",
        )
        self.load_clients()

    def show_plan(self, result: PruneResult) -> None:
        self.preview = result
        self.query_one("#policy", Static).update(
            f"{result.client} · policy: {self.policies.get(result.client, '')}"
        )
        rows = [(d, True) for d in result.plan.keep] + [(d, False) for d in result.plan.remove]
        rows.sort(key=lambda row: row[0].time, reverse=True)
        table = self.query_one("#plan", DataTable)
        table.clear()
        error = self.app.current_theme.error
        for decision, kept in rows:
            table.add_row(
                _when(decision.time, seconds=True),
                Text("keep") if kept else Text("remove", style=f"bold {error}"),
                ", ".join(decision.reasons) if kept else "no rule keeps it",
            )
        gone = len(result.plan.remove)
        self.set_status(
            f"dry run: {gone} to remove, {len(result.plan.keep)} to keep, about "
            f"{human_bytes(result.chunk_bytes_freed)} freed · p prunes"
            if gone
            else "dry run: the policy keeps every snapshot"
        )

    # ---- policy -----------------------------------------------------------------------------

    def action_edit_policy(self) -> None:
        preview = self.preview
        if not self.admin or preview is None or preview.client != self.client:
            self.notify("pick a client and wait for its dry run", severity="warning")
            return
        client = preview.client

        def chosen(choice: RetentionChoice | None) -> None:
            if choice is not None:
                self.set_status(f"setting the retention of {client}…")
                self.set_retention(client, choice.policy)

        self.app.push_screen(RetentionDialog(client, preview.policy), chosen)

    @work(thread=True, exclusive=True, group="retention", exit_on_error=False)
    def set_retention(self, client: str, policy: RetentionPolicy | None) -> None:
        self.post_message(RetentionChanged(self.backend.set_retention(client, policy)))

    @on(RetentionChanged)
    def retention_changed(self, message: RetentionChanged) -> None:
        setting = message.setting
        source = "the server default" if setting.is_default else "its own policy"
        self.notify(
            f"{setting.client} now follows {source}: {setting.policy.describe()}", title="Retention"
        )
        self.load_clients()
        self.action_preview()

    # ---- history ----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="prune-history", exit_on_error=False)
    def load_history(self, client: str | None) -> None:
        self.post_message(PruneHistoryLoaded(self.backend.prune_history(client)))

    @on(PruneHistoryLoaded)
    def history_loaded(self, message: PruneHistoryLoaded) -> None:
        table = self.query_one("#history", DataTable)
        table.clear()
        for record in message.records:
            table.add_row(*self.history_cells(record))

    @staticmethod
    def history_cells(record: PruneRecord) -> list[str]:
        return [
            _when(record.time),
            record.client,
            record.origin,
            str(len(record.removed)),
            str(record.kept),
            human_bytes(record.bytes_freed),
        ]

    def worker_failed(self, group: str, message: str) -> None:
        self.set_status(f"{message} · u reloads", error=True)
