"""Watch mode: a watchdog observer collects changes; after a quiet period, one snapshot.

Every snapshot walks all sources with the files cache, so unchanged files cost one ``stat``
and are never read. Events only decide *when* to run, so a lost event matters only if nothing
triggers a later run. watchdog reports lost events (an inotify queue overflow, watches it
could not rebuild) only in its log, so any warning it logs counts as a change: a full scan
follows. Sources that cannot be watched at all are scanned every ``max_delay``; a watch that
dies (its directory was removed) is re-established and followed by a full scan.

Failures to reach the server put the collected changes back and retry with capped exponential
backoff. ``stop()`` (SIGTERM in the CLI) never interrupts a run: the snapshot in flight either
commits or, if the process is killed, leaves nothing the server lists.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from .archiver import BackupResult, normalize_sources
from .client import BackupClient
from .errors import (
    AuthenticationFailed,
    BackupIncomplete,
    ConfigError,
    FingerprintMismatch,
    PermissionDenied,
    RPyBackupError,
    UsageError,
    WatchError,
)

log = logging.getLogger(__name__)

# Swap, lock and backup files of vim and emacs: changing them alone is not worth a snapshot.
EDITOR_TEMP_PATTERNS = ("*.swp", "*.swx", "*~", ".#*", "#*#", "4913")

# Opening and reading files (which every backup run does) is not a change, so only these.
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    DirAttribEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]
# On Linux watchdog adds a "directory modified" event to every child event (an editor's swap
# file would trigger snapshots through its directory); elsewhere it can be the only signal.
if not sys.platform.startswith("linux"):
    CHANGE_EVENTS.append(DirModifiedEvent)

WATCHDOG_LOGGER = "watchdog.observers"
HEARTBEAT_SECONDS = 300.0
HEALTH_SECONDS = 5.0
BACKOFF_FIRST = 1.0
MAX_RESULT_TEXT = 500

# Retrying cannot fix these: the watcher ends with the error.
PERMANENT_ERRORS = (
    AuthenticationFailed,
    FingerprintMismatch,
    ConfigError,
    UsageError,
    PermissionDenied,
)


@dataclass(frozen=True)
class Pending:
    """Changes collected since the last run: how many, and when the first and last came."""

    count: int
    first: float
    last: float


@dataclass(frozen=True)
class WatchRun:
    """One attempt at a snapshot."""

    changes: int
    snapshot: str | None
    error: str | None
    seconds: float


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ChangeCollector(FileSystemEventHandler):
    """Counts relevant events (thread-safe) and tells when a snapshot is due."""

    def __init__(
        self,
        sources: list[Path],
        excludes: list[str],
        cache_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = sources
        self.excludes = excludes
        self.cache_dir = cache_dir
        self.clock = clock
        self.ignored = 0
        self.last_ignored: Path | None = None
        self._cond = threading.Condition()
        self._pending: Pending | None = None

    # ---- filtering ----------------------------------------------------------------------------

    def accepts(self, path: Path) -> bool:
        """Whether a change at ``path`` belongs in a snapshot (the archiver's rules)."""
        if _within(path, self.cache_dir):
            return False
        source = next((s for s in self.sources if _within(path, s)), None)
        if source is None:
            return False
        if any(fnmatch.fnmatch(path.name, p) for p in EDITOR_TEMP_PATTERNS):
            return False
        current = path
        while current != source:
            text = str(current)
            if any(
                fnmatch.fnmatch(current.name, p) or fnmatch.fnmatch(text, p) for p in self.excludes
            ):
                return False
            current = current.parent
        return True

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [Path(os.fsdecode(p)) for p in (event.src_path, event.dest_path) if p]
        if any(self.accepts(path) for path in paths):
            self.note()
        else:
            with self._cond:
                self.ignored += 1
                self.last_ignored = paths[0]

    # ---- pending changes ----------------------------------------------------------------------

    def note(self, count: int = 1, when: float | None = None) -> None:
        moment = self.clock() if when is None else when
        self.put_back(Pending(count, moment, moment))

    def put_back(self, pending: Pending) -> None:
        """Merge changes in (new ones, or those of a run that failed)."""
        with self._cond:
            old = self._pending
            if old is not None:
                pending = Pending(
                    old.count + pending.count,
                    min(old.first, pending.first),
                    max(old.last, pending.last),
                )
            self._pending = pending
            self._cond.notify_all()

    def take(self) -> Pending | None:
        with self._cond:
            pending, self._pending = self._pending, None
            return pending

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_due(
        self,
        quiet: float,
        max_delay: float,
        not_before: float,
        wake_by: float,
        stopping: threading.Event,
    ) -> bool:
        """Block until a snapshot is due (True), or ``wake_by`` passes or a stop (False).

        Due: ``quiet`` seconds after the last change, or ``max_delay`` after the first one
        under a constant stream; never before ``not_before`` (the backoff).
        """
        with self._cond:
            while not stopping.is_set():
                now = self.clock()
                limit = wake_by
                if self._pending is not None:
                    due = max(
                        not_before, min(self._pending.last + quiet, self._pending.first + max_delay)
                    )
                    if due <= now:
                        return True
                    limit = min(limit, due)
                if limit <= now:
                    return False
                self._cond.wait(limit - now)
            return False


class LostEventsAlarm(logging.Handler):
    """Turns a warning from watchdog's observers into a change, hence a full scan."""

    def __init__(self, collector: ChangeCollector) -> None:
        super().__init__(logging.WARNING)
        self.collector = collector

    def emit(self, record: logging.LogRecord) -> None:
        self.collector.note()


class Watcher:
    """Runs until ``stop()``: watch the sources, back them up after changes, report state."""

    def __init__(
        self,
        client: BackupClient,
        paths: list[str] | None = None,
        quiet_seconds: float | None = None,
        max_delay: float | None = None,
        backoff_max: float = 300.0,
        on_run: Callable[[WatchRun], None] = lambda run: None,
    ) -> None:
        config = client.config
        self.client = client
        self.sources = normalize_sources(paths or config.sources)
        self.quiet = float(quiet_seconds if quiet_seconds is not None else config.quiet_seconds)
        self.max_delay = float(max_delay if max_delay is not None else config.max_delay)
        if self.quiet <= 0 or self.max_delay <= 0:
            raise UsageError("the quiet period and the maximum delay must be positive")
        self.backoff_max = backoff_max
        self.on_run = on_run
        cache = Path(os.path.abspath(config.cache_path))  # event paths are absolute
        self.collector = ChangeCollector(self.sources, config.excludes, cache)
        self.last_backup: str | None = None
        self.last_result = ""
        self._stopping = threading.Event()
        self._observer: BaseObserver | None = None
        self._watches: dict[tuple[str, bool], ObservedWatch] = {}
        self._unwatchable: set[tuple[str, bool]] = set()
        self._backoff = BACKOFF_FIRST
        self._retry_at = 0.0
        self._next_heartbeat = 0.0
        self._next_blind_scan = 0.0

    def stop(self) -> None:
        """Ask the loop to end after the run in flight; safe from any thread."""
        self._stopping.set()
        self.collector.wake()

    def run(self) -> None:
        clock = self.collector.clock
        watchdog_log = logging.getLogger(WATCHDOG_LOGGER)
        # Its warnings must be emitted (to reach the alarm) whatever level the user chose.
        watchdog_log.setLevel(min(watchdog_log.getEffectiveLevel(), logging.WARNING))
        alarm = LostEventsAlarm(self.collector)
        self._observer = self._new_observer()
        watchdog_log.addHandler(alarm)
        try:
            self._ensure_watches(first=True)
            # Whatever changed while nothing was watching: a full scan right away.
            self.collector.note(when=clock() - self.quiet)
            log.info(
                "watching %s (quiet %.0fs, max delay %.0fs)",
                ", ".join(map(str, self.sources)),
                self.quiet,
                self.max_delay,
            )
            while not self._stopping.is_set():
                self._ensure_watches()
                self._heartbeat()
                wake_by = min(self._next_heartbeat, clock() + HEALTH_SECONDS)
                if self.collector.wait_due(
                    self.quiet, self.max_delay, self._retry_at, wake_by, self._stopping
                ):
                    self._attempt()
        finally:
            self._observer.stop()
            self._observer.join(timeout=10)
            watchdog_log.removeHandler(alarm)
            self._report("idle")
            log.info("watch stopped")

    # ---- observing ----------------------------------------------------------------------------

    def _new_observer(self) -> BaseObserver:
        # Started empty, so one unwatchable path cannot keep the others from being watched.
        try:
            observer = Observer()
            observer.start()
        except OSError as exc:
            raise WatchError(f"cannot start the file system observer: {exc}") from exc
        return observer

    def _targets(self) -> set[tuple[str, bool]]:
        """A directory source is watched recursively; anything else via its parent directory.

        A symlink source is backed up as the link itself (as the archiver does), so its target
        is not watched.
        """
        return {
            (str(source), True)
            if source.is_dir() and not source.is_symlink()
            else (str(source.parent), False)
            for source in self.sources
        }

    def _ensure_watches(self, first: bool = False) -> None:
        """(Re)establish every watch; changes while one was missing are caught by a full scan."""
        assert self._observer is not None
        if not self._observer.is_alive():
            log.warning("the file system observer stopped; starting a new one")
            self._observer.stop()
            self._observer = self._new_observer()
            self._watches.clear()
        alive = {emitter.watch for emitter in list(self._observer.emitters) if emitter.is_alive()}
        wanted = self._targets()
        for key, watch in list(self._watches.items()):
            if key not in wanted or watch not in alive:
                del self._watches[key]
                self._observer.unschedule(watch)
        restored = False
        unwatchable: set[tuple[str, bool]] = set()
        for key in wanted - self._watches.keys():
            path, recursive = key
            try:
                self._watches[key] = self._observer.schedule(
                    self.collector, path, recursive=recursive, event_filter=CHANGE_EVENTS
                )
            except FileNotFoundError:
                continue  # nothing there to back up; retried, and scanned once it appears
            except OSError as exc:
                if key not in self._unwatchable:
                    log.warning(
                        "cannot watch %s (%s); scanning it every %.0fs instead",
                        path,
                        exc.strerror or exc,
                        self.max_delay,
                    )
                unwatchable.add(key)
                continue
            restored = True
        self._unwatchable = unwatchable
        if restored and not first:
            log.info("watch re-established; scanning everything")
            self.collector.note()
        now = self.collector.clock()
        if self._unwatchable and now >= self._next_blind_scan:
            if not first:
                self.collector.note()
            self._next_blind_scan = now + self.max_delay

    # ---- running ------------------------------------------------------------------------------

    def _attempt(self) -> None:
        pending = self.collector.take()
        if pending is None:
            return
        started = self.collector.clock()
        log.info("backing up after %d change(s)", pending.count)
        try:
            result = self.client.backup([str(source) for source in self.sources], tags=["watch"])
            error = None
        except BackupIncomplete as exc:
            if not isinstance(exc.result, BackupResult):  # nothing was committed
                self._failed(pending, exc, started)
                return
            # Committed; typically a file that vanished between its event and the scan.
            result, error = exc.result, f"error: {exc}"
        except PERMANENT_ERRORS:
            self.collector.put_back(pending)
            raise
        except RPyBackupError as exc:
            self._failed(pending, exc, started)
            return
        self._backoff = BACKOFF_FIRST
        self._retry_at = 0.0
        self.last_backup = result.time
        self.last_result = _result_text(error or "ok")
        seconds = self.collector.clock() - started
        log.info(
            "snapshot %s: %d change(s), %d files, %.1fs",
            result.snapshot[:8],
            pending.count,
            result.files,
            seconds,
        )
        self._report("watching")
        self.on_run(WatchRun(pending.count, result.snapshot, error, seconds))

    def _failed(self, pending: Pending, exc: RPyBackupError, started: float) -> None:
        """Keep the changes, wait longer each time (capped), tell the server if it listens."""
        self.collector.put_back(pending)
        now = self.collector.clock()
        self._retry_at = now + self._backoff
        log.warning(
            "backup failed: %s; keeping %d change(s), retrying in %.0fs",
            exc,
            pending.count,
            self._backoff,
        )
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self.last_result = _result_text(f"error: {exc}")
        self._report("watching")
        self.on_run(WatchRun(pending.count, None, str(exc), now - started))

    def _heartbeat(self) -> None:
        """Report regularly, so a watcher that died without a word shows up as stale."""
        now = self.collector.clock()
        if now >= self._next_heartbeat:
            self._report("watching")
            self._next_heartbeat = now + HEARTBEAT_SECONDS

    def _report(self, state: str) -> None:
        try:
            self.client.report_state(state, self.last_backup, self.last_result)
        except RPyBackupError as exc:
            log.debug("could not report state %r to the server: %s", state, exc)


def _result_text(text: str) -> str:
    """What the server accepts as a result: short and printable."""
    return "".join(c if c.isprintable() else " " for c in text)[:MAX_RESULT_TEXT]
