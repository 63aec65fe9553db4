"""Console fixtures: the real server from tests/conftest.py, enrolled clients, pilot helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from rpybackup_core.config import ClientConfig
from rpybackup_core.errors import BackupIncomplete
from rpybackup_tui.app import ConsoleApp

WAIT_SECONDS = 30.0
SIZE = (100, 30)

Scenario = Callable[[ConsoleApp, Pilot[None]], Awaitable[None]]


async def wait_for(pilot: Pilot[None], condition: Callable[[], object], what: str) -> None:
    """Let the app run until ``condition`` holds; fail after a generous bound."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.05)


async def table_settled(pilot: Pilot[None], table: DataTable, rows: int, what: str) -> None:
    """Wait for ``rows`` rows, measured and repainted: a screenshot then shows the final table."""
    await wait_for(pilot, lambda: table_laid_out(table, rows), what)
    # DataTable keeps lines drawn before its columns were measured until its own resize event,
    # which a starved CI machine may not have delivered yet: drop them so the next paint uses
    # the measured widths.
    table.notify_style_update()
    await pilot.pause()


def table_laid_out(table: DataTable, rows: int) -> bool:
    """``rows`` rows are in, and every column is as wide as its widest cell (DataTable measures
    lazily, when idle)."""
    if table.row_count != rows:
        return False
    for index, column in enumerate(table.ordered_columns):
        for row in range(rows):
            value = table.get_row_at(row)[index]
            if cell_len(getattr(value, "plain", str(value))) > column.content_width:
                return False
    return True


def text_of(app: ConsoleApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def drive(config: ClientConfig, scenario: Scenario, size: tuple[int, int] = SIZE) -> None:
    """Run the console headless against the configured server and play ``scenario``."""

    async def main() -> None:
        app = ConsoleApp(config)
        async with app.run_test(size=size) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


@contextlib.contextmanager
def outage(server) -> Iterator[None]:
    """The server is down inside the block and back on the same port after it."""
    port = server.server.address[1]
    server.stop()
    try:
        yield
    finally:
        server.config.listen_port = port
        server.start()


def day(n: int) -> datetime.datetime:
    return datetime.datetime(2026, 1, n, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def alice(server, sample_tree: Path) -> ClientConfig:
    """Client alice, backing up the sample tree, with one snapshot already made."""
    config = server.enroll("alice")
    config.sources = [str(sample_tree)]
    config.save()
    server.client("alice").backup(when=day(2))
    return config


@pytest.fixture
def admin(server, alice: ClientConfig, tmp_path: Path) -> ClientConfig:
    """An admin identity on a server that also holds bob, whose newest backup skipped a file."""
    bob_files = tmp_path / "bob"
    bob_files.mkdir()
    server.enroll("bob")
    bob = server.client("bob")
    for n in (3, 4, 5, 6, 7):
        # Each day's data differs, so pruning old days frees a size that reads the same each run.
        (bob_files / "notes.bin").write_bytes(random.Random(n).randbytes(1024 * 1024))
        bob.backup([str(bob_files)], when=day(n))
    with pytest.raises(BackupIncomplete):
        bob.backup([str(bob_files), str(tmp_path / "gone")], when=day(8))
    return server.enroll("root", admin=True)
