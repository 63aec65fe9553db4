"""Start a backup now, watch it, cancel it; the last runs with their results."""

from __future__ import annotations

import threading
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from rpybackup_core.client import SnapshotInfo

from ..data.backend import now_iso
from ..data.fleet import snapshot_result
from ..data.format import display_path, human_bytes, short_time
from ..data.runs import CANCELLED, FAILED, INCOMPLETE, OK, RunRecord
from ..messages import ProgressUpdate, RunEnded, SnapshotsLoaded, progress_poster
from ..widgets.progress_panel import ProgressPanel
from .base import AreaScreen

SHOWN_RUNS = 50


def describe_run(run: RunRecord) -> str:
    """A run started here, in full: the table cell only has room for the start of it."""
    what = f"snapshot {run.snapshot[:8]}" if run.snapshot else "no snapshot"
    message = f" · {run.message}" if run.message else ""
    return (
        f"{short_time(run.started)} · {run.outcome} · {what} · {run.files:,} files, "
        f"{human_bytes(run.bytes)} read, {human_bytes(run.uploaded_bytes)} uploaded"
        f"{message}"
    )


def describe_snapshot(snap: SnapshotInfo) -> str:
    stats = snap.stats
    tags = f" · tags {', '.join(snap.tags)}" if snap.tags else ""
    return (
        f"{short_time(snap.time)} · {snapshot_result(snap)} · "
        f"{int(stats.get('files', 0)):,} files, {int(stats.get('dirs', 0)):,} folders, "
        f"{human_bytes(int(stats.get('bytes', 0)))}{tags}"
    )


class RunsScreen(AreaScreen):
    AREA = "runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b", "start", "Back up now"),
        Binding("c", "cancel", "Cancel run"),
        Binding("u", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        self.running = False
        self.started = ""
        self.server_runs: list[SnapshotInfo] = []
        self.details: list[str] = []

    def compose_body(self) -> ComposeResult:
        yield Static("", id="run-state", classes="area-title", markup=False)
        yield ProgressPanel(id="run-progress")
        yield Static("Last runs", classes="section-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail", markup=False)
        yield Static("", id="runs-status", classes="status-line", markup=False)

    def on_mount(self) -> None:
        self.query_one("#runs", DataTable).add_columns(
            "Time (UTC)", "Result", "Files", "Read", "Uploaded", "Detail"
        )
        self.query_one(ProgressPanel).stop()
        self.show_state()

    def on_screen_resume(self) -> None:
        self.show_state()
        self.call_after_refresh(self.load_history)

    def show_state(self) -> None:
        sources = ", ".join(display_path(s) for s in self.backend.config.sources)
        text = "backing up…" if self.running else "idle · b backs up now"
        self.query_one("#run-state", Static).update(
            f"Runs · {text} · sources: {sources or '(none configured: see 2 Config)'}"
        )

    # ---- history ----------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.load_history()

    @work(thread=True, exclusive=True, group="run-history", exit_on_error=False)
    def load_history(self) -> None:
        self.post_message(SnapshotsLoaded(self.backend.snapshots()))

    @on(SnapshotsLoaded)
    def history_loaded(self, message: SnapshotsLoaded) -> None:
        self.server_runs = message.snapshots
        self.fill()

    def fill(self) -> None:
        """This session's runs (failures included) and the server's snapshots, newest first."""
        table = self.query_one("#runs", DataTable)
        table.clear()
        known = {run.snapshot for run in self.console.runs}
        rows: list[tuple[str, list[str | Text], str]] = []
        for run in self.console.runs:
            rows.append((run.started, self.run_cells(run), describe_run(run)))
        for snap in self.server_runs:
            if snap.id not in known:
                rows.append((snap.time, self.snapshot_cells(snap), describe_snapshot(snap)))
        rows.sort(key=lambda row: row[0], reverse=True)
        self.details = [detail for _, _, detail in rows[:SHOWN_RUNS]]
        for _, cells, _ in rows[:SHOWN_RUNS]:
            table.add_row(*cells)

    @on(DataTable.RowHighlighted, "#runs")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        index = event.cursor_row
        detail = self.details[index] if 0 <= index < len(self.details) else ""
        self.query_one("#run-detail", Static).update(detail)

    def run_cells(self, run: RunRecord) -> list[str | Text]:
        bad = run.outcome in (FAILED, INCOMPLETE)
        style = f"bold {self.app.current_theme.error}" if bad else ""
        return [
            short_time(run.started),
            Text(run.outcome, style=style),
            f"{run.files:,}",
            human_bytes(run.bytes),
            human_bytes(run.uploaded_bytes),
            Text(
                run.message or (f"snapshot {run.snapshot[:8]}" if run.snapshot else ""), style=style
            ),
        ]

    def snapshot_cells(self, snap: SnapshotInfo) -> list[str | Text]:
        result = snapshot_result(snap)
        style = f"bold {self.app.current_theme.error}" if result != "ok" else ""
        return [
            short_time(snap.time),
            Text(result, style=style),
            f"{int(snap.stats.get('files', 0)):,}",
            human_bytes(int(snap.stats.get("bytes", 0))),
            human_bytes(int(snap.stats.get("uploaded_bytes", 0))),
            ",".join(snap.tags),
        ]

    # ---- a run ------------------------------------------------------------------------------

    def action_start(self) -> None:
        if self.running:
            self.notify("a backup is already running", severity="warning")
            return
        self.running = True
        self.started = now_iso()
        self.cancel_event.clear()
        expected = (
            int(self.server_runs[-1].stats.get("bytes", 0)) or None if self.server_runs else None
        )
        self.query_one(ProgressPanel).start(expected)
        self.show_state()
        self.backup(expected)

    def action_cancel(self) -> None:
        if not self.running:
            self.notify("no backup is running", severity="warning")
            return
        self.cancel_event.set()
        self.query_one("#run-state", Static).update("Runs · cancelling…")

    @work(thread=True, exclusive=True, group="backup", exit_on_error=False)
    def backup(self, expected: int | None) -> None:
        report = progress_poster(self.post_message, "backup", expected)
        self.post_message(RunEnded(self.backend.backup(report, self.cancel_event)))

    @on(ProgressUpdate)
    def progressed(self, message: ProgressUpdate) -> None:
        if self.running:
            self.query_one(ProgressPanel).show(message.progress, message.expected_bytes)

    @on(RunEnded)
    def ended(self, message: RunEnded) -> None:
        run = message.run
        self.record(run)
        if run.outcome == OK:
            self.notify(
                f"snapshot {run.snapshot[:8]}: {run.files:,} files, {human_bytes(run.bytes)}",
                title="Backup done",
            )
        elif run.outcome == CANCELLED:
            self.notify(run.message, title="Backup cancelled", severity="warning", markup=False)
        else:
            self.notify(run.message, title="Backup incomplete", severity="error", markup=False)

    def worker_failed(self, group: str, message: str) -> None:
        if group == "backup":
            self.record(RunRecord(self.started, FAILED, message=message))
        else:
            self.query_one("#runs-status", Static).update(f"could not load runs: {message}")

    def record(self, run: RunRecord) -> None:
        self.running = False
        self.console.runs.append(run)
        self.query_one(ProgressPanel).stop()
        self.show_state()
        self.fill()
        self.load_history()
