"""Console fixtures: the real server from tests/conftest.py, enrolled clients, pilot helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

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
    (bob_files / "notes.txt").write_text("bob's notes\n")
    server.enroll("bob")
    bob = server.client("bob")
    for n in (3, 4, 5, 6, 7):
        bob.backup([str(bob_files)], when=day(n))
    with pytest.raises(BackupIncomplete):
        bob.backup([str(bob_files), str(tmp_path / "gone")], when=day(8))
    return server.enroll("root", admin=True)
