"""Messages that carry worker results back to the screens (workers never touch widgets)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.widgets.tree import TreeNode

from rpybackup_core.client import ListedEntry, SnapshotInfo
from rpybackup_core.config import ClientConfig
from rpybackup_core.progress import Progress, ProgressCallback
from rpybackup_core.pruner import PruneRecord, PruneResult, RetentionSetting
from rpybackup_core.restorer import RestoreResult

from .data.fleet import Fleet
from .data.runs import RunRecord


class ProgressUpdate(Message):
    """A copy of a run's counters; a newer one replaces an older one still in the queue."""

    def __init__(self, kind: str, progress: Progress, expected_bytes: int | None) -> None:
        super().__init__()
        self.kind = kind
        self.progress = progress
        self.expected_bytes = expected_bytes

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProgressUpdate) and message.kind == self.kind


def progress_poster(
    post: Callable[[Message], bool], kind: str, expected_bytes: int | None, per_second: int = 10
) -> ProgressCallback:
    """A progress callback for a worker thread: posts a copy at most ``per_second`` times a
    second (and always the final event), so a fast run cannot flood the UI."""
    last = 0.0

    def report(progress: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if progress.phase != "done" and now - last < 1 / per_second:
            return
        last = now
        copy = dataclasses.replace(progress, errors=list(progress.errors))
        post(ProgressUpdate(kind, copy, expected_bytes))

    return report


class FleetLoaded(Message):
    def __init__(self, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet


class SnapshotsLoaded(Message):
    def __init__(self, snapshots: list[SnapshotInfo]) -> None:
        super().__init__()
        self.snapshots = snapshots


class ChildrenLoaded(Message):
    """A page of one directory of a snapshot's tree, for the browser node that asked for it:
    its first page (``continued`` false) or one after it, and how many entries follow."""

    def __init__(
        self,
        snapshot: str,
        node: TreeNode[Any],
        entries: list[ListedEntry],
        following: int = 0,
        continued: bool = False,
    ) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.node = node
        self.entries = entries
        self.following = following
        self.continued = continued


class RestoreFinished(Message):
    def __init__(self, what: str, target: Path, result: RestoreResult) -> None:
        super().__init__()
        self.what = what
        self.target = target
        self.result = result


class RunEnded(Message):
    def __init__(self, run: RunRecord) -> None:
        super().__init__()
        self.run = run


class ConfigSaved(Message):
    def __init__(self, config: ClientConfig) -> None:
        super().__init__()
        self.config = config


class PruneAnswered(Message):
    """A prune's result; ``result.dry_run`` tells a preview from a real prune."""

    def __init__(self, result: PruneResult) -> None:
        super().__init__()
        self.result = result


class PruneHistoryLoaded(Message):
    def __init__(self, records: list[PruneRecord]) -> None:
        super().__init__()
        self.records = records


class RetentionChanged(Message):
    def __init__(self, setting: RetentionSetting) -> None:
        super().__init__()
        self.setting = setting
