"""The robustness profile: quick in the normal test run, long with ``just soak``.

``RPYBACKUP_SOAK=1`` selects the soak profile: ten times the kills,
crash rounds and fuzz cases, with fresh random seeds (the quick profile is seeded and fixed,
so CI sees the same cases every run). The figures each test reached are summed up at the end
of the run (and written to docs/security.md by hand).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import Daemon

FIGURES: Counter[str] = Counter()


@dataclass(frozen=True)
class Profile:
    soak: bool
    seed: int
    server_kills: int
    client_kills: int
    fuzz_frames: int
    fuzz_handlers: int
    fuzz_cross_client: int
    fuzz_admin: int
    hostile_connections: int
    bit_flips: int
    load_clients: int

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.seed}-{salt}")


QUICK = Profile(
    False,
    20261126,
    server_kills=10,
    client_kills=2,
    fuzz_frames=4000,
    fuzz_handlers=5000,
    fuzz_cross_client=1200,
    fuzz_admin=800,
    hostile_connections=60,
    bit_flips=40,
    load_clients=50,
)


def soak_profile() -> Profile:
    return Profile(
        True,
        random.SystemRandom().randrange(2**32),
        server_kills=100,
        client_kills=10,
        fuzz_frames=40000,
        fuzz_handlers=50000,
        fuzz_cross_client=12000,
        fuzz_admin=8000,
        hostile_connections=600,
        bit_flips=400,
        load_clients=50,
    )


@pytest.fixture(scope="session")
def profile() -> Profile:
    soak = os.environ.get("RPYBACKUP_SOAK") == "1"
    chosen = soak_profile() if soak else QUICK
    print(f"\nrobustness profile: {'soak' if soak else 'quick'}, seed {chosen.seed}")
    return chosen


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A real `rpybackup-core serve` process with 1 MiB packs (so uploads seal many packs)."""
    server = Daemon.create(tmp_path / "server")
    server.start()
    try:
        yield server
    finally:
        server.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        shown = ", ".join(f"{name} {count}" for name, count in sorted(FIGURES.items()))
        terminalreporter.write_line(f"robustness figures: {shown}")
