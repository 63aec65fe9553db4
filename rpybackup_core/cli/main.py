"""Entry point: global options, subcommand dispatch, and the error -> exit code mapping."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..config import default_client_config, default_server_config
from ..errors import RPyBackupError
from ..logs import setup_logging
from ..terminal import printable

# Command modules in the order `--help` lists them, and the module of each command. Only the
# invoked command's module is imported: loading every module (server, prune, watchdog, ...)
# cost a client command ~60 ms of start-up, a tenth of a no-change backup.
COMMAND_MODULES = ("server_cmds", "client_cmds", "admin_cmds", "demo_cmd", "watch_cmds")
MODULE_OF = {
    "server": "server_cmds",
    "serve": "server_cmds",
    "client": "server_cmds",
    "enroll": "client_cmds",
    "put": "client_cmds",
    "get": "client_cmds",
    "list": "client_cmds",
    "rlist": "client_cmds",
    "run": "client_cmds",
    "snapshots": "client_cmds",
    "restore": "client_cmds",
    "prune": "admin_cmds",
    "check": "admin_cmds",
    "status": "admin_cmds",
    "demo": "demo_cmd",
    "watch": "watch_cmds",
    "schedule": "watch_cmds",
}
_GLOBALS_WITH_VALUE = {"--config", "--log-level"}


def invoked_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (skipping global options), if any."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _GLOBALS_WITH_VALUE:
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``argv`` naming a known command, just that command's module."""
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
    command = invoked_command(argv) if argv is not None else None
    wanted = [MODULE_OF[command]] if command in MODULE_OF else COMMAND_MODULES
    for name in wanted:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.server_config = args.config or str(default_server_config())
    args.client_config = args.config or str(default_client_config())
    if args.command != "serve":
        setup_logging(args.log_level or "warning")
    try:
        return int(args.func(args) or 0)
    except RPyBackupError as exc:
        print(f"rpybackup-core: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rpybackup-core: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
