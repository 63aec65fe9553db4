"""Snapshots → a snapshot's tree, loaded one directory at a time → details → restore."""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, Tree
from textual.widgets.tree import TreeNode

from rpybackup_core.client import ListedEntry, SnapshotInfo
from rpybackup_core.terminal import printable
from rpybackup_core.tree import DIR, FILE, SYMLINK

from ..data.format import display_path, human_bytes, short_time
from ..dialogs.restore_target import RestoreDialog
from ..messages import (
    ChildrenLoaded,
    ProgressUpdate,
    RestoreFinished,
    SnapshotsLoaded,
    progress_poster,
)
from ..widgets.progress_panel import ProgressPanel
from .base import AreaScreen

PAGE = 1000
"""Tree rows loaded at once; a huge directory shows a 'more' row that loads the next page."""


@dataclass
class Entry:
    """What a tree row stands for: a stored entry, or the rest of a long directory (the
    ``following`` entries after the name ``after``)."""

    listed: ListedEntry | None = None
    loaded: bool = False
    loading: bool = False
    after: str | None = None
    following: int = 0


def describe_entry(listed: ListedEntry) -> str:
    node = listed.node
    when = datetime.datetime.fromtimestamp(node.mtime_ns / 1e9, datetime.UTC)
    mode = stat.filemode(_type_bits(node.kind) | node.mode)
    lines = [printable(listed.path), f"{node.kind} · {mode} · {when:%Y-%m-%d %H:%M} UTC"]
    if node.kind == FILE:
        lines.append(f"{human_bytes(node.size)} ({node.size:,} bytes) · {node.digest[:23]}…")
    if node.kind == SYMLINK:
        lines.append(f"→ {printable(node.target)}")
    return "\n".join(lines)


def _path_of(node: TreeNode[Entry]) -> str:
    """The snapshot path a tree row stands for ("/" for the snapshot itself)."""
    listed = node.data.listed if node.data is not None else None
    return listed.path if listed is not None else "/"


def _type_bits(kind: str) -> int:
    return {DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}.get(kind, stat.S_IFREG)


def label_for(listed: ListedEntry) -> Text:
    node = listed.node
    name = printable(os.path.basename(listed.path))
    if node.kind == DIR:
        return Text(f"{name}/", style="bold")
    if node.kind == SYMLINK:
        return Text(f"{name} → {printable(node.target)}", style="italic")
    return Text.assemble(name, (f"  {human_bytes(node.size)}", "dim"))


