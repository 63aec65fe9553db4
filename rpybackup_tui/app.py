"""The admin console: `rpybackup-tui [--config PATH]`. Areas are modes, switched with 1-6."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker

from rpybackup_core.config import ClientConfig, default_client_config
from rpybackup_core.errors import RPyBackupError
from rpybackup_core.terminal import printable

from .data.backend import Backend
from .data.log_buffer import LogBuffer
from .data.runs import RunRecord
from .screens.browser import BrowserScreen
from .screens.config_editor import ConfigScreen
from .screens.fleet import FleetScreen
from .screens.logs import LogsScreen
from .screens.pruning import PruneScreen
from .screens.runs import RunsScreen
from .widgets.area_bar import AREAS

log = logging.getLogger(__name__)


def describe_failure(error: BaseException) -> str:
    """One line for the user (it may name a file: shown printable); a traceback only for
    bugs, and only in the log."""
    if isinstance(error, RPyBackupError):
        text = str(error)
    elif isinstance(error, OSError):
        text = error.strerror or str(error)
    else:
        log.error("unexpected failure in the console", exc_info=error)
        text = f"unexpected {type(error).__name__}: {error} (details on the logs screen)"
    return printable(text)


class ConsoleApp(App[None]):
    TITLE = "rPyBackup"
    CSS_PATH = "app.tcss"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "fleet": FleetScreen,
        "config": ConfigScreen,
        "browse": BrowserScreen,
        "runs": RunsScreen,
        "prune": PruneScreen,
        "logs": LogsScreen,
    }
    DEFAULT_MODE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        *(Binding(key, f"switch_mode('{mode}')", label, show=False) for key, mode, label in AREAS),
    ]

    def __init__(self, config: ClientConfig, log_buffer: LogBuffer | None = None) -> None:
        super().__init__()
        self.backend = Backend(config)
        self.log_buffer = log_buffer or LogBuffer()
        self.runs: list[RunRecord] = []
        self._shown_failures: dict[str, str] = {}

    @property
    def identity(self) -> str:
        return self.backend.name

    def on_mount(self) -> None:
        logging.getLogger().addHandler(self.log_buffer)

    def on_unmount(self) -> None:
        logging.getLogger().removeHandler(self.log_buffer)

    def report_failure(self, worker: Worker[object]) -> str:
        """Notify once per distinct failure: a poll that keeps failing, or every area finding
        the same dead server, is one notification until that reason goes away."""
        error = worker.error
        message = describe_failure(error) if error is not None else "failed"
        log.warning("%s: %s", worker.group, message)
        if message not in self._shown_failures.values():
            self.notify(message, title="Error", severity="error", timeout=8, markup=False)
        self._shown_failures[worker.group] = message
        return message

    def clear_failure(self, group: str) -> None:
        self._shown_failures.pop(group, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpybackup-tui", description="rPyBackup admin console")
    parser.add_argument(
        "--config",
        help="client config to use (default: $RPYBACKUP_CONFIG or ~/.config/rpybackup/client.toml)",
    )
    args = parser.parse_args(argv)
    path = Path(args.config) if args.config else default_client_config()
    try:
        config = ClientConfig.load(path)
    except RPyBackupError as exc:
        print(f"rpybackup-tui: error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.getLogger().setLevel(logging.INFO)
    ConsoleApp(config).run()
    return 0
