"""The core stays headless: no rpybackup_core module pulls in textual or the console."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import rpybackup_core

CORE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(rpybackup_core.__path__, prefix="rpybackup_core.")
)

_PROBE = """
import importlib, sys
importlib.import_module({module!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "rpybackup_tui"))
print(",".join(loaded))
"""


def test_the_core_package_has_modules_to_check() -> None:
    assert "rpybackup_core.client" in CORE_MODULES
    assert "rpybackup_core.cli.main" in CORE_MODULES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_not_import_textual(module: str) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "", f"{module} imported {probe.stdout.strip()}"
