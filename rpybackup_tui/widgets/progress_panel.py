"""A run's live counters: a bar plus files, bytes, uploaded bytes, rate and time left."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from rpybackup_core.progress import Progress

from ..data.format import duration, human_bytes


def describe(progress: Progress, expected_bytes: int | None) -> str:
    rate = progress.rate
    backup = progress.phase == "backup"
    parts = [
        f"{progress.files_done:,} files",
        f"{human_bytes(progress.bytes_done)} {'read' if backup else 'written'}",
    ]
    if backup:
        parts.append(f"{human_bytes(progress.uploaded_bytes)} uploaded")
    parts.append(f"{human_bytes(rate)}/s")
    if expected_bytes and rate > 0 and progress.bytes_done < expected_bytes:
        parts.append(f"ETA ~{duration((expected_bytes - progress.bytes_done) / rate)}")
    if progress.errors:
        parts.append(f"{len(progress.errors)} errors")
    return " · ".join(parts)


class ProgressPanel(Vertical):
    """Hidden until a run starts; shows the newest counters it was given."""

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=None, show_eta=False, id="bar")
        yield Static("", id="counters")
        yield Static("", id="current")

    def start(self, expected_bytes: int | None) -> None:
        self.display = True
        self.query_one(ProgressBar).update(total=expected_bytes or None, progress=0)
        self.query_one("#counters", Static).update("starting…")
        self.query_one("#current", Static).update("")

    def show(self, progress: Progress, expected_bytes: int | None) -> None:
        bar = self.query_one(ProgressBar)
        if expected_bytes and progress.bytes_done <= expected_bytes:
            bar.update(total=expected_bytes, progress=progress.bytes_done)
        else:
            # The run outgrew its estimate (the last snapshot's size): no honest percentage left.
            bar.update(total=None)
        self.query_one("#counters", Static).update(describe(progress, expected_bytes))
        self.query_one("#current", Static).update(progress.current[-200:])

    def stop(self) -> None:
        self.display = False
