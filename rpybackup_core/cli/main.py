"""Entry point: global options, subcommand dispatch, and the error -> exit code mapping."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import default_client_config, default_server_config
from ..errors import RPyBackupError
from ..logs import setup_logging
from . import admin_cmds, client_cmds, demo_cmd, server_cmds, watch_cmds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpybackup-core",
        description="Encrypted, deduplicated client/server backups.",
    )
    parser.add_argument(
        "--config",
        help="config file (client: $RPYBACKUP_CONFIG, server: $RPYBACKUP_SERVER_CONFIG, "
        "default under $XDG_CONFIG_HOME/rpybackup/)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"rpybackup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_cmds.register(sub)
    client_cmds.register(sub)
    admin_cmds.register(sub)
    demo_cmd.register(sub)
    watch_cmds.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.server_config = args.config or str(default_server_config())
    args.client_config = args.config or str(default_client_config())
    if args.command != "serve":
        setup_logging(args.log_level or "warning")
    try:
        return int(args.func(args) or 0)
    except RPyBackupError as exc:
        print(f"rpybackup-core: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rpybackup-core: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
