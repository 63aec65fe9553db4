"""Server-side commands: server init, serve, client add/list/remove."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from ..config import ServerConfig, format_address, parse_address
from ..errors import ConfigError
from ..logs import setup_logging
from ..pruner import Pruner, PruneSettings
from ..repository import Repository, iso_time
from ..server import BackupServer
from ..storage import open_backend
from ..tls import certificate_fingerprint, create_identity
from . import admin_cmds
from .output import print_json, stdout, table

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("server", help="set up the server")
    server_sub = server.add_subparsers(dest="server_command", required=True)
    init = server_sub.add_parser("init", help="create the server config and TLS identity")
    init.add_argument("--data", required=True, help="directory for the repository and TLS files")
    init.add_argument("--listen", default="127.0.0.1:7443", help="HOST:PORT to listen on")
    init.add_argument(
        "--storage",
        default="local",
        help="where packs go: local (under --data) or s3://BUCKET[/PREFIX]",
    )
    init.add_argument(
        "--s3-endpoint", default="", help="URL of a non-AWS S3 store (Ceph RGW, SeaweedFS)"
    )
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_server_init)

    serve = sub.add_parser("serve", help="run the server daemon in the foreground")
    serve.set_defaults(func=cmd_serve)

    client = sub.add_parser("client", help="manage enrolled clients (server side)")
    client_sub = client.add_subparsers(dest="client_command", required=True)
    add = client_sub.add_parser("add", help="register a client and print its enrollment code")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may see and manage every client")
    add.add_argument(
        "--reenroll", action="store_true", help="issue a new code for an existing client"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_client_add)
    listing = client_sub.add_parser("list", help="list clients")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_client_list)
    remove = client_sub.add_parser("remove", help="revoke a client's credential")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_client_remove)
    admin_cmds.register_retention(client_sub)


def check_client_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"client name {name!r} must be 1-64 letters, digits, '-', '_' or '.'")
    return name


def load_server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig.load(Path(args.server_config))


def open_repository(config: ServerConfig) -> Repository:
    return Repository(config.data_dir, open_backend(config))


def cmd_server_init(args: argparse.Namespace) -> int:
    path = Path(args.server_config)
    if path.exists():
        raise ConfigError(f"{path} already exists; refusing to overwrite a server config")
    host, port = parse_address(args.listen)
    data = Path(args.data).expanduser().resolve()
    config = ServerConfig(
        path=path,
        data_dir=data,
        listen_host=host,
        listen_port=port,
        storage_url=args.storage,
        s3_endpoint=args.s3_endpoint,
    )
    config.validate()
    # Private before anything lands in it: the repository database holds credential hashes.
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = open_backend(config)
    notes = backend.prepare()
    fingerprint = create_identity(config.tls_dir)
    Repository(data, backend).close()
    config.save()
    listen = format_address(host, port)
    if args.json:
        print_json(
            {
                "config": str(path),
                "fingerprint": fingerprint,
                "listen": listen,
                "storage": config.storage_url,
                "s3_endpoint": config.s3_endpoint,
            }
        )
    else:
        stdout.print(f"server config written to {path}")
        stdout.print(f"data directory: {data}")
        stdout.print(f"packs stored in: {backend.location}")
        for note in notes:
            stdout.print(note)
        stdout.print(f"listen: {listen}")
        stdout.print(f"fingerprint: {fingerprint}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_server_config(args)
    setup_logging(args.log_level or config.log_level, config.log_file)
    server = BackupServer(config)
    log.info("certificate fingerprint %s", certificate_fingerprint(config.tls_dir / "server.crt"))

    def stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.repo.close()
    return 0


def cmd_client_add(args: argparse.Namespace) -> int:
    config = load_server_config(args)
    name = check_client_name(args.name)
    repo = open_repository(config)
    try:
        code = repo.add_client(name, args.admin, config.enroll_ttl, reenroll=args.reenroll)
    finally:
        repo.close()
    if args.json:
        print_json({"name": name, "code": code})
    else:
        stdout.print(f"enrollment code for {name}: {code}")
        stdout.print(f"valid for {config.enroll_ttl // 3600} h, once. On the client run:")
        stdout.print(
            f"  rpybackup-core enroll {config.listen} {code} --fingerprint "
            f"{certificate_fingerprint(config.tls_dir / 'server.crt')}"
        )
    return 0


def cmd_client_list(args: argparse.Namespace) -> int:
    config = load_server_config(args)
    repo = open_repository(config)
    try:
        clients = repo.list_clients()
        counts = repo.snapshot_counts()
        pruner = Pruner(repo, PruneSettings.from_config(config))
        policies = {client.id: pruner.retention(client) for client in clients}
    finally:
        repo.close()
    docs = []
    for client in clients:
        doc = client.to_json()
        count, latest = counts[client.id]
        doc["snapshots"] = count
        doc["last_backup"] = iso_time(latest) if latest else None
        doc["retention"] = policies[client.id].to_json()
        docs.append(doc)
    if args.json:
        print_json(docs)
        return 0
    rows = [
        [
            d["name"],
            "admin" if d["admin"] else "",
            "revoked" if d["revoked"] else ("enrolled" if d["enrolled"] else "pending"),
            str(d["snapshots"]),
            d["last_backup"] or "-",
            d["last_seen"] or "-",
            d["retention"]["describe"] + (" (default)" if d["retention"]["default"] else ""),
        ]
        for d in docs
    ]
    table(["NAME", "ROLE", "STATE", "SNAPSHOTS", "LAST BACKUP", "LAST SEEN", "RETENTION"], rows)
    return 0


def cmd_client_remove(args: argparse.Namespace) -> int:
    config = load_server_config(args)
    repo = open_repository(config)
    try:
        repo.remove_client(args.name)
    finally:
        repo.close()
    stdout.print(f"client {args.name} revoked; its snapshots stay until retention removes them")
    return 0
