"""Server-side prune through the real CLI against a real server: retention, GC, repack, pins."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpybackup_core.archiver import HELPER_FILE, SNAPSHOT_META
from rpybackup_core.checker import Checker
from rpybackup_core.crypto import MasterKey, Sealer
from rpybackup_core.demo import compare_trees
from rpybackup_core.pruner import Pruner, PruneSettings
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.repository import PACKS, Repository
from rpybackup_core.retention import RetentionPolicy
from rpybackup_core.storage import Backend, LocalBackend, ObjectInfo

MiB = 1024 * 1024


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def stored_packs(server) -> set[str]:
    return set(server.repo.backend.list(PACKS))


class Admin:
    """The server-side CLI, as the admin types it on the server host."""

    def __init__(self, server, cli) -> None:
        self.config = str(server.config.path)
        self.cli = cli

    def __call__(self, *args: str):
        result = self.cli("--config", self.config, *args)
        assert result.code == 0, result.err
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").out)


def backup(cli, config, source: Path, when: str | None = None) -> dict:
    args = ["--config", str(config.path), "run", str(source), "--json"]
    if when:
        args += ["--time", when]
    result = cli(*args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def snapshot_times(cli, config) -> list[str]:
    return [
        s["time"] for s in json.loads(cli("--config", str(config.path), "snapshots", "--json").out)
    ]


def test_keep_daily_three_over_ten_days(server, cli, tmp_path: Path) -> None:
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    source = tmp_path / "docs"
    source.mkdir()
    for day in range(1, 11):
        for hour in ("08", "20"):
            (source / "journal.txt").write_text(f"day {day} {hour}h\n" * 100)
            backup(cli, alice, source, f"2026-03-{day:02d}T{hour}:00:00Z")
    assert len(snapshot_times(cli, alice)) == 20
    admin("client", "retention", "alice", "--keep-daily", "3")
    packs_before = stored_packs(server)

    preview = admin.json("prune", "--dry-run")
    assert preview["dry_run"] is True
    [plan] = preview["clients"]
    assert len(plan["remove"]) == 17 and len(plan["keep"]) == 3
    assert all(k["reasons"] == ["daily snapshot"] for k in plan["keep"])
    assert len(snapshot_times(cli, alice)) == 20
    assert stored_packs(server) == packs_before

    done = admin.json("prune")
    assert len(done["clients"][0]["remove"]) == 17
    assert snapshot_times(cli, alice) == [
        "2026-03-08T20:00:00Z",
        "2026-03-09T20:00:00Z",
        "2026-03-10T20:00:00Z",
    ]
    target = tmp_path / "restored"
    restored = cli("--config", str(alice.path), "restore", "latest", "--target", str(target))
    assert restored.code == 0, restored.err
    assert compare_trees(source, target / source.relative_to("/")) == []
    assert "no problems found" in admin("check", "--read-data").out


def test_space_of_a_pruned_file_comes_back(server, cli, tmp_path: Path) -> None:
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    source = tmp_path / "home"
    source.mkdir()
    (source / "notes.txt").write_text("keep me\n")
    big = source / "video.bin"
    big.write_bytes(os.urandom(40 * MiB))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    big.unlink()
    for day in (2, 3):
        (source / "notes.txt").write_text(f"keep me, day {day}\n")
        backup(cli, alice, source, f"2026-03-0{day}T08:00:00Z")
    admin("client", "retention", "alice", "--keep-last", "2")
    before = tree_bytes(server.config.data_dir)

    result = admin.json("prune", "--client", "alice")["clients"][0]

    after = tree_bytes(server.config.data_dir)
    assert before - after >= 30 * MiB
    assert result["bytes_freed"] >= 30 * MiB
    assert result["packs_deleted"] + result["packs_repacked"] >= 1
    assert admin.json("check", "--read-data")["ok"] is True
    target = tmp_path / "restored"
    assert cli("--config", str(alice.path), "restore", "latest", "--target", str(target)).code == 0
    assert compare_trees(source, target / source.relative_to("/")) == []


def test_mostly_dead_pack_is_repacked_and_its_live_chunks_survive(
    server, cli, tmp_path: Path
) -> None:
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    source = tmp_path / "data"
    source.mkdir()
    (source / "small.bin").write_bytes(os.urandom(200 * 1024))
    # No larger than HELPER_FILE, and alone under HELPER_SHARED_START: the backup reads it
    # itself (the helper would put it into a pack of its own).
    (source / "large.bin").write_bytes(os.urandom(HELPER_FILE))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    [first_pack] = stored_packs(server)
    (source / "large.bin").unlink()
    backup(cli, alice, source, "2026-03-02T08:00:00Z")
    admin("client", "retention", "alice", "--keep-last", "1")

    result = admin.json("prune")["clients"][0]

    assert result["packs_repacked"] == 1
    assert first_pack not in stored_packs(server)
    assert admin.json("check", "--read-data")["ok"] is True
    target = tmp_path / "restored"
    assert cli("--config", str(alice.path), "restore", "latest", "--target", str(target)).code == 0
    assert compare_trees(source, target / source.relative_to("/")) == []


def test_prune_between_have_it_and_commit_keeps_what_the_backup_relies_on(
    server, cli, tmp_path: Path
) -> None:
    """A backup session hears "have it" for every chunk of an old snapshot; then a prune of the
    same client removes that snapshot; the backup still commits and restores identically."""
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    photos, other = tmp_path / "photos", tmp_path / "other"
    photos.mkdir()
    other.mkdir()
    for index in range(4):
        (photos / f"{index}.jpg").write_bytes(os.urandom(512 * 1024))
    (other / "readme").write_text("newer snapshot without the photos\n")
    old = backup(cli, alice, photos, "2026-03-01T08:00:00Z")["snapshot"]
    backup(cli, alice, other, "2026-03-02T08:00:00Z")
    admin("client", "retention", "alice", "--keep-last", "1")
    repo = server.repo
    client = repo.client_by_name("alice")
    [old_record] = [s for s in repo.list_snapshots(client.id) if s.id == old]
    old_refs = set(repo.snapshot_refs(client.id, old))
    chunk_ids = [
        location.chunk_id
        for pack in repo.pack_usage(client.id)
        for location in repo.pack_chunks(pack.id)
        if location.rowid in old_refs
    ]

    with RemoteRepository.connect(alice.server, alice.fingerprint, "alice", alice.token) as session:
        assert all(session.has(chunk_ids))
        pruned = admin.json("prune", "--client", "alice")["clients"][0]
        assert [d["id"] for d in pruned["remove"]] == [old]
        assert pruned["chunks_freed"] == 0, "chunks a live session was told exist were freed"
        session.refs(chunk_ids)
        sealer = Sealer(MasterKey.from_text(alice.key))
        new = session.commit(
            {
                "time": "2026-03-03T08:00:00Z",
                "tags": [],
                "meta": sealer.seal_document(
                    SNAPSHOT_META, {"hostname": "alice", "paths": [str(photos)]}
                ),
                "stats": old_record.stats,
                "root": [chunk_id.hex() for chunk_id in old_record.root],
                "parent": None,
            }
        )

    target = tmp_path / "restored"
    server.client("alice").restore(new, target)
    assert compare_trees(photos, target / photos.relative_to("/")) == []
    assert admin.json("check", "--read-data")["ok"] is True
    after_session = admin.json("prune", "--client", "alice")["clients"][0]
    assert after_session["chunks_freed"] > 0, "the other snapshot's chunks go once unpinned"


def test_scheduled_prune_runs_on_its_own_and_is_recorded(server, cli, tmp_path: Path) -> None:
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_text("x")
    for day in (1, 2, 3):
        backup(cli, alice, source, f"2026-03-0{day}T08:00:00Z")
    admin("client", "retention", "alice", "--keep-last", "1")
    server.config.prune_interval = 1
    server.restart()

    deadline = time.monotonic() + 60
    while len(snapshot_times(cli, alice)) > 1:
        assert time.monotonic() < deadline, "the scheduled prune never ran"
        time.sleep(0.2)
    history = Pruner(server.repo, PruneSettings()).history("alice")
    assert history[-1].origin == "schedule" and len(history[-1].removed) == 2


def test_retention_command_shows_sets_and_resets(server, cli) -> None:
    admin = Admin(server, cli)
    server.add_client("alice")
    assert admin.json("client", "retention", "alice")["default"] is True
    changed = admin.json("client", "retention", "alice", "--keep-daily", "7", "--keep-within", "2w")
    assert changed["policy"]["keep_daily"] == 7
    assert changed["policy"]["keep_within"] == 14 * 86400
    assert changed["policy"]["keep_last"] == 0 and changed["default"] is False
    listing = admin.json("client", "list")
    assert listing[0]["retention"]["describe"] == "daily 7, within 2w"
    assert "daily 7, within 2w" in admin("client", "list").out
    assert admin.json("client", "retention", "alice", "--default")["default"] is True


def test_bad_retention_input_is_a_usage_error(server, cli) -> None:
    config = str(server.config.path)
    server.add_client("alice")
    for bad in (["--keep-daily", "-3"], ["--keep-within", "soon"]):
        with pytest.raises(SystemExit) as stopped:
            cli("--config", config, "client", "retention", "alice", *bad)
        assert stopped.value.code == 2
    both = cli("--config", config, "client", "retention", "alice", "--default", "--keep-last", "1")
    assert both.code == 2
    unknown = cli("--config", config, "client", "retention", "nobody", "--keep-last", "1")
    assert unknown.code == 1 and "nobody" in unknown.err


def test_a_pack_orphaned_by_a_crash_is_reclaimed_after_the_grace_period(
    server, cli, tmp_path: Path
) -> None:
    """A crash between unindexing a pack and deleting its file leaves only reclaimable data."""
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_bytes(os.urandom(100_000))
    backup(cli, alice, source)
    repo = server.repo
    client = repo.client_by_name("alice")
    [pack] = repo.pack_usage(client.id)
    orphan = f"{client.id}/ff/{'f' * 32}"
    local = repo.temp_dir / "orphan"
    local.write_bytes(repo.backend.get(PACKS, pack.name))
    repo.backend.put_file(PACKS, orphan, local)

    report = admin.json("check", "--read-data")
    assert report["ok"] is True and report["unindexed_packs"] == [orphan]
    admin("prune")
    assert orphan in stored_packs(server), "a fresh orphan may be a pack being committed"
    eager = Pruner(repo, PruneSettings(orphan_grace=0))
    eager.prune("alice")
    assert orphan not in stored_packs(server)
    assert admin.json("check", "--read-data")["unindexed_packs"] == []


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs, open transactions are lost."""


