"""`status` on the server host, and the admin API the console uses over the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpybackup_core.admin import AdminClient
from rpybackup_core.errors import NotFound, PermissionDenied
from rpybackup_core.retention import RetentionPolicy

FIELDS = {
    "name",
    "admin",
    "state",
    "enrolled",
    "last_seen",
    "snapshots",
    "last_backup",
    "last_result",
    "stored_bytes",
    "chunk_bytes",
    "retention",
    "last_prune",
}


@pytest.fixture
def fleet(server, cli, tmp_path: Path):
    """alice with two backups and one prune, bob enrolled without backups, ops the admin."""
    alice = server.enroll("alice")
    server.enroll("bob")
    server.enroll("ops", admin=True)
    source = tmp_path / "src"
    source.mkdir()
    for day in (1, 2):
        (source / "file.txt").write_text(f"day {day}\n")
        run = cli(
            "--config", str(alice.path), "run", str(source), "--time", f"2026-03-0{day}T08:00:00Z"
        )
        assert run.code == 0, run.err
    config = str(server.config.path)
    assert cli("--config", config, "client", "retention", "alice", "--keep-last", "1").code == 0
    assert cli("--config", config, "prune", "--client", "alice").code == 0
    return server


def test_status_json_lists_every_client_with_its_fields(fleet, cli) -> None:
    result = cli("--config", str(fleet.config.path), "status", "--json")
    assert result.code == 0, result.err
    clients = {c["name"]: c for c in json.loads(result.out)["clients"]}
    assert set(clients) == {"alice", "bob", "ops"}
    assert all(set(c) >= FIELDS for c in clients.values())

    alice = clients["alice"]
    assert alice["state"] == "enrolled" and alice["enrolled"] and alice["last_seen"]
    assert alice["snapshots"] == 1
    assert alice["last_backup"] == "2026-03-02T08:00:00Z"
    assert alice["last_result"] == "ok"
    assert alice["stored_bytes"] > 0
    assert alice["retention"]["policy"]["keep_last"] == 1 and not alice["retention"]["default"]
    assert alice["last_prune"]["origin"] == "manual" and len(alice["last_prune"]["removed"]) == 1

    bob = clients["bob"]
    assert bob["snapshots"] == 0 and bob["last_backup"] is None and bob["last_result"] is None
    assert bob["retention"]["default"] is True and bob["last_prune"] is None
    assert clients["ops"]["admin"] is True


def test_status_table_for_people(fleet, cli) -> None:
    result = cli("--config", str(fleet.config.path), "status")
    assert result.code == 0, result.err
    for text in ("alice", "bob", "ops (admin)", "last 1", "(default)"):
        assert text in result.out


def test_admin_api_status_matches_the_cli(fleet, cli) -> None:
    api = AdminClient(fleet.clients["ops"]).status()
    local = json.loads(cli("--config", str(fleet.config.path), "status", "--json").out)
    by_name = {c["name"]: c for c in local["clients"]}
    for client in api.clients:
        doc = client.to_json()
        assert doc["snapshots"] == by_name[client.name]["snapshots"]
        assert doc["retention"] == by_name[client.name]["retention"]
        assert doc["last_prune"] == by_name[client.name]["last_prune"]


def test_admin_api_retention_plan_prune_and_history(fleet, tmp_path: Path) -> None:
    admin = AdminClient(fleet.clients["ops"])
    alice = fleet.client("alice")
    source = tmp_path / "more"
    source.mkdir()
    (source / "x").write_text("x")
    alice.backup([str(source)])

    setting = admin.set_retention("alice", RetentionPolicy(keep_last=1, keep_daily=0))
    assert setting.policy.keep_last == 1 and not setting.is_default
    assert admin.retention("alice") == setting

    plan = admin.prune_plan("alice")
    assert [d.reasons for d in plan.plan.keep] == [("last snapshot",)]
    assert len(plan.plan.remove) == 1

    preview = admin.prune("alice", dry_run=True)
    assert preview.dry_run and len(alice.snapshots()) == 2
    done = admin.prune("alice")
    assert len(alice.snapshots()) == 1
    assert [d.id for d in done.plan.remove] == [d.id for d in preview.plan.remove]

    history = admin.prune_history("alice")
    assert [record.origin for record in history] == ["console", "manual"]
    assert history[0].removed == [d.id for d in done.plan.remove]
    assert {r.client for r in admin.prune_history()} == {"alice"}

    assert admin.set_retention("alice", None).is_default is True
    with pytest.raises(NotFound):
        admin.prune_plan("nobody")


def test_admin_requests_are_refused_to_ordinary_clients(fleet) -> None:
    bob = AdminClient(fleet.clients["bob"])
    with pytest.raises(PermissionDenied):
        bob.status()
    with pytest.raises(PermissionDenied):
        bob.prune("alice")
    with pytest.raises(PermissionDenied):
        bob.set_retention("alice", RetentionPolicy())
    assert len(fleet.client("alice").snapshots()) == 1


def test_status_shows_what_a_watching_client_reported(fleet, cli) -> None:
    fleet.client("bob").report_state("watching", None, "error: /srv/data: Permission denied")
    result = cli("--config", str(fleet.config.path), "status", "--json")
    clients = {c["name"]: c for c in json.loads(result.out)["clients"]}
    assert clients["bob"]["activity"] == "watching"
    assert clients["bob"]["last_result"] == "error: /srv/data: Permission denied"
    assert clients["alice"]["activity"] is None and clients["alice"]["last_result"] == "ok"
