"""Home: every client's state, refreshed on a timer that restarts only after each poll ends."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.timer import Timer
from textual.widgets import DataTable, Static

from ..data.fleet import Fleet, FleetRow
from ..data.format import human_bytes, short_time
from ..messages import FleetLoaded
from .base import AreaScreen

POLL_SECONDS = 5.0
COLUMNS = ("Client", "State", "Last backup", "Result", "Snaps", "Stored", "Retention")
WIDTHS = {"Client": 10, "Result": 12}
"""Capped so the columns that matter fit 80 columns; the detail line shows them in full."""


def describe_row(row: FleetRow) -> str:
    """Everything about one client on one or two lines, never truncated like a table cell."""
    backup = (
        f"last backup {short_time(row.last_backup)}: {row.last_result}"
        if row.last_backup
        else "no backup yet"
    )
    stored = f" · {human_bytes(row.stored_bytes)} stored" if row.stored_bytes is not None else ""
    default = " (the server default)" if row.retention_is_default else ""
    return (
        f"{row.name} · {row.state} · {backup} · {row.snapshots} snapshot(s){stored} · "
        f"retention {row.retention}{default}"
    )


class FleetScreen(AreaScreen):
    AREA = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "refresh_now", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self._next_poll: Timer | None = None
        self.rows: dict[str, FleetRow] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("Fleet status", classes="area-title")
        yield DataTable(id="fleet", cursor_type="row", zebra_stripes=True)
        yield Static("", id="fleet-detail", markup=False)
        yield Static("connecting…", id="fleet-status", classes="status-line", markup=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in COLUMNS:
            table.add_column(label, width=WIDTHS.get(label))

    def on_screen_resume(self) -> None:
        # Polls only while shown; the first waits for the first frame, so the console never
        # opens on a blank wait.
        self.call_after_refresh(self.poll)

    def on_screen_suspend(self) -> None:
        self.stop_polling()

    def poll(self) -> None:
        self.stop_polling()
        self.load_fleet()

    def stop_polling(self) -> None:
        if self._next_poll is not None:
            self._next_poll.stop()
            self._next_poll = None

    def schedule_poll(self) -> None:
        self.stop_polling()
        if self.is_current:
            self._next_poll = self.set_timer(POLL_SECONDS, self.poll)

    def action_refresh_now(self) -> None:
        self.query_one("#fleet-status", Static).update("refreshing…")
        self.poll()

    @work(thread=True, exclusive=True, group="fleet", exit_on_error=False)
    def load_fleet(self) -> None:
        self.post_message(FleetLoaded(self.backend.fleet()))

    @on(FleetLoaded)
    def show_fleet(self, message: FleetLoaded) -> None:
        self.fill(message.fleet)
        scope = "every client (admin identity)" if message.fleet.admin else "this client only"
        note = f" · {message.fleet.note}" if message.fleet.note else ""
        status = self.query_one("#fleet-status", Static)
        status.remove_class("-error")
        status.update(f"connected · showing {scope}{note} · refreshes every {POLL_SECONDS:.0f}s")
        self.schedule_poll()

    def fill(self, fleet: Fleet) -> None:
        table = self.query_one(DataTable)
        selected = table.cursor_row
        table.clear()
        self.rows = {row.name: row for row in fleet.rows}
        for row in fleet.rows:
            table.add_row(*self.cells(row), key=row.name)
        if fleet.rows:
            table.move_cursor(row=min(selected, len(fleet.rows) - 1))

    @on(DataTable.RowHighlighted, "#fleet")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = self.rows.get(str(event.row_key.value))
        self.query_one("#fleet-detail", Static).update(describe_row(row) if row else "")

    def cells(self, row: FleetRow) -> list[Text | str]:
        theme = self.app.current_theme
        alarm = f"bold {theme.error}" if row.failing else ""
        return [
            Text(row.name, style=alarm),
            Text(row.state, style=alarm or (theme.success or "") if row.state != "idle" else ""),
            short_time(row.last_backup),
            # "incomplete: 3 item(s) unreadable" reads "incomplete" here; the detail line has all.
            Text(row.last_result.split(":")[0], style=alarm),
            str(row.snapshots),
            human_bytes(row.stored_bytes) if row.stored_bytes is not None else "—",
            row.retention,
        ]

    def worker_failed(self, group: str, message: str) -> None:
        status = self.query_one("#fleet-status", Static)
        status.add_class("-error")
        status.update(f"no answer · {message} · retrying every {POLL_SECONDS:.0f}s")
        self.schedule_poll()