class CrashingBackend(Backend):
    """Delegates to a real backend and crashes just before or just after call number ``at``."""

    def __init__(self, inner: Backend, at: int, after: bool) -> None:
        self.inner, self.at, self.after, self.calls = inner, at, after, 0

    def _call(self, method: str, *args):
        self.calls += 1
        if self.calls == self.at and not self.after:
            raise Crash
        result = getattr(self.inner, method)(*args)
        if self.calls == self.at:
            raise Crash
        return result

    @property
    def location(self) -> str:
        return self.inner.location

    def put(self, kind: str, name: str, data: bytes) -> None:
        self._call("put", kind, name, data)

    def put_file(self, kind: str, name: str, local: Path) -> None:
        self._call("put_file", kind, name, local)

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        return self._call("get_range", kind, name, offset, length)

    def stat(self, kind: str, name: str) -> ObjectInfo:
        return self._call("stat", kind, name)

    def delete(self, kind: str, name: str) -> None:
        self._call("delete", kind, name)

    def list(self, kind: str) -> Iterator[str]:
        return iter(list(self._call("list", kind)))


def pack_bytes(data_dir: Path) -> int:
    return tree_bytes(data_dir / "storage" / PACKS)


def test_a_crash_at_any_storage_call_of_a_prune_loses_nothing(server, cli, tmp_path: Path) -> None:
    """Crash before and after every backend call of a prune that deletes and repacks packs:
    every time the kept snapshot stays whole, `check --read-data` is clean, and the next
    prune reclaims exactly what an uninterrupted prune would have."""
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    source = tmp_path / "src"
    source.mkdir()
    (source / "old.bin").write_bytes(os.urandom(2 * MiB))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    (source / "old.bin").unlink()
    (source / "small.bin").write_bytes(os.urandom(300 * 1024))
    (source / "gone.bin").write_bytes(os.urandom(3 * MiB))
    backup(cli, alice, source, "2026-03-02T08:00:00Z")
    (source / "gone.bin").unlink()
    (source / "new.bin").write_bytes(os.urandom(200 * 1024))
    kept = backup(cli, alice, source, "2026-03-03T08:00:00Z")["snapshot"]
    admin("client", "retention", "alice", "--keep-last", "1")
    server.stop()
    pristine = tmp_path / "pristine"
    shutil.copytree(server.config.data_dir, pristine)

    def open_copy(name: str, at: int = 0, after: bool = False) -> Repository:
        copy = tmp_path / name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(pristine, copy)
        local = LocalBackend(copy / "storage")
        return Repository(copy, CrashingBackend(local, at, after) if at else local)

    counting = open_copy("clean", at=10**9)
    reference = Pruner(counting, PruneSettings()).prune("alice")
    assert reference.packs_deleted >= 1 and reference.packs_repacked >= 1
    assert isinstance(counting.backend, CrashingBackend)
    calls = counting.backend.calls
    counting.close()
    expected = pack_bytes(tmp_path / "clean")

    for at in range(1, calls + 1):
        for after in (False, True):
            repo = open_copy("crash", at, after)
            with pytest.raises(Crash):
                Pruner(repo, PruneSettings()).prune("alice")
            repo.close()
            survivor = Repository(tmp_path / "crash", LocalBackend(tmp_path / "crash" / "storage"))
            report = Checker(survivor).run(read_data=True)
            where = f"crash {'after' if after else 'before'} storage call {at}"
            assert report.ok, (where, [p.describe() for p in report.problems])
            client = survivor.client_by_name("alice")
            assert kept in [s.id for s in survivor.list_snapshots(client.id)], where
            recovery = Pruner(survivor, PruneSettings(orphan_grace=0))
            recovery.prune("alice")
            recovery.prune("alice")
            report = Checker(survivor).run(read_data=True)
            assert report.ok and not report.unindexed_packs, where
            assert [s.id for s in survivor.list_snapshots(client.id)] == [kept], where
            survivor.close()
            assert pack_bytes(tmp_path / "crash") == expected, where


