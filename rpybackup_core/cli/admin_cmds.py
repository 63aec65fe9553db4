"""Server-side admin commands: client retention, prune, check, status.

Like `client add/list/remove` they open the server's repository directly, so they work whether
or not the daemon runs (SQLite and the prune lock keep the two apart).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checker import Checker
from ..config import ConfigError, ServerConfig, parse_duration
from ..errors import IntegrityError, UsageError
from ..pruner import Pruner, PruneResult, PruneSettings
from ..repository import Repository
from ..retention import RetentionPolicy
from ..status import collect_status
from ..storage import open_backend
from .output import human_bytes, print_json, stderr, stdout, table

_COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="apply retention policies and reclaim space (server side)")
    p.add_argument("--client", help="prune only this client (default: every client)")
    p.add_argument("--dry-run", action="store_true", help="show what would go, change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("check", help="verify index, packs and snapshots (server side)")
    p.add_argument("--read-data", action="store_true", help="also re-read and verify every blob")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("status", help="every client's backups, size, policy and prunes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def register_retention(client_sub: argparse._SubParsersAction) -> None:
    """`client retention NAME ...`, added to the `client` group that server_cmds defines."""
    p = client_sub.add_parser(
        "retention", help="set (or, without rules, show) a client's retention policy"
    )
    p.add_argument("name")
    for rule in _COUNT_RULES:
        p.add_argument(f"--keep-{rule}", type=_count, metavar="N")
    p.add_argument(
        "--keep-within",
        type=_duration,
        metavar="DURATION",
        help="keep every snapshot this close to the newest (e.g. 7d, 2w)",
    )
    p.add_argument(
        "--default",
        action="store_true",
        help="forget the client's own policy and follow the server default",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_client_retention)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _open(args: argparse.Namespace) -> tuple[Repository, Pruner]:
    config = ServerConfig.load(Path(args.server_config))
    repo = Repository(config.data_dir, open_backend(config))
    return repo, Pruner(repo, PruneSettings.from_config(config))


def cmd_client_retention(args: argparse.Namespace) -> int:
    rules = {f"keep_{rule}": getattr(args, f"keep_{rule}") for rule in _COUNT_RULES}
    rules["keep_within"] = args.keep_within
    given = {name: value for name, value in rules.items() if value is not None}
    if args.default and given:
        raise UsageError("give either --default or --keep-* rules, not both")
    repo, pruner = _open(args)
    try:
        if args.default:
            setting = pruner.set_retention(args.name, None)
        elif given:
            setting = pruner.set_retention(args.name, RetentionPolicy(**given))
        else:
            setting = pruner.retention(repo.client_by_name(args.name))
    finally:
        repo.close()
    if args.json:
        print_json(setting.to_json())
    else:
        origin = " (server default)" if setting.is_default else ""
        stdout.print(f"{setting.client}: {setting.policy.describe()}{origin}", markup=False)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    repo, pruner = _open(args)
    try:
        names = [args.client] if args.client else [c.name for c in repo.list_clients()]
        results = [pruner.prune(name, dry_run=args.dry_run) for name in names]
    finally:
        repo.close()
    if args.json:
        print_json({"dry_run": args.dry_run, "clients": [r.to_json() for r in results]})
        return 0
    for result in results:
        _print_prune(result)
    return 0


def _print_prune(result: PruneResult) -> None:
    stdout.print(f"{result.client}: {result.policy.describe()}", markup=False)
    rows = [["keep", d.id[:8], d.to_json()["time"], ", ".join(d.reasons)] for d in result.plan.keep]
    rows += [["remove", d.id[:8], d.to_json()["time"], ""] for d in result.plan.remove]
    if rows:
        table(["", "ID", "TIME", "KEPT BY"], rows)
    going, kept = len(result.plan.remove), len(result.plan.keep)
    if result.dry_run:
        stdout.print(
            f"  would remove {going} snapshot(s) and keep {kept}; {result.chunks_freed} "
            f"chunk(s) ({human_bytes(result.chunk_bytes_freed)}) would become unreferenced"
        )
    else:
        stdout.print(
            f"  removed {going} snapshot(s), kept {kept}; freed {result.chunks_freed} chunk(s) "
            f"and {human_bytes(result.bytes_freed)} of storage ({result.packs_deleted} pack(s) "
            f"deleted, {result.packs_repacked} repacked)"
        )


def cmd_check(args: argparse.Namespace) -> int:
    repo, _ = _open(args)
    try:
        report = Checker(repo).run(read_data=args.read_data)
    finally:
        repo.close()
    if args.json:
        print_json(report.to_json())
    else:
        read = (
            f", {report.blobs_read} blobs ({human_bytes(report.bytes_read)}) re-read"
            if args.read_data
            else ""
        )
        stdout.print(
            f"checked {report.clients} client(s), {report.snapshots} snapshot(s), "
            f"{report.packs} pack(s), {report.chunks} chunk(s){read}"
        )
        for name in report.unindexed_packs:
            stdout.print(
                f"note: pack {name} is in no index (reclaimed by the next prune)", markup=False
            )
        for problem in report.problems:
            stderr.print(f"problem: {problem.describe()}", markup=False, soft_wrap=True)
    if not report.ok:
        raise IntegrityError(f"check found {len(report.problems)} problem(s)")
    if not args.json:
        stdout.print("no problems found")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    repo, pruner = _open(args)
    try:
        status = collect_status(repo, pruner)
    finally:
        repo.close()
    if args.json:
        print_json(status.to_json())
        return 0
    # One block per client: readable in 80 columns over SSH.
    for client in status.clients:
        role = " (admin)" if client.admin else ""
        seen = client.last_seen or "never"
        stdout.print(f"{client.name}{role}  {client.state}, last seen {seen}", markup=False)
        backup = (
            f"last backup {client.last_backup} ({client.last_result})"
            if client.last_backup
            else "no backup yet"
        )
        stdout.print(
            f"  {backup}; {client.snapshots} snapshot(s), "
            f"{human_bytes(client.stored_bytes)} stored",
            markup=False,
        )
        default = " (default)" if client.retention.is_default else ""
        prune = client.last_prune
        pruned = (
            f"last prune {prune.to_json()['time']} removed {len(prune.removed)}, freed "
            f"{human_bytes(prune.bytes_freed)}"
            if prune
            else "never pruned"
        )
        stdout.print(
            f"  retention {client.retention.policy.describe()}{default}; {pruned}", markup=False
        )
    return 0
