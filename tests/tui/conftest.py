"""Console fixtures: the real server from tests/conftest.py, enrolled clients, pilot helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from rpybackup_core.config import ClientConfig
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


def drive(config: ClientConfig, scenario: Scenario, size: tuple[int, int] = SIZE) -> None:
    """Run the console headless against the configured server and play ``scenario``."""

    async def main() -> None:
        app = ConsoleApp(config)
        async with app.run_test(size=size) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


@pytest.fixture
def alice(server, sample_tree: Path) -> ClientConfig:
    """Client alice, backing up the sample tree, with one snapshot already made."""
    config = server.enroll("alice")
    config.sources = [str(sample_tree)]
    config.save()
    server.client("alice").backup()
    return config