def test_backups_succeed_while_the_daemon_prunes_in_a_loop(server, tmp_path: Path) -> None:
    """Free-running: the daemon's own repository prunes alice over and over (as the scheduler
    and the console do) while she backs up changing data; every backup commits and the last
    one restores identically."""
    server.enroll("alice")
    pruner = Pruner(server.repo, PruneSettings(pack_size=1 * MiB))
    pruner.set_retention("alice", RetentionPolicy(keep_last=1))
    source = tmp_path / "src"
    source.mkdir()
    for index in range(6):
        (source / f"{index}.bin").write_bytes(os.urandom(400 * 1024))
    stop = threading.Event()
    prunes: list[int] = []
    failures: list[BaseException] = []

    def prune_forever() -> None:
        while not stop.is_set():
            try:
                prunes.append(len(pruner.prune("alice").plan.remove))
            except BaseException as exc:  # surfaced by the assertion below
                failures.append(exc)
                return

    worker = threading.Thread(target=prune_forever)
    worker.start()
    try:
        client = server.client("alice")
        for run in range(5):
            (source / f"{run}.bin").write_bytes(os.urandom(400 * 1024))
            result = client.backup([str(source)])
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not failures and len(prunes) > 1
    target = tmp_path / "restored"
    client.restore(result.snapshot, target)
    assert compare_trees(source, target / source.relative_to("/")) == []
    assert Checker(server.repo).run(read_data=True).ok


