"""The console's only door to the server: blocking calls, run by the screens in worker threads.

Every call goes through rpybackup_core's client API, which opens a fresh connection per call,
so a server restart between two calls needs nothing special here.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

from rpybackup_core.admin import AdminClient
from rpybackup_core.archiver import BackupResult
from rpybackup_core.client import BackupClient, ListedEntry, SnapshotInfo
from rpybackup_core.config import ClientConfig
from rpybackup_core.errors import BackupIncomplete, Cancelled, PermissionDenied
from rpybackup_core.logs import LogLine
from rpybackup_core.progress import Progress, ProgressCallback
from rpybackup_core.pruner import PruneRecord, PruneResult, RetentionSetting
from rpybackup_core.restorer import RestoreResult
from rpybackup_core.retention import RetentionPolicy
from rpybackup_core.terminal import printable

from .fleet import Fleet, own_row, status_row
from .runs import CANCELLED, INCOMPLETE, OK, RunRecord

SERVER_LOG_LINES = 500


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Backend:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.client = BackupClient(config)
        self.admin = AdminClient(config)
        self.is_admin: bool | None = None
        """Unknown until the server first answers an admin request (or refuses it)."""

    @property
    def name(self) -> str:
        return self.config.name

    def use_config(self, config: ClientConfig) -> None:
        """Switch to a freshly saved config; later calls use its server address."""
        self.config = config
        self.client = BackupClient(config)
        self.admin = AdminClient(config)
        self.is_admin = None

    def save_config(self, config: ClientConfig) -> None:
        config.save()
        self.use_config(config)

    # ---- status -----------------------------------------------------------------------------

    def fleet(self) -> Fleet:
        """Every client for an admin identity; this client alone for any other."""
        if self.is_admin is not False:
            try:
                status = self.admin.status()
            except PermissionDenied:
                self.is_admin = False
            else:
                self.is_admin = True
                now = datetime.datetime.now(datetime.UTC)
                return Fleet(admin=True, rows=[status_row(c, now) for c in status.clients])
        return Fleet(admin=False, rows=[own_row(self.name, self.client.snapshots())])

    def server_log(self, level: str) -> list[LogLine] | None:
        """The server's recent lines at ``level`` and above; None for a plain identity."""
        if self.is_admin is False:
            return None
        try:
            lines = self.admin.log_lines(level, limit=SERVER_LOG_LINES)
        except PermissionDenied:
            self.is_admin = False
            return None
        self.is_admin = True
        return lines

    # ---- pruning (admin identity) -----------------------------------------------------------

    def prune_preview(self, client: str) -> PruneResult:
        """A dry run: the plan with the rules that keep each snapshot, and the space it frees."""
        return self.admin.prune(client, dry_run=True)

    def prune(self, client: str) -> PruneResult:
        return self.admin.prune(client)

    def prune_history(self, client: str | None) -> list[PruneRecord]:
        return self.admin.prune_history(client)

    def set_retention(self, client: str, policy: RetentionPolicy | None) -> RetentionSetting:
        """Give the client its own policy, or None to follow the server default."""
        return self.admin.set_retention(client, policy)

    # ---- snapshots and files ----------------------------------------------------------------

    def snapshots(self) -> list[SnapshotInfo]:
        return self.client.snapshots()

    def children(
        self, snapshot: str, path: str, limit: int, after: str | None = None, count: bool = True
    ) -> tuple[list[ListedEntry], int]:
        """One directory's entries, without descending (the browser loads a level at a time):
        up to ``limit`` of them in name order, after the name ``after`` if given, and how many
        follow those (with ``count``; otherwise 1 if any do, and the directory is read only
        that far). The directory's tree is read a chunk at a time and only one page is kept,
        so a folder of a million files costs the console one page of them."""
        page: list[ListedEntry] = []
        following = 0
        with self.client.listing(path, snapshot, recursive=False) as (_, entries):
            for entry in entries:
                if after is not None and entry.node.name <= after:
                    continue
                if len(page) < limit:
                    page.append(entry)
                    continue
                following += 1
                if not count:
                    break
        return page, following

    def restore(
        self, snapshot: str, target: Path, include: str | None, progress: ProgressCallback
    ) -> RestoreResult:
        _, result = self.client.restore(snapshot, target, include, progress)
        return result

    # ---- runs -------------------------------------------------------------------------------

    def backup(self, report: ProgressCallback, cancel: threading.Event) -> RunRecord:
        """Back up the configured sources; setting ``cancel`` stops the run before it commits.

        A cancelled or partly unreadable run is an outcome, not a failure; anything else (the
        server is gone, the sources are missing) raises.
        """
        started = now_iso()

        def progress(event: Progress) -> None:
            # Once the phase is "done" the snapshot is committed: too late to call it cancelled.
            if cancel.is_set() and event.phase != "done":
                raise Cancelled("cancelled; nothing was committed")
            report(event)

        try:
            result = self.client.backup(progress=progress)
        except Cancelled as exc:
            return RunRecord(started, CANCELLED, message=str(exc))
        except BackupIncomplete as exc:
            if not isinstance(exc.result, BackupResult):
                raise
            # It names an unreadable file: shown printable wherever the run is listed.
            return _record(started, INCOMPLETE, exc.result, printable(str(exc)))
        return _record(started, OK, result, "")


def _record(started: str, outcome: str, result: BackupResult, message: str) -> RunRecord:
    return RunRecord(
        started=started,
        outcome=outcome,
        files=result.files,
        bytes=result.bytes,
        uploaded_bytes=result.uploaded_bytes,
        snapshot=result.snapshot,
        message=message,
    )
