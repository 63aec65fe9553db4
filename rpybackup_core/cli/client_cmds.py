"""Client-side commands: enroll, put, get, list, rlist, run, snapshots, restore."""

from __future__ import annotations

import argparse
import datetime
import os
import stat
from pathlib import Path
from typing import Any

from ..archiver import BackupResult
from ..client import BackupClient, ListedEntry, enroll
from ..config import ClientConfig
from ..errors import BackupIncomplete, RestoreError, RPyBackupError, UsageError
from ..files_cache import FilesCache
from ..terminal import printable
from .output import (
    human_bytes,
    print_json,
    print_json_streamed,
    progress_bar,
    stderr,
    stdout,
    table,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enroll", help="join a server with an enrollment code")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("code")
    p.add_argument("--fingerprint", required=True, help="the server's SHA-256 fingerprint")
    p.add_argument("--name", help="the client name the code was issued for (checked)")
    p.add_argument("--passphrase-file", help="file holding the key passphrase")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("put", help="send files to the server (a snapshot tagged 'put')")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", help="fetch one file back, hash-verified")
    p.add_argument("path", help="the file's path as stored (its absolute path)")
    p.add_argument("-o", "--output", help="destination file or directory")
    p.add_argument("--snapshot", help="snapshot id (default: the newest holding the file)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("list", help="list a local directory and what is backed up")
    p.add_argument("dir", nargs="?", default=".")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("rlist", help="list files stored on the server")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("--snapshot", default="latest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rlist)

    p = sub.add_parser("run", help="back up the configured sources (or the given paths) now")
    p.add_argument("paths", nargs="*")
    p.add_argument("--time", help="snapshot time, ISO 8601 (backdating for imports and tests)")
    p.add_argument("--tag", action="append", default=[], help="tag the snapshot (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("snapshots", help="list snapshots")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser("restore", help="restore a snapshot")
    p.add_argument("snapshot", help="snapshot id, a unique prefix, or 'latest'")
    p.add_argument("--target", required=True, help="directory to restore into")
    p.add_argument("--include", help="restore only this path of the snapshot")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_restore)


def load_client(args: argparse.Namespace) -> BackupClient:
    return BackupClient(ClientConfig.load(Path(args.client_config)))


def parse_when(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--time {text!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def read_passphrase(args: argparse.Namespace) -> str | None:
    if args.passphrase_file:
        try:
            return Path(args.passphrase_file).read_text().strip() or None
        except OSError as exc:
            raise UsageError(f"cannot read --passphrase-file: {exc.strerror}") from exc
    return os.environ.get("RPYBACKUP_PASSPHRASE") or None


def cmd_enroll(args: argparse.Namespace) -> int:
    config, generated = enroll(
        args.address,
        args.code,
        args.fingerprint,
        Path(args.client_config),
        name=args.name,
        passphrase=read_passphrase(args),
    )
    if args.json:
        print_json(
            {"config": str(config.path), "client": config.name, "recovery_passphrase": generated}
        )
        return 0
    stdout.print(f"enrolled as {config.name}; config written to {config.path}")
    if generated:
        stdout.print(
            "recovery passphrase (write it down; it restores your key if this "
            f"machine is lost): {generated}"
        )
    return 0


def _backup(args: argparse.Namespace, paths: list[str], tags: list[str], when: str | None) -> int:
    client = load_client(args)
    code = 0
    with progress_bar("backup", not args.json) as progress:
        try:
            result = client.backup(paths or None, parse_when(when), tags, progress)
        except BackupIncomplete as exc:
            if not isinstance(exc.result, BackupResult):
                raise
            result = exc.result
            code = exc.exit_code
            for error in result.errors:
                stderr.print(f"skipped: {printable(error)}", markup=False)
    if args.json:
        print_json(result.to_json())
    else:
        stdout.print(
            f"snapshot {result.snapshot[:8]} saved: {result.files} files, "
            f"{human_bytes(result.bytes)}, uploaded {human_bytes(result.uploaded_bytes)} "
            f"in {result.seconds:.1f}s",
            markup=False,
        )
    if code:
        stderr.print(f"error: {len(result.errors)} item(s) could not be read")
    return code


def cmd_run(args: argparse.Namespace) -> int:
    return _backup(args, args.paths, args.tag, args.time)


def cmd_put(args: argparse.Namespace) -> int:
    return _backup(args, args.files, ["put"], None)


def cmd_get(args: argparse.Namespace) -> int:
    client = load_client(args)
    dest = Path(args.output) if args.output else None
    written = client.get_file(args.path, dest, args.snapshot)
    stdout.print(f"{printable(str(written))} (verified)", markup=False)
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    snapshots = load_client(args).snapshots()
    if args.json:
        print_json([snap.to_json() for snap in snapshots])
        return 0
    rows = [
        [
            snap.id[:8],
            snap.time,
            snap.hostname,
            str(snap.stats.get("files", "")),
            human_bytes(int(snap.stats.get("bytes", 0))),
            ",".join(snap.tags),
            " ".join(snap.paths),
        ]
        for snap in snapshots
    ]
    table(["ID", "TIME", "HOST", "FILES", "SIZE", "TAGS", "PATHS"], rows)
    return 0


def cmd_rlist(args: argparse.Namespace) -> int:
    with load_client(args).listing(args.path, args.snapshot) as (snap, entries):
        if args.json:
            print_json_streamed(
                {"snapshot": snap.id}, "entries", (entry.to_json() for entry in entries)
            )
            return 0
        stdout.print_lines(_listed_line(entry) for entry in entries)
    return 0


def _listed_line(entry: ListedEntry) -> str:
    suffix = "/" if entry.node.kind == "dir" else ""
    if entry.node.kind == "symlink":
        suffix = f" -> {printable(entry.node.target)}"
    return f"{printable(entry.path)}{suffix}"


def cmd_restore(args: argparse.Namespace) -> int:
    client = load_client(args)
    with progress_bar("restore", not args.json) as progress:
        snap, result = client.restore(args.snapshot, Path(args.target), args.include, progress)
    if args.json:
        print_json({"snapshot": snap.id, **result.to_json()})
    else:
        stdout.print(
            f"restored snapshot {snap.id[:8]} to {printable(args.target)}: {result.files} files, "
            f"{result.dirs} dirs, {result.symlinks} symlinks, {human_bytes(result.bytes)}",
            markup=False,
        )
    if result.errors:
        for error in result.errors:
            stderr.print(f"failed: {printable(error)}", markup=False)
        raise RestoreError(f"{len(result.errors)} item(s) could not be restored")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """A local directory with each file's state against the files cache of the last runs."""
    directory = Path(args.dir).expanduser().resolve()
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    cache = None
    try:
        cache = FilesCache(ClientConfig.load(Path(args.client_config)).cache_path)
    except RPyBackupError:  # listing works without an enrolled client
        cache = None
    entries: list[dict[str, Any]] = []
    try:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            kind = (
                "dir"
                if stat.S_ISDIR(st.st_mode)
                else ("symlink" if stat.S_ISLNK(st.st_mode) else "file")
            )
            state = ""
            if kind == "file" and cache is not None:
                state = "backed up" if cache.lookup(entry.path, st) else "new or changed"
            entries.append(
                {
                    "name": entry.name,
                    "type": kind,
                    "size": st.st_size,
                    "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC).isoformat(
                        timespec="seconds"
                    ),
                    "state": state,
                }
            )
    finally:
        if cache is not None:
            cache.close()
    if args.json:
        print_json({"dir": str(directory), "entries": entries})
        return 0
    table(
        ["NAME", "TYPE", "SIZE", "MODIFIED", "STATE"],
        [[e["name"], e["type"], human_bytes(e["size"]), e["mtime"], e["state"]] for e in entries],
    )
    return 0