def test_a_read_in_progress_follows_chunks_a_repack_moved(server, cli, tmp_path: Path) -> None:
    """A restore located its chunks, then a repack moved them and deleted the old pack."""
    alice = server.enroll("alice")
    source = tmp_path / "data"
    source.mkdir()
    (source / "small.bin").write_bytes(os.urandom(200 * 1024))
    # No larger than HELPER_FILE, and alone under HELPER_SHARED_START: the backup reads it
    # itself (the helper would put it into a pack of its own).
    (source / "large.bin").write_bytes(os.urandom(HELPER_FILE))
    backup(cli, alice, source, "2026-03-01T08:00:00Z")
    (source / "large.bin").unlink()
    kept = backup(cli, alice, source, "2026-03-02T08:00:00Z")["snapshot"]
    repo = server.repo
    client = repo.client_by_name("alice")
    first, second = repo.pack_usage(client.id)
    refs = set(repo.snapshot_refs(client.id, kept))
    moving = [loc.chunk_id for loc in repo.pack_chunks(first.id) if loc.rowid in refs]
    staying = [loc.chunk_id for loc in repo.pack_chunks(second.id)]
    pruner = Pruner(repo, PruneSettings())
    pruner.set_retention("alice", RetentionPolicy(keep_last=1))

    asked = [staying[0], *moving]
    reading = repo.read_chunks(client.id, asked, repo.locate(client.id, asked))
    next(reading)
    assert pruner.prune("alice").packs_repacked == 1
    assert first.name not in stored_packs(server)
    assert [chunk_id for chunk_id, _ in reading] == moving


def test_the_next_backup_resends_what_a_prune_freed_behind_the_files_cache(
    server, cli, tmp_path: Path
) -> None:
    """The client's files cache still lists the freed chunks; the backup must not trust it."""
    admin = Admin(server, cli)
    alice = server.enroll("alice")
    docs, other = tmp_path / "docs", tmp_path / "other"
    docs.mkdir()
    other.mkdir()
    (docs / "report.bin").write_bytes(os.urandom(2 * MiB))
    (other / "note").write_text("the newest snapshot holds only this\n")
    backup(cli, alice, docs, "2026-03-01T08:00:00Z")
    backup(cli, alice, other, "2026-03-02T08:00:00Z")
    admin("client", "retention", "alice", "--keep-last", "1")
    assert admin.json("prune")["clients"][0]["chunks_freed"] > 0

    again = backup(cli, alice, docs)
    assert again["uploaded_bytes"] > 2 * MiB
    target = tmp_path / "restored"
    assert cli("--config", str(alice.path), "restore", "latest", "--target", str(target)).code == 0
    assert compare_trees(docs, target / docs.relative_to("/")) == []


def test_a_restarted_daemon_discards_packs_a_crash_left_half_written(server) -> None:
    leftover = server.repo.temp_dir / f"{'ab' * 16}.pack.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"RPBPACK1 half of a pack")
    server.restart()
    assert not leftover.exists()
