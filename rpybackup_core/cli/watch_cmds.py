"""Commands that keep backups going without a person: watch, schedule install/remove/show."""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
from pathlib import Path

from ..client import BackupClient
from ..config import ClientConfig, parse_duration
from ..errors import ConfigError, ScheduleError, UsageError
from ..schedule import job_for, parse_schedule, scheduler_for
from ..watch import Watcher, WatchRun
from .output import stderr, stdout

_SIGNAL_POLL_SECONDS = 0.25


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="stay running; back up after changes settle")
    p.add_argument("paths", nargs="*", help="what to watch (default: the configured sources)")
    p.add_argument(
        "--quiet-seconds",
        type=float,
        help="back up after this many seconds without a change (default: config)",
    )
    p.add_argument(
        "--max-delay",
        metavar="DURATION",
        help="back up at the latest this long after the first change, even while "
        "changes keep coming (default: config, 10m)",
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("schedule", help="run backups from systemd, cron or the Task Scheduler")
    p.add_argument("action", choices=["install", "remove", "show"])
    when = p.add_mutually_exclusive_group()
    when.add_argument("--every", metavar="DURATION", help="e.g. 30m, 6h, 1d")
    when.add_argument(
        "--calendar",
        metavar="SPEC",
        help="hourly, daily (default), weekly, monthly, HH:MM, or the scheduler's "
        "own syntax (systemd OnCalendar, 5-field cron)",
    )
    p.add_argument(
        "--via",
        choices=["systemd", "cron", "schtasks"],
        help="the scheduler (default: systemd where it runs, Task Scheduler on Windows, else cron)",
    )
    p.set_defaults(func=cmd_schedule)


def _load(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig.load(Path(args.client_config))


def _print_run(run: WatchRun) -> None:
    """One line per snapshot; failed attempts are already logged with their retry time."""
    if run.snapshot is None:
        return
    if run.error:
        stderr.print(f"snapshot {run.snapshot[:8]} saved with problems: {run.error}", markup=False)
    else:
        stdout.print(
            f"snapshot {run.snapshot[:8]} saved ({run.changes} change(s), {run.seconds:.1f}s)",
            markup=False,
        )


def cmd_watch(args: argparse.Namespace) -> int:
    max_delay = None
    if args.max_delay:
        try:
            max_delay = parse_duration(args.max_delay)
        except ConfigError as exc:
            raise UsageError(f"--max-delay: {exc}") from exc
    if args.quiet_seconds is not None and args.quiet_seconds <= 0:
        raise UsageError("--quiet-seconds must be positive")
    watcher = Watcher(
        BackupClient(_load(args)),
        args.paths or None,
        args.quiet_seconds,
        max_delay,
        on_run=_print_run,
    )

    def stop(signum: int, _frame: object) -> None:
        stderr.print(f"{signal.Signals(signum).name}: stopping after the run in flight")
        watcher.stop()

    # The loop runs in a worker, so the handler never interrupts it while it holds a lock.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="watch") as pool:
        future = pool.submit(watcher.run)
        try:
            _wait_interruptibly(future)
        finally:
            watcher.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def _wait_interruptibly(future: concurrent.futures.Future[None]) -> None:
    """Wait for the watch loop, waking up now and then.

    The kernel may hand SIGTERM to any thread; its Python handler only runs in the main thread,
    and a main thread in a wait without a timeout may never wake up to run it (seen: one run in
    twelve of the SIGTERM test never stopped).
    """
    while True:
        try:
            future.result(timeout=_SIGNAL_POLL_SECONDS)
            return
        except concurrent.futures.TimeoutError:
            continue


def cmd_schedule(args: argparse.Namespace) -> int:
    config = _load(args)
    schedule = parse_schedule(args.every, args.calendar)
    scheduler = scheduler_for(job_for(config), args.via)
    if args.action == "show":
        try:
            installed = scheduler.installed()
        except ScheduleError as exc:  # e.g. no crontab program here: show what would be
            stderr.print(f"note: {exc}", markup=False)
            installed = None
        if installed is not None:
            stdout.print(f"installed ({scheduler.kind}):", markup=False)
            stdout.print(installed, markup=False, end="")
        else:
            stdout.print(
                f"not installed; 'schedule install' would set up ({scheduler.kind}):", markup=False
            )
            stdout.print(scheduler.render(schedule), markup=False, end="")
        return 0
    if args.action == "install":
        if not config.sources:
            raise ScheduleError(
                f"{config.path}: backup.sources is empty; a scheduled run would "
                "have nothing to back up"
            )
        stdout.print(scheduler.install(schedule), markup=False)
        return 0
    if not scheduler.remove():
        stdout.print(f"nothing was installed ({scheduler.kind})", markup=False)
        return 0
    stdout.print(f"removed ({scheduler.kind})", markup=False)
    return 0