class BrowserScreen(AreaScreen):
    AREA = "browse"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "reload", "Reload"),
        Binding("r", "restore_selected", "Restore item"),
        Binding("a", "restore_all", "Restore snapshot"),
        Binding("tab", "app.focus_next", "Switch pane", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[SnapshotInfo] = []
        self.current: SnapshotInfo | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="browser"):
            with Vertical(id="snapshot-pane"):
                yield Static("Snapshots", classes="area-title")
                yield DataTable(id="snapshots", cursor_type="row", zebra_stripes=True)
            with Vertical(id="tree-pane"):
                yield Tree[Entry]("pick a snapshot (enter)", Entry(), id="files")
                yield Static("", id="details", markup=False)
        yield ProgressPanel(id="restore-progress")
        yield Static("loading snapshots…", id="browser-status", classes="status-line", markup=False)

    def on_mount(self) -> None:
        self.query_one("#snapshots", DataTable).add_columns("Time (UTC)", "Files", "Size", "Tags")
        self.query_one(ProgressPanel).stop()

    def on_screen_resume(self) -> None:
        # Fresh on every visit: a backup made on the runs screen shows up here.
        self.call_after_refresh(self.load_snapshots)

    # ---- snapshots --------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.set_status("loading snapshots…")
        self.load_snapshots()

    @work(thread=True, exclusive=True, group="snapshots", exit_on_error=False)
    def load_snapshots(self) -> None:
        self.post_message(SnapshotsLoaded(self.backend.snapshots()))

    @on(SnapshotsLoaded)
    def show_snapshots(self, message: SnapshotsLoaded) -> None:
        table = self.query_one("#snapshots", DataTable)
        # The row the cursor is on stays under it, unless it is the newest (row 0), which
        # stays the newest.
        row = table.cursor_row
        keep = self.snapshots[row].id if 0 < row < len(self.snapshots) else None
        self.snapshots = list(reversed(message.snapshots))
        table.clear()
        for snap in self.snapshots:
            table.add_row(
                short_time(snap.time),
                f"{int(snap.stats.get('files', 0)):,}",
                human_bytes(int(snap.stats.get("bytes", 0))),
                # Tags are any short text a client chose: shown as text, never as markup.
                Text(printable(",".join(snap.tags)) or "—"),
                key=snap.id,
            )
        ids = [snap.id for snap in self.snapshots]
        if keep in ids:
            table.move_cursor(row=ids.index(keep))
        if self.current is None:
            count = len(self.snapshots)
            self.set_status(
                f"{count} snapshot(s) · enter opens one"
                if count
                else "no snapshots yet · start one on the runs screen (4)"
            )

    @on(DataTable.RowSelected, "#snapshots")
    def open_snapshot(self, event: DataTable.RowSelected) -> None:
        snap = next(s for s in self.snapshots if s.id == event.row_key.value)
        self.current = snap
        tree = self.query_one("#files", Tree)
        tree.reset(Text(f"snapshot of {short_time(snap.time)}", style="bold"), Entry())
        tree.root.expand()
        tree.focus()
        self.set_status(
            "space opens a folder · r restores the highlighted item · "
            "a the whole snapshot · tab switches panes"
        )

    # ---- the tree ---------------------------------------------------------------------------

    @on(Tree.NodeExpanded, "#files")
    def expanded(self, event: Tree.NodeExpanded[Entry]) -> None:
        entry = event.node.data
        if self.current is None or entry is None or entry.loaded or entry.loading:
            return
        entry.loading = True
        self.load_children(self.current.id, event.node, _path_of(event.node))

    @work(thread=True, exclusive=False, group="tree", exit_on_error=False)
    def load_children(
        self, snapshot: str, node: TreeNode[Entry], path: str, rest: Entry | None = None
    ) -> None:
        """Runs in a thread: the node only travels back with the answer, it is not touched.
        With ``rest``, the page after its name: a snapshot never changes, so how many follow
        that page is known without reading the directory to its end."""
        if rest is None:
            entries, following = self.backend.children(snapshot, path, PAGE)
        else:
            entries, more = self.backend.children(snapshot, path, PAGE, rest.after, count=False)
            following = rest.following - len(entries) if more else 0
        self.post_message(ChildrenLoaded(snapshot, node, entries, following, rest is not None))

    @on(ChildrenLoaded)
    def add_children(self, message: ChildrenLoaded) -> None:
        if self.current is None or message.snapshot != self.current.id:
            return
        node = message.node
        if node.data is not None:
            node.data.loaded, node.data.loading = True, False
        for row in list(node.children):
            if row.data is not None and row.data.after is not None:
                row.remove()
        entries = message.entries
        if not message.continued and not message.following:
            # A folder that fits one page shows its subfolders first; a longer one stays in
            # name order, the order its pages come in.
            entries = sorted(entries, key=lambda e: (e.node.kind != DIR, e.path))
        for listed in entries:
            if listed.node.kind == DIR:
                node.add(label_for(listed), Entry(listed))
            else:
                node.add_leaf(label_for(listed), Entry(listed, loaded=True))
        if message.following:
            node.add_leaf(
                Text(f"… {message.following:,} more (enter)", style="dim"),
                Entry(
                    loaded=True, after=message.entries[-1].node.name, following=message.following
                ),
            )

    @on(Tree.NodeSelected, "#files")
    def selected(self, event: Tree.NodeSelected[Entry]) -> None:
        entry = event.node.data
        parent = event.node.parent
        if self.current is None or entry is None or entry.after is None or parent is None:
            return
        if not entry.loading:
            # The row goes when the page comes; if it fails, selecting it asks again.
            entry.loading = True
            self.load_children(self.current.id, parent, _path_of(parent), entry)

    @on(Tree.NodeHighlighted, "#files")
    def highlighted(self, event: Tree.NodeHighlighted[Entry]) -> None:
        entry = event.node.data
        details = self.query_one("#details", Static)
        details.update(describe_entry(entry.listed) if entry and entry.listed else "")

    # ---- restore ----------------------------------------------------------------------------

    def action_restore_selected(self) -> None:
        node = self.query_one("#files", Tree).cursor_node
        entry = node.data if node else None
        if self.current is None or entry is None:
            self.notify("open a snapshot first (enter on a row)", severity="warning")
            return
        if entry.listed is None:
            self.action_restore_all()
            return
        listed = entry.listed
        size = listed.node.size if listed.node.kind == FILE else None
        self.ask_target(printable(listed.path), listed.path, size)

    def action_restore_all(self) -> None:
        if self.current is None:
            self.notify("open a snapshot first (enter on a row)", severity="warning")
            return
        size = int(self.current.stats.get("bytes", 0)) or None
        self.ask_target(f"snapshot {self.current.id[:8]}", None, size)

    def ask_target(self, what: str, include: str | None, size: int | None) -> None:
        """Restore ``include`` (all with None), shown as ``what``, where the user chooses."""
        assert self.current is not None
        snapshot = self.current.id
        suggestion = display_path(Path.home() / "restore" / snapshot[:8])

        def chosen(target: Path | None) -> None:
            if target is not None:
                self.query_one(ProgressPanel).start(size)
                self.set_status(f"restoring {what} to {display_path(target)}…")
                self.restore(snapshot, target, include, what, size)

        self.app.push_screen(RestoreDialog(what, suggestion), chosen)

    @work(thread=True, exclusive=True, group="restore", exit_on_error=False)
    def restore(
        self, snapshot: str, target: Path, include: str | None, what: str, size: int | None
    ) -> None:
        report = progress_poster(self.post_message, "restore", size)
        result = self.backend.restore(snapshot, target, include, report)
        self.post_message(RestoreFinished(what, target, result))

    @on(ProgressUpdate)
    def restore_progress(self, message: ProgressUpdate) -> None:
        self.query_one(ProgressPanel).show(message.progress, message.expected_bytes)

    @on(RestoreFinished)
    def restored(self, message: RestoreFinished) -> None:
        self.query_one(ProgressPanel).stop()
        result = message.result
        summary = (
            f"restored {message.what} to {display_path(message.target)}: "
            f"{result.files} files, "
            f"{human_bytes(result.bytes)}"
        )
        if result.errors:
            first_error = printable(result.errors[0])
            self.set_status(f"{summary}; {len(result.errors)} failed: {first_error}", error=True)
            self.notify(first_error, title="Restore incomplete", severity="error", markup=False)
        else:
            self.set_status(f"{summary}, every file verified")
            self.notify(summary, title="Restore done", markup=False)

    def forget_loading(self, node: TreeNode[Entry]) -> None:
        """After a failed load, expanding those folders again asks again."""
        if node.data is not None and node.data.loading:
            node.data.loading = False
            node.collapse()
        for child in node.children:
            self.forget_loading(child)

    def set_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#browser-status", Static)
        status.set_class(error, "-error")
        status.update(text)

    def worker_failed(self, group: str, message: str) -> None:
        if group == "restore":
            self.query_one(ProgressPanel).stop()
            self.set_status(f"restore failed: {message}", error=True)
        elif group == "tree":
            self.forget_loading(self.query_one("#files", Tree).root)
            self.set_status(
                f"could not open the folder: {message} · expand it to retry", error=True
            )
        else:
            self.set_status(f"could not list snapshots: {message} · u to retry", error=True)
