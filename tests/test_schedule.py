"""Schedules: the three generators on their text, and install/remove leaving things as they were.

The crontab and systemctl the schedulers call here are small stand-in programs on PATH (real
processes, real files), so no test can touch the machine's own crontab or systemd.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rpybackup_core.config import ClientConfig
from rpybackup_core.errors import ScheduleError, UsageError
from rpybackup_core.schedule import (
    CronScheduler,
    Job,
    Schedule,
    SystemdScheduler,
    cron_time,
    crontab_line,
    job_for,
    parse_schedule,
    schtasks_create,
    systemd_units,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def make_config(tmp_path: Path, sources: list[str] | None = None) -> ClientConfig:
    config = ClientConfig(
        path=tmp_path / "my configs" / "client%1.toml",
        server="127.0.0.1:7443",
        fingerprint="AB:CD",
        name="laptop",
        token="secret",
        key="key",
        sources=sources if sources is not None else [str(tmp_path / "data")],
    )
    config.path.parent.mkdir(parents=True, exist_ok=True)
    config.save()
    return config


def fake_tool(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!{sys.executable}\nimport sys, pathlib\n{body}")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tool


def fake_crontab(bin_dir: Path, store: Path) -> Path:
    """Behaves like crontab(1) -l / - / -r on one user's table kept in ``store``."""
    return fake_tool(
        bin_dir,
        "crontab",
        f"""
store = pathlib.Path({str(store)!r})
arg = sys.argv[1]
if arg in ("-l", "-r") and not store.exists():
    sys.stderr.write("no crontab for tester\\n")
    sys.exit(1)
if arg == "-l":
    sys.stdout.write(store.read_text())
elif arg == "-":
    store.write_text(sys.stdin.read())
elif arg == "-r":
    store.unlink()
""",
    )


def fake_systemctl(bin_dir: Path, log: Path) -> Path:
    return fake_tool(
        bin_dir,
        "systemctl",
        f"""
with open({str(log)!r}, "a") as handle:
    handle.write(" ".join(sys.argv[1:]) + "\\n")
""",
    )


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content (None for directories)."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return job_for(make_config(tmp_path))


# ---- parsing --------------------------------------------------------------------------------


def test_schedule_options_are_checked() -> None:
    assert parse_schedule(None, None) == Schedule(calendar="daily")
    assert parse_schedule("90m", None) == Schedule(every=5400)
    assert parse_schedule(None, "02:30") == Schedule(calendar="02:30")
    for every, calendar in [("30s", None), ("soon", None), ("1h", "daily"), (None, "a\nb")]:
        with pytest.raises(UsageError):
            parse_schedule(every, calendar)


# ---- systemd ----------------------------------------------------------------------------------


def test_systemd_units_run_the_client_config_on_a_calendar(job: Job) -> None:
    units = systemd_units(job, Schedule(calendar="02:30"))
    service, timer = units["rpybackup-laptop.service"], units["rpybackup-laptop.timer"]
    assert "Type=oneshot" in service
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    # A path with a space is quoted; % is a systemd specifier and must be doubled.
    assert '"--config"' in exec_start and "client%%1.toml" in exec_start
    assert exec_start.endswith('"run"')
    assert "OnCalendar=*-*-* 02:30:00" in timer
    assert "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer


