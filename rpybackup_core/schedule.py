"""Scheduled backups: a systemd user timer, a crontab line or a Windows scheduled task, each
running ``rpybackup-core --config PATH run``.

The generators (``systemd_units``, ``crontab_line``, ``schtasks_create``) are pure: schedule in,
text out. The schedulers install, remove and show exactly that text; what they run (systemctl,
crontab, schtasks) and where systemd units go are injectable, so tests need no real scheduler.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import ClientConfig, parse_duration, xdg_dir
from .durable import atomic_write_bytes
from .errors import ConfigError, ScheduleError, UsageError

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,-]+$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SUBPROCESS_TIMEOUT = 60


@dataclass(frozen=True)
class Schedule:
    """Either every N seconds, or a calendar: hourly/daily/weekly/monthly, HH:MM, or native."""

    every: int | None = None
    calendar: str | None = None

    def describe(self) -> str:
        return f"every {self.every}s" if self.every else f"calendar {self.calendar}"


def parse_schedule(every: str | None, calendar: str | None) -> Schedule:
    if every and calendar:
        raise UsageError("give --every or --calendar, not both")
    if every:
        try:
            seconds = parse_duration(every)
        except ConfigError as exc:
            raise UsageError(f"--every: {exc}") from exc
        if seconds < 60:
            raise UsageError("--every must be at least 1m")
        return Schedule(every=seconds)
    spec = (calendar or "daily").strip()
    if not spec or len(spec) > 200 or not spec.isprintable():
        raise UsageError(f"--calendar {calendar!r} is not a calendar specification")
    return Schedule(calendar=spec)


@dataclass(frozen=True)
class Job:
    """What a scheduler runs: one client config's ``run``, under a name derived from it."""

    name: str
    command: list[str]
    config_path: Path

    @property
    def marker(self) -> str:
        """Tags the crontab line as ours, so remove takes exactly that line out."""
        # It is part of the cron command, where an unescaped % would become a newline.
        return f"# rpybackup-core schedule: {self.config_path}".replace("%", "\\%")


def run_command(config_path: Path) -> list[str]:
    """An absolute command: schedulers run with a minimal PATH and no virtualenv activated."""
    script = Path(sys.executable).with_name("rpybackup-core" + (".exe" if os.name == "nt" else ""))
    if script.is_file():
        base = [str(script)]
    elif found := shutil.which("rpybackup-core"):
        base = [str(Path(found).resolve())]
    else:
        base = [sys.executable, "-m", "rpybackup_core.cli.main"]
    return [*base, "--config", str(config_path), "run"]


def job_for(config: ClientConfig) -> Job:
    if not _JOB_NAME.match(config.name):
        raise ScheduleError(f"client name {config.name!r} cannot name a scheduled job")
    path = config.path.resolve()
    if not str(path).isprintable():
        raise ScheduleError(f"config path {path} has control characters")
    return Job(f"rpybackup-{config.name}", run_command(path), path)


# ---- systemd --------------------------------------------------------------------------------


