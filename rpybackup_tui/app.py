"""The admin console. This first cut opens and quits; the console issue builds it out."""

from __future__ import annotations

import argparse

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class ConsoleApp(App[None]):
    TITLE = "rPyBackup"
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def __init__(self, config_path: str | None = None) -> None:
        super().__init__()
        self.config_path = config_path

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("rPyBackup console", id="welcome")
        yield Footer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpybackup-tui")
    parser.add_argument("--config", help="client config to use")
    args = parser.parse_args(argv)
    ConsoleApp(args.config).run()
    return 0
