"""Watch mode: a real watchdog observer on real files, backing up to a real server.

Every wait polls something observable (the server's snapshot list, the watcher's run reports,
the collector's counters) against a generous deadline; none is a bare sleep.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from rpybackup_core.client import BackupClient
from rpybackup_core.config import ClientConfig
from rpybackup_core.errors import InvalidRequest, PermissionDenied
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.watch import ChangeCollector, LostEventsAlarm, Pending, Watcher, WatchRun
from tests.conftest import listed

QUIET = 1.0
DEADLINE = 60.0
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = DEADLINE) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Running:
    watcher: Watcher
    runs: queue.Queue[WatchRun]
    thread: threading.Thread
    failures: list[BaseException]

    def next_run(self, timeout: float = DEADLINE) -> WatchRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.runs.get(timeout=0.2)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise AssertionError(f"the watcher ended: {self.failures}") from None
        raise AssertionError(f"no watch run within {timeout:.0f}s")

    def next_good_run(self) -> WatchRun:
        deadline = time.monotonic() + DEADLINE
        while True:
            run = self.next_run(max(0.1, deadline - time.monotonic()))
            if run.snapshot is not None:
                return run


@contextmanager
def watching(client: BackupClient, **options: object) -> Iterator[Running]:
    runs: queue.Queue[WatchRun] = queue.Queue()
    watcher = Watcher(client, quiet_seconds=QUIET, on_run=runs.put, **options)  # type: ignore[arg-type]
    failures: list[BaseException] = []

    def target() -> None:
        try:
            watcher.run()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, name="watcher", daemon=True)
    thread.start()
    try:
        yield Running(watcher, runs, thread, failures)
    finally:
        watcher.stop()
        thread.join(timeout=DEADLINE)
    assert not thread.is_alive(), "the watcher did not stop"
    assert not failures, failures


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("first draft\n")
    (root / "sub").mkdir()
    (root / "sub" / "keep.txt").write_text("kept\n")
    return root


def watched_client(server, source: Path, name: str = "laptop", **settings: object) -> BackupClient:
    config = server.enroll(name)
    config.sources = [str(source)]
    for key, value in settings.items():
        setattr(config, key, value)
    config.save()
    return BackupClient(config)


def files_in_latest(client: BackupClient) -> dict[str, int]:
    entries = listed(client)
    return {entry.path: entry.node.size for entry in entries if entry.node.kind == "file"}


# ---- the collector's rules ----------------------------------------------------------------------


def test_collector_ignores_excluded_paths_editor_temp_files_and_the_cache(tmp_path: Path) -> None:
    src = tmp_path / "src"
    collector = ChangeCollector([src, tmp_path / "single.txt"], ["*.tmp", "build"], src / ".cache")
    assert collector.accepts(src / "a.txt")
    assert collector.accepts(src / "deep" / "b.txt")
    assert collector.accepts(tmp_path / "single.txt")
    assert not collector.accepts(tmp_path / "other.txt"), "outside every source"
    assert not collector.accepts(src / "x.tmp")
    assert not collector.accepts(src / "build" / "out" / "a.o"), "inside an excluded directory"
    assert not collector.accepts(src / ".cache" / "files.sqlite-wal")
    for temp in (".notes.txt.swp", "notes.txt~", ".#notes.txt", "#notes.txt#", "4913"):
        assert not collector.accepts(src / temp), temp


def test_a_snapshot_is_due_after_the_quiet_period_or_the_maximum_delay() -> None:
    now = [100.0]
    collector = ChangeCollector([Path("/src")], [], Path("/cache"), clock=lambda: now[0])
    never = threading.Event()

    def due() -> bool:
        return collector.wait_due(2.0, 5.0, 0.0, now[0], never)

    assert not due(), "nothing collected yet"
    for _ in range(5):  # a change every second: never quiet for 2 s
        collector.note()
        now[0] += 1.0
        if now[0] < 105.0:
            assert not due()
    assert due(), "5 s after the first change, though the last was only 1 s ago"
    assert collector.take() == Pending(5, 100.0, 104.0)
    collector.note()
    now[0] += 1.0
    assert not due()
    now[0] += 1.0
    assert due(), "2 quiet seconds"
    assert not collector.wait_due(2.0, 5.0, now[0] + 5, now[0], never), "the backoff holds it"


# ---- end to end ---------------------------------------------------------------------------------


def test_an_edit_yields_a_snapshot_holding_it_and_restore_latest_shows_it(
    server, source: Path, tmp_path: Path, cli
) -> None:
    client = watched_client(server, source)
    with watching(client) as running:
        first = running.next_good_run()
        assert files_in_latest(client)[f"{source}/notes.txt"] == len("first draft\n")
        edited_at = time.monotonic()
        edit = "second draft, longer\n"
        (source / "notes.txt").write_text(edit)
        wait_for(
            "a snapshot with the edit",
            lambda: (
                client.snapshots()[-1].id != first.snapshot
                and files_in_latest(client)[f"{source}/notes.txt"] == len(edit)
            ),
        )
        took = time.monotonic() - edited_at
        assert took < QUIET + 5, f"the edit took {took:.1f}s to reach a snapshot"
        assert client.snapshots()[-1].tags == ["watch"]
        state = server.repo.client_states()[server.repo.client_by_name("laptop").id]
        assert state["state"] == "watching"
        assert state["last_result"] == "ok"
        assert state["last_backup"] is not None
    target = tmp_path / "restored"
    result = cli("--config", str(client.config.path), "restore", "latest", "--target", str(target))
    assert result.code == 0, result.err
    assert (target / source.relative_to("/") / "notes.txt").read_text() == "second draft, longer\n"
    state = server.repo.client_states()[server.repo.client_by_name("laptop").id]
    assert state["state"] == "idle", "a stopped watcher says so"


def test_200_files_written_in_2_seconds_give_1_to_5_snapshots_and_the_last_holds_all(
    server, source: Path
) -> None:
    client = watched_client(server, source)
    with watching(client) as running:
        running.next_good_run()
        before = len(client.snapshots())
        burst = source / "burst"
        burst.mkdir()
        for i in range(200):
            (burst / f"f{i:03}.txt").write_text(f"file {i}\n")
            time.sleep(0.01)  # pacing the workload over ~2 s, not synchronising
        wait_for(
            "a snapshot holding all 200 files",
            lambda: sum(p.startswith(f"{burst}/") for p in files_in_latest(client)) == 200,
        )
    made = len(client.snapshots()) - before
    assert 1 <= made <= 5, f"{made} snapshots for one burst"
    assert sum(p.startswith(f"{burst}/") for p in files_in_latest(client)) == 200


def test_a_server_outage_keeps_watch_up_and_everything_reaches_a_snapshot_after(
    server, source: Path
) -> None:
    client = watched_client(server, source)
    with watching(client, backoff_max=1.0) as running:
        running.next_good_run()
        with server.down():
            (source / "during-1.txt").write_text("written while the server was down\n")
            failed = running.next_run()
            assert failed.snapshot is None and failed.error, "the attempt failed and said why"
            (source / "during-2.txt").write_text("still down\n")
            again = running.next_run()
            assert again.snapshot is None, "it keeps retrying"
            assert running.thread.is_alive()
        (source / "after.txt").write_text("the server is back\n")
        names = {"during-1.txt", "during-2.txt", "after.txt", "notes.txt"}
        wait_for(
            "a snapshot with every change of the outage",
            lambda: {Path(p).name for p in files_in_latest(client)} >= names,
        )
        assert running.thread.is_alive()


def test_excluded_files_editor_temp_files_and_the_own_cache_do_not_trigger_snapshots(
    server, source: Path
) -> None:
    client = watched_client(
        server, source, excludes=["*.tmp", "build"], cache_dir=str(source / ".rpybackup-cache")
    )
    with watching(client) as running:
        running.next_good_run()
        collector = running.watcher.collector
        (source / "build").mkdir()
        (source / "build" / "out.o").write_bytes(b"\x7fELF")
        (source / "scratch.tmp").write_text("scratch")
        (source / ".notes.txt.swp").write_bytes(b"vim swap")
        (source / "zz-sentinel.swp").write_bytes(b"last")
        # Events arrive in order: once the sentinel is seen, everything before it was too,
        # including the cache writes of the first run.
        wait_for("the sentinel event", lambda: collector.last_ignored == source / "zz-sentinel.swp")
        assert collector.take() is None, "an ignored change was collected"
        assert running.runs.empty(), "an ignored change caused a run"
        (source / "real.txt").write_text("a real change\n")
        run = running.next_good_run()
        assert run.changes >= 1
    stored = {Path(p).relative_to(source).as_posix() for p in files_in_latest(client)}
    assert "real.txt" in stored
    assert not {"build/out.o", "scratch.tmp"} & stored
    assert not any(p.startswith(".rpybackup-cache") for p in stored)


def test_a_watched_directory_that_is_removed_and_recreated_is_watched_again(
    server, tmp_path: Path
) -> None:
    parent = tmp_path / "projects"
    parent.mkdir()
    source = parent / "app"
    source.mkdir()
    (source / "main.py").write_text("print('v1')\n")
    client = watched_client(server, source)
    with watching(client) as running:
        running.next_good_run()
        for child in source.iterdir():
            child.unlink()
        source.rmdir()
        source.mkdir()
        v2 = "print('v2, recreated')\n"
        (source / "main.py").write_text(v2)
        wait_for(
            "a snapshot of the recreated directory",
            lambda: files_in_latest(client).get(f"{source}/main.py") == len(v2),
        )
        (source / "later.py").write_text("seen through the new watch\n")
        wait_for(
            "a change inside the recreated directory",
            lambda: f"{source}/later.py" in files_in_latest(client),
        )


def test_a_warning_from_the_observer_about_lost_events_brings_a_full_scan(
    server, source: Path
) -> None:
    client = watched_client(server, source)
    with watching(client) as running:
        first = running.next_good_run()
        # What watchdog logs when the kernel's inotify queue overflowed; a real overflow cannot
        # be forced reliably, so the test speaks its log line.
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        rescan = running.next_good_run()
        assert rescan.snapshot != first.snapshot
    assert not any(
        isinstance(h, LostEventsAlarm) for h in logging.getLogger("watchdog.observers").handlers
    )


def test_a_single_file_source_is_watched_through_its_directory(server, tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    conf = folder / "app.conf"
    conf.write_text("a=1\n")
    client = watched_client(server, conf)
    with watching(client) as running:
        running.next_good_run()
        (folder / "unrelated.txt").write_text("not a source\n")
        wait_for(
            "the unrelated change",
            lambda: running.watcher.collector.last_ignored == folder / "unrelated.txt",
        )
        assert running.watcher.collector.take() is None
        assert running.runs.empty()
        conf.write_text("a=22\n")
        wait_for(
            "a snapshot with the edited file",
            lambda: files_in_latest(client).get(str(conf)) == len("a=22\n"),
        )
    assert set(files_in_latest(client)) == {str(conf)}


def test_watch_refuses_bad_options(server, cli) -> None:
    config = server.enroll("laptop")
    base = ["--config", str(config.path), "watch"]
    assert cli(*base).code == 2, "no sources configured and none given"
    assert cli(*base, "/tmp", "--quiet-seconds", "0").code == 2
    assert cli(*base, "/tmp", "--max-delay", "soon").code == 2


# ---- status on the server -----------------------------------------------------------------------


def test_the_server_refuses_malformed_state_reports(server) -> None:
    config: ClientConfig = server.enroll("laptop")
    bad_reports = [
        {"state": "hacking", "last_result": "ok"},
        {"state": 7, "last_result": "ok"},
        {"state": "idle", "last_result": "\x1b[2Jgotcha"},
        {"state": "idle", "last_result": "x" * 600},
        {"state": "idle", "last_result": "ok", "last_backup": "yesterday"},
        {"state": "idle", "last_result": "ok", "last_backup": "9999-01-01T00:00:00Z"},
        {"state": "idle", "last_result": "ok", "last_backup": ["2026-01-01"]},
    ]
    with RemoteRepository.connect(
        config.server, config.fingerprint, config.name, config.token
    ) as remote:
        for report in bad_reports:
            with pytest.raises(InvalidRequest):
                remote.request("report", **report)
        remote.report_state("watching", "2026-01-02T03:04:05Z", "ok")
        remote.report_state("watching", None, "error: server unreachable")
    state = server.repo.client_states()[server.repo.client_by_name("laptop").id]
    assert state["state"] == "watching"
    assert state["last_backup"] == "2026-01-02T03:04:05Z", "a report without a time keeps it"
    assert state["last_result"] == "error: server unreachable"


def test_reports_need_authentication(server) -> None:
    server.enroll("laptop")
    with (
        RemoteRepository.open(server.address, server.fingerprint) as remote,
        pytest.raises(PermissionDenied),
    ):
        remote.request("report", state="idle", last_result="ok")
    assert server.repo.client_states() == {}


# ---- the command ------------------------------------------------------------------------------


def test_sigterm_ends_the_watch_command_cleanly_after_the_snapshot_in_flight(
    server, source: Path
) -> None:
    client = watched_client(server, source)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "rpybackup_core.cli.main",
            "--config",
            str(client.config.path),
            "--log-level",
            "info",
            "watch",
            "--quiet-seconds",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log_lines: list[str] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: log_lines.extend(process.stderr), daemon=True)
    reader.start()

    def runs_started() -> int:
        return sum("backing up" in line for line in list(log_lines))

    try:
        wait_for("the first snapshot", lambda: client.snapshots())
        started = runs_started()
        (source / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
        wait_for("a run to start", lambda: runs_started() > started)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            # faulthandler answers SIGABRT with every thread's stack, into the log read here.
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=DEADLINE)
            reader.join(timeout=DEADLINE)
            pytest.fail("the watch did not stop after SIGTERM:\n" + "".join(log_lines))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE)
    reader.join(timeout=DEADLINE)
    assert process.returncode == 0, "".join(log_lines)
    latest = files_in_latest(client)
    assert latest[f"{source}/big.bin"] == 24 * 1024 * 1024, "the run in flight completed"
    state = server.repo.client_states()[server.repo.client_by_name("laptop").id]
    assert state["state"] == "idle"