def _systemd_arg(arg: str) -> str:
    """One ExecStart= word: quoted, with systemd's specifier (%) and variable ($) escapes."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _systemd_calendar(spec: str) -> str:
    clock = _CLOCK.match(spec)
    if clock:
        return f"*-*-* {int(clock.group(1)):02}:{clock.group(2)}:00"
    return spec


def systemd_units(job: Job, schedule: Schedule) -> dict[str, str]:
    """File name -> text of the user service and the timer that starts it."""
    service = (
        "[Unit]\n"
        f"Description=rPyBackup backup ({job.name})\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={' '.join(_systemd_arg(arg) for arg in job.command)}\n"
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )
    if schedule.every:
        when = f"OnBootSec=5min\nOnUnitActiveSec={schedule.every}s\n"
    else:
        assert schedule.calendar is not None
        when = f"OnCalendar={_systemd_calendar(schedule.calendar)}\nPersistent=true\n"
    timer = (
        "[Unit]\n"
        f"Description=rPyBackup schedule ({job.name}, {schedule.describe()})\n"
        "\n"
        "[Timer]\n"
        f"{when}"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{job.name}.service": service, f"{job.name}.timer": timer}


# ---- cron -----------------------------------------------------------------------------------


def cron_time(schedule: Schedule) -> str:
    if schedule.every:
        minutes, rest = divmod(schedule.every, 60)
        hours = minutes // 60
        if rest == 0 and minutes < 60 and 60 % minutes == 0:
            return f"*/{minutes} * * * *" if minutes > 1 else "* * * * *"
        if rest == 0 and minutes % 60 == 0 and hours < 24 and 24 % hours == 0:
            return f"0 */{hours} * * *" if hours > 1 else "0 * * * *"
        if schedule.every == 86400:
            return "0 0 * * *"
        if schedule.every == 7 * 86400:
            return "0 0 * * 0"
        raise ScheduleError(
            f"cron cannot run every {schedule.every}s; use a step that divides an hour or a "
            "day (e.g. 15m, 2h, 1d, 1w), or --calendar"
        )
    spec = schedule.calendar or "daily"
    named = {
        "hourly": "0 * * * *",
        "daily": "0 0 * * *",
        "weekly": "0 0 * * 0",
        "monthly": "0 0 1 * *",
    }
    if spec in named:
        return named[spec]
    clock = _CLOCK.match(spec)
    if clock:
        return f"{int(clock.group(2))} {int(clock.group(1))} * * *"
    fields = spec.split()
    if len(fields) == 5 and all(_CRON_FIELD.match(field) for field in fields):
        return " ".join(fields)
    raise ScheduleError(
        f"--calendar {spec!r} is not hourly, daily, weekly, monthly, HH:MM or a 5-field cron "
        "expression"
    )


def crontab_line(job: Job, schedule: Schedule) -> str:
    # cron turns an unescaped % in the command into a newline.
    command = " ".join(shlex.quote(arg) for arg in job.command).replace("%", "\\%")
    return f"{cron_time(schedule)} {command} {job.marker}"


# ---- Windows Task Scheduler -----------------------------------------------------------------


def schtasks_create(job: Job, schedule: Schedule) -> list[str]:
    if schedule.every:
        minutes, rest = divmod(schedule.every, 60)
        if rest:
            raise ScheduleError("the Task Scheduler counts whole minutes; use a multiple of 1m")
        if minutes % 1440 == 0 and minutes // 1440 <= 365:
            when = ["/SC", "DAILY", "/MO", str(minutes // 1440)]
        elif minutes % 60 == 0 and minutes < 1440:
            when = ["/SC", "HOURLY", "/MO", str(minutes // 60)]
        elif minutes < 1440:
            when = ["/SC", "MINUTE", "/MO", str(minutes)]
        else:
            raise ScheduleError(f"the Task Scheduler cannot run every {schedule.every}s")
    else:
        spec = schedule.calendar or "daily"
        clock = _CLOCK.match(spec)
        named = {
            "hourly": ["/SC", "HOURLY"],
            "daily": ["/SC", "DAILY", "/ST", "00:00"],
            "weekly": ["/SC", "WEEKLY", "/D", "SUN", "/ST", "00:00"],
            "monthly": ["/SC", "MONTHLY", "/D", "1", "/ST", "00:00"],
        }
        if clock:
            when = ["/SC", "DAILY", "/ST", f"{int(clock.group(1)):02}:{clock.group(2)}"]
        elif spec in named:
            when = named[spec]
        else:
            raise ScheduleError(
                f"--calendar {spec!r}: the Task Scheduler takes hourly, daily, weekly, monthly "
                "or HH:MM"
            )
    return [
        "schtasks",
        "/Create",
        "/F",
        "/TN",
        job.name,
        "/TR",
        subprocess.list2cmdline(job.command),
        *when,
    ]


# ---- installing -----------------------------------------------------------------------------


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScheduleError(f"cannot run {argv[0]}: {exc}") from exc


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise ScheduleError(f"{what} failed: {reason[-1] if reason else result.returncode}")


class Scheduler(Protocol):
    kind: str

    def render(self, schedule: Schedule) -> str: ...

    def installed(self) -> str | None: ...

    def install(self, schedule: Schedule) -> str: ...

    def remove(self) -> bool: ...


class SystemdScheduler:
    """User units under ~/.config/systemd/user; systemctl only where systemd runs."""

    kind = "systemd"

    def __init__(self, job: Job, unit_dir: Path, systemctl: str | None) -> None:
        self.job = job
        self.unit_dir = unit_dir
        self.systemctl = systemctl

    def _paths(self) -> list[Path]:
        return [self.unit_dir / f"{self.job.name}.{kind}" for kind in ("service", "timer")]

    def render(self, schedule: Schedule) -> str:
        units = systemd_units(self.job, schedule)
        return "\n".join(f"# {self.unit_dir / name}\n{text}" for name, text in units.items())

    def installed(self) -> str | None:
        paths = self._paths()
        if not all(path.is_file() for path in paths):
            return None
        return "\n".join(f"# {path}\n{path.read_text()}" for path in paths)

    def _systemctl(self, *args: str) -> None:
        assert self.systemctl is not None
        _check(_run([self.systemctl, "--user", *args]), f"systemctl --user {' '.join(args)}")

    def install(self, schedule: Schedule) -> str:
        for name, text in systemd_units(self.job, schedule).items():
            atomic_write_bytes(self.unit_dir / name, text.encode("utf-8"), mode=0o644)
        timer = f"{self.job.name}.timer"
        if self.systemctl is None:
            return (
                f"wrote {timer} to {self.unit_dir}; systemd is not running here, so enable it "
                f"later with: systemctl --user enable --now {timer}"
            )
        self._systemctl("daemon-reload")
        self._systemctl("enable", "--now", timer)
        return (
            f"installed and started {timer} ({schedule.describe()}); to run while you are "
            "logged out: loginctl enable-linger"
        )

    def remove(self) -> bool:
        paths = [path for path in self._paths() if path.exists()]
        if not paths:
            return False
        if self.systemctl is not None:
            # An already disabled timer is fine; the unit files go either way.
            _run([self.systemctl, "--user", "disable", "--now", f"{self.job.name}.timer"])
        for path in paths:
            path.unlink()
        if self.systemctl is not None:
            self._systemctl("daemon-reload")
        # Install may have created these; empty ones go so the tree is as it was.
        for directory in (self.unit_dir, self.unit_dir.parent):
            try:
                directory.rmdir()
            except OSError:
                break
        return True


class CronScheduler:
    """One marked line in the user's crontab, edited through ``crontab -l`` / ``crontab -``."""

    kind = "cron"

    def __init__(self, job: Job, crontab: list[str]) -> None:
        self.job = job
        self.crontab = crontab

    def render(self, schedule: Schedule) -> str:
        return crontab_line(self.job, schedule) + "\n"

    def _ours(self, line: str) -> bool:
        return line.rstrip("\n").endswith(" " + self.job.marker)

    def _read(self) -> str:
        result = _run([*self.crontab, "-l"])
        if result.returncode != 0:
            if "no crontab" in result.stderr.lower():
                return ""
            _check(result, "crontab -l")
        return result.stdout

    def _write(self, text: str) -> None:
        if text.strip():
            _check(_run([*self.crontab, "-"], stdin=text), "crontab -")
        else:
            # Nothing else was in it: no crontab at all, as before install.
            _check(_run([*self.crontab, "-r"]), "crontab -r")

    def installed(self) -> str | None:
        lines = [line for line in self._read().splitlines(keepends=True) if self._ours(line)]
        return "".join(lines) or None

    def install(self, schedule: Schedule) -> str:
        line = crontab_line(self.job, schedule)
        kept = [line for line in self._read().splitlines(keepends=True) if not self._ours(line)]
        text = "".join(kept)
        if text and not text.endswith("\n"):
            text += "\n"
        self._write(text + line + "\n")
        return f"installed crontab line ({schedule.describe()}): {line}"

    def remove(self) -> bool:
        lines = self._read().splitlines(keepends=True)
        kept = [line for line in lines if not self._ours(line)]
        if len(kept) == len(lines):
            return False
        self._write("".join(kept))
        return True