def test_systemd_timer_every_duration_counts_from_the_last_run(job: Job) -> None:
    timer = systemd_units(job, Schedule(every=6 * 3600))["rpybackup-laptop.timer"]
    assert "OnUnitActiveSec=21600s" in timer
    assert "OnBootSec=5min" in timer
    assert "OnCalendar" not in timer


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    "schedule",
    [
        Schedule(calendar="daily"),
        Schedule(calendar="07:05"),
        Schedule(calendar="Mon *-*-* 03:00"),
        Schedule(every=900),
    ],
)
def test_systemd_accepts_the_generated_units(job: Job, tmp_path: Path, schedule: Schedule) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for name, text in systemd_units(job, schedule).items():
        (unit_dir / name).write_text(text)
    verify = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "verify",
            str(unit_dir / "rpybackup-laptop.timer"),
            str(unit_dir / "rpybackup-laptop.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "rpybackup-laptop" not in verify.stderr, verify.stderr


def test_systemd_install_then_remove_leaves_home_as_it_was(job: Job, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "rpybackup").mkdir(parents=True)
    (home / ".config" / "rpybackup" / "client.toml").write_text("# untouched\n")
    before = tree(home)
    scheduler = SystemdScheduler(job, home / ".config" / "systemd" / "user", systemctl=None)
    assert scheduler.installed() is None

    message = scheduler.install(Schedule(calendar="daily"))
    assert "systemctl --user enable --now rpybackup-laptop.timer" in message
    assert scheduler.installed() == scheduler.render(Schedule(calendar="daily"))
    assert "OnCalendar=daily" in (home / ".config/systemd/user/rpybackup-laptop.timer").read_text()

    assert scheduler.remove()
    assert tree(home) == before
    assert not scheduler.remove(), "nothing left to remove"


def test_systemd_remove_keeps_units_it_did_not_write(job: Job, tmp_path: Path) -> None:
    unit_dir = tmp_path / "home" / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    (unit_dir / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    before = tree(tmp_path / "home")
    scheduler = SystemdScheduler(job, unit_dir, systemctl=None)
    scheduler.install(Schedule(every=3600))
    scheduler.remove()
    assert tree(tmp_path / "home") == before


def test_systemd_install_enables_the_timer_where_systemd_runs(job: Job, tmp_path: Path) -> None:
    calls = tmp_path / "systemctl.log"
    systemctl = fake_systemctl(tmp_path / "bin", calls)
    scheduler = SystemdScheduler(job, tmp_path / "units", systemctl=str(systemctl))
    scheduler.install(Schedule(calendar="hourly"))
    scheduler.remove()
    assert calls.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now rpybackup-laptop.timer",
        "--user disable --now rpybackup-laptop.timer",
        "--user daemon-reload",
    ]


# ---- cron -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Schedule(every=60), "* * * * *"),
        (Schedule(every=15 * 60), "*/15 * * * *"),
        (Schedule(every=3600), "0 * * * *"),
        (Schedule(every=6 * 3600), "0 */6 * * *"),
        (Schedule(every=86400), "0 0 * * *"),
        (Schedule(every=7 * 86400), "0 0 * * 0"),
        (Schedule(calendar="daily"), "0 0 * * *"),
        (Schedule(calendar="monthly"), "0 0 1 * *"),
        (Schedule(calendar="2:05"), "5 2 * * *"),
        (Schedule(calendar="30 4 * * 1-5"), "30 4 * * 1-5"),
    ],
)
def test_cron_times(schedule: Schedule, expected: str) -> None:
    assert cron_time(schedule) == expected


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule(every=7 * 60),
        Schedule(every=90 * 60),
        Schedule(every=61),
        Schedule(calendar="Mon *-*-* 03:00"),
    ],
)
def test_cron_refuses_what_it_cannot_express(schedule: Schedule) -> None:
    with pytest.raises(ScheduleError):
        cron_time(schedule)


def test_crontab_line_quotes_the_command_and_carries_the_marker(job: Job) -> None:
    line = crontab_line(job, Schedule(calendar="02:30"))
    assert line.startswith("30 2 * * * ")
    assert line.endswith(f" # rpybackup-core schedule: {job.config_path.parent}/client\\%1.toml")
    assert "'--config'" not in line, "plain words stay unquoted"
    assert f"'{job.config_path.parent}/client\\%1.toml'" in line, "quoted, with cron's % escaped"
    assert "\n" not in line


def test_cron_install_then_remove_leaves_the_crontab_byte_for_byte(
    job: Job, tmp_path: Path
) -> None:
    store = tmp_path / "crontab.txt"
    original = "MAILTO=admin@example.org\n# nightly report\n15 3 * * * /usr/bin/report --all\n"
    store.write_text(original)
    scheduler = CronScheduler(job, [str(fake_crontab(tmp_path / "bin", store))])

    scheduler.install(Schedule(calendar="daily"))
    assert store.read_text().startswith(original)
    assert scheduler.installed() == crontab_line(job, Schedule(calendar="daily")) + "\n"
    scheduler.install(Schedule(every=3600))
    lines = store.read_text().splitlines()
    assert sum(job.marker in line for line in lines) == 1, "a reinstall replaces its line"
    assert lines[-1].startswith("0 * * * * ")

    assert scheduler.remove()
    assert store.read_text() == original
    assert not scheduler.remove()
    assert store.read_text() == original


def test_cron_install_then_remove_without_a_crontab_leaves_none(job: Job, tmp_path: Path) -> None:
    store = tmp_path / "crontab.txt"
    scheduler = CronScheduler(job, [str(fake_crontab(tmp_path / "bin", store))])
    assert scheduler.installed() is None
    scheduler.install(Schedule(calendar="hourly"))
    assert store.exists()
    scheduler.remove()
    assert not store.exists()


# ---- Windows Task Scheduler -----------------------------------------------------------------


