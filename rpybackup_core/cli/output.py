"""What commands print: JSON documents for scripts, tables and progress bars for people."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from ..batching import batched
from ..progress import Progress, ProgressCallback, ignore_progress
from ..terminal import printable

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A Rich console made when first used: importing Rich costs ~26 ms, which every command
    paid at start-up, though JSON output and most runs without a terminal never need it."""

    def __init__(self, to_stderr: bool = False) -> None:
        self._to_stderr = to_stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                stderr=self._to_stderr, highlight=False, soft_wrap=not self._to_stderr
            )
        return self._console

    @property
    def _stream(self) -> TextIO:
        # Looked up at each use, as Rich does: a test or a caller may replace sys.stdout.
        return sys.stderr if self._to_stderr else sys.stdout

    @property
    def is_terminal(self) -> bool:
        """Asked before anything is printed; Rich is loaded only for a terminal."""
        return self._stream.isatty() and self.console.is_terminal

    def print(self, *objects: Any, markup: bool = True, **options: Any) -> None:
        """Plain text (no markup, no options) goes straight to a stream that is not a terminal:
        a script or a log reading it gets the same line, and the command does not import Rich
        to write it (~25 ms of CPU at the end of a restore)."""
        stream = self._stream
        if (
            not markup
            and not options
            and all(isinstance(item, str) for item in objects)
            and not stream.isatty()
        ):
            stream.write(" ".join(objects) + "\n")
            return
        self.console.print(*objects, markup=markup, **options)

    def print_lines(self, lines: Iterable[str]) -> None:
        """Plain lines, as ``print(line, markup=False)`` gives each, written a batch at a time
        to a stream that is not a terminal."""
        stream = self._stream
        if stream.isatty():
            for line in lines:
                self.console.print(line, markup=False)
            return
        for batch in batched(lines, _WRITE_BATCH):
            stream.write("\n".join(batch) + "\n")


stdout = LazyConsole()
stderr = LazyConsole(to_stderr=True)

# Lines or items given to one write of a long listing: one write each would be one system
# call each where Python's output is unbuffered (PYTHONUNBUFFERED).
_WRITE_BATCH = 512
# An item no listing holds, to find where the list goes in its document.
_PLACEHOLDER = "\u0000listed items\u0000"


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def print_json_streamed(document: dict[str, Any], key: str, items: Iterable[Any]) -> None:
    """``print_json`` of ``document`` with the list ``items`` under ``key``, the same text,
    written a batch of items at a time: a listing of millions of entries is never held whole."""
    encode = json.JSONEncoder(indent=2, sort_keys=True).encode
    batches = batched(items, _WRITE_BATCH)
    first = next(batches, [])
    text = encode({**document, key: first})
    if not first:
        sys.stdout.write(text + "\n")
        return
    # Each batch is encoded in the whole document, at its depth, and cut out of it: what is
    # around the list is the same for every batch.
    head, tail = encode({**document, key: [_PLACEHOLDER]}).split(encode(_PLACEHOLDER))
    separator = "," + head[head.rindex("\n") :]
    sys.stdout.write(text[: len(text) - len(tail)])
    for batch in batches:
        text = encode({**document, key: batch})
        sys.stdout.write(separator + text[len(head) : len(text) - len(tail)])
    sys.stdout.write(tail + "\n")
    sys.stdout.flush()


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def table(columns: list[str], rows: list[list[str]]) -> None:
    """Rows of plain text: names in cells are never read as Rich markup or sent raw to the
    terminal."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, pad_edge=False, show_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(Text(printable(cell)) for cell in row))
    stdout.print(grid)


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[ProgressCallback]:
    """A Rich progress bar on a terminal, refreshed at most ten times a second."""
    if not enabled or not stderr.is_terminal:
        yield ignore_progress
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[files]} files"),
        console=stderr.console,
        transient=True,
    )
    task = bar.add_task(label, total=None, files=0)
    last = 0.0

    def update(progress: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < 0.1 and progress.phase != "done":
            return
        last = now
        bar.update(
            task,
            completed=progress.bytes_done,
            total=progress.bytes_total,
            files=progress.files_done,
        )

    with bar:
        yield update