class SchtasksScheduler:
    """A task in the Windows Task Scheduler, named after the client."""

    kind = "schtasks"

    def __init__(self, job: Job, schtasks: str = "schtasks") -> None:
        self.job = job
        self.schtasks = schtasks

    def render(self, schedule: Schedule) -> str:
        return subprocess.list2cmdline(schtasks_create(self.job, schedule)) + "\n"

    def installed(self) -> str | None:
        result = _run([self.schtasks, "/Query", "/TN", self.job.name, "/FO", "LIST", "/V"])
        return result.stdout if result.returncode == 0 else None

    def install(self, schedule: Schedule) -> str:
        argv = schtasks_create(self.job, schedule)
        _check(_run([self.schtasks, *argv[1:]]), "schtasks /Create")
        return f"installed scheduled task {self.job.name} ({schedule.describe()})"

    def remove(self) -> bool:
        if self.installed() is None:
            return False
        _check(_run([self.schtasks, "/Delete", "/F", "/TN", self.job.name]), "schtasks /Delete")
        return True


def systemd_running() -> bool:
    """Like sd_booted(): systemd is the init system of this machine."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def default_kind() -> str:
    if os.name == "nt":
        return "schtasks"
    return "systemd" if systemd_running() else "cron"


def scheduler_for(job: Job, kind: str | None = None) -> Scheduler:
    """The scheduler of this machine (or the one asked for) with its real tools and paths."""
    kind = kind or default_kind()
    if kind == "systemd":
        unit_dir = xdg_dir("XDG_CONFIG_HOME", ".config") / "systemd" / "user"
        return SystemdScheduler(
            job, unit_dir, shutil.which("systemctl") if systemd_running() else None
        )
    if kind == "cron":
        return CronScheduler(job, ["crontab"])
    if kind == "schtasks":
        return SchtasksScheduler(job)
    raise UsageError(f"unknown scheduler {kind!r} (systemd, cron or schtasks)")
