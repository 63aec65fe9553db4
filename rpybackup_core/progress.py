"""Progress as events: the archiver and restorer report, the CLI and console render."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Progress:
    """A running count for one backup or restore; the same object is reported repeatedly."""

    phase: str
    files_done: int = 0
    bytes_done: int = 0
    uploaded_bytes: int = 0
    bytes_total: int | None = None
    current: str = ""
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.bytes_done / elapsed if elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]
"""Called from the thread doing the work. Raising ``errors.Cancelled`` stops a backup before its
snapshot is committed (sealed chunks stay for the next run to reuse)."""


def ignore_progress(progress: Progress) -> None:
    """The default callback: report nothing."""