def test_schtasks_commands(job: Job) -> None:
    base = [
        "schtasks",
        "/Create",
        "/F",
        "/TN",
        "rpybackup-laptop",
        "/TR",
        subprocess.list2cmdline(job.command),
    ]
    assert schtasks_create(job, Schedule(every=30 * 60)) == [*base, "/SC", "MINUTE", "/MO", "30"]
    assert schtasks_create(job, Schedule(every=2 * 3600)) == [*base, "/SC", "HOURLY", "/MO", "2"]
    assert schtasks_create(job, Schedule(every=86400)) == [*base, "/SC", "DAILY", "/MO", "1"]
    assert schtasks_create(job, Schedule(calendar="7:05")) == [
        *base,
        "/SC",
        "DAILY",
        "/ST",
        "07:05",
    ]
    assert schtasks_create(job, Schedule(calendar="weekly"))[-6:] == [
        "/SC",
        "WEEKLY",
        "/D",
        "SUN",
        "/ST",
        "00:00",
    ]
    with pytest.raises(ScheduleError):
        schtasks_create(job, Schedule(calendar="Mon *-*-* 03:00"))
    with pytest.raises(ScheduleError):
        schtasks_create(job, Schedule(every=25 * 3600))


# ---- the command ------------------------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME, XDG dirs and a PATH whose crontab and systemctl are the stand-ins."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    bin_dir = tmp_path / "bin"
    fake_crontab(bin_dir, tmp_path / "crontab.txt")
    fake_systemctl(bin_dir, tmp_path / "systemctl.log")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return home


def test_schedule_show_prints_a_real_systemd_timer(isolated: Path, tmp_path: Path, cli) -> None:
    config = make_config(tmp_path)
    result = cli(
        "--config", str(config.path), "schedule", "show", "--via", "systemd", "--every", "1h"
    )
    assert result.code == 0, result.err
    assert "not installed" in result.out
    assert "[Timer]" in result.out and "OnUnitActiveSec=3600s" in result.out
    assert "[Service]" in result.out and "ExecStart=" in result.out


def test_schedule_install_show_remove_through_cron(isolated: Path, tmp_path: Path, cli) -> None:
    config = make_config(tmp_path)
    store = tmp_path / "crontab.txt"
    store.write_text("0 1 * * * /usr/bin/true\n")
    args = ["--config", str(config.path), "schedule"]

    assert cli(*args, "install", "--via", "cron", "--calendar", "02:30").code == 0
    shown = cli(*args, "show", "--via", "cron")
    assert shown.out.startswith("installed (cron)")
    assert "30 2 * * * " in shown.out and "--config" in shown.out and " run " in shown.out
    assert cli(*args, "remove", "--via", "cron").code == 0
    assert store.read_text() == "0 1 * * * /usr/bin/true\n"
    assert "nothing was installed" in cli(*args, "remove", "--via", "cron").out


def test_schedule_install_through_systemd_then_remove(isolated: Path, tmp_path: Path, cli) -> None:
    config = make_config(tmp_path)
    before = tree(isolated)
    args = ["--config", str(config.path), "schedule"]
    assert cli(*args, "install", "--via", "systemd", "--calendar", "daily").code == 0
    assert (isolated / ".config/systemd/user/rpybackup-laptop.timer").is_file()
    assert cli(*args, "show", "--via", "systemd").out.startswith("installed (systemd)")
    assert cli(*args, "remove", "--via", "systemd").code == 0
    assert tree(isolated) == before


def test_schedule_refuses_bad_input(isolated: Path, tmp_path: Path, cli) -> None:
    config = make_config(tmp_path, sources=[])
    args = ["--config", str(config.path), "schedule"]
    nothing = cli(*args, "install", "--via", "cron")
    assert nothing.code == 1 and "backup.sources is empty" in nothing.err
    assert cli(*args, "show", "--via", "cron", "--every", "7m").code == 1
    assert cli(*args, "show", "--every", "soon").code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli(*args, "show", "--every", "1h", "--calendar", "daily")
    assert exit_info.value.code == 2


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_shipped_watch_unit_is_valid(job: Job, tmp_path: Path) -> None:
    shipped = (Path(__file__).parent.parent / "config" / "rpybackup-watch.service").read_text()
    assert " watch" in shipped and "KillSignal=SIGTERM" in shipped
    unit = tmp_path / "rpybackup-watch.service"
    # Verification needs the executable to exist; the shipped path is an example location.
    unit.write_text(shipped.replace("/usr/local/bin/rpybackup-core", job.command[0]))
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr


def test_schedule_show_works_without_a_crontab_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    config = make_config(tmp_path)
    result = cli(
        "--config", str(config.path), "schedule", "show", "--via", "cron", "--calendar", "weekly"
    )
    assert result.code == 0, result.err
    assert "cannot run crontab" in result.err
    assert "0 0 * * 0 " in result.out and "# rpybackup-core schedule:" in result.out
