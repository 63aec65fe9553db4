"""Starting a helper process: a new interpreter that runs a target with the descriptors and
setup it was given, whose secrets never appear on its command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from rpybackup_core.helper_process import HelperProcess, start_helper

SECRET = "token-that-must-not-show-on-a-command-line"


def report_back(fds: list[int], args: dict[str, Any]) -> None:
    """In the helper: write what it was given and its own command line to ``fds[0]``."""
    with open("/proc/self/cmdline", "rb") as handle:
        command_line = handle.read().decode(errors="replace")
    report = {
        "args": args,
        "pid": os.getpid(),
        "group": os.getpgrp(),
        "command_line": command_line,
    }
    with os.fdopen(fds[0], "w") as out:
        json.dump(report, out)


def wait_for_end(fds: list[int], args: dict[str, Any]) -> None:
    """In the helper: say so on ``fds[1]``, then read ``fds[0]`` until the caller's end of the
    pipe is closed."""
    os.write(fds[1], b"up")
    os.close(fds[1])
    with os.fdopen(fds[0], "rb") as jobs:
        jobs.read()


def test_the_helper_runs_the_target_with_its_descriptors_and_setup() -> None:
    ours, theirs = os.pipe()
    helper = start_helper(report_back, [theirs], {"token": SECRET, "count": 3}, "test-helper")
    os.close(theirs)
    with os.fdopen(ours, "rb") as reports:
        report = json.loads(reports.read())
    helper.join(timeout=60)
    assert report["args"] == {"token": SECRET, "count": 3}
    assert report["pid"] != os.getpid()
    assert SECRET not in report["command_line"]
    assert report["command_line"].endswith("test-helper\x00")
    # A Ctrl-C at the terminal goes to the caller's process group, not to the helper's.
    assert report["group"] != os.getpgrp()
    assert not helper.is_alive()


def _waiting_helper() -> tuple[HelperProcess, int]:
    """A helper that is up and waiting on a pipe; our end of it."""
    jobs_theirs, jobs_ours = os.pipe()
    ready_ours, ready_theirs = os.pipe()
    helper = start_helper(wait_for_end, [jobs_theirs, ready_theirs], {}, "test-helper")
    os.close(jobs_theirs)
    os.close(ready_theirs)
    with os.fdopen(ready_ours, "rb") as ready:
        assert ready.read() == b"up"
    return helper, jobs_ours


def test_the_helper_ends_once_the_caller_closes_its_end() -> None:
    helper, jobs = _waiting_helper()
    assert helper.is_alive()
    os.close(jobs)
    helper.join(timeout=60)
    assert not helper.is_alive()


def test_a_killed_helper_is_gone_though_its_pipe_is_open() -> None:
    helper, jobs = _waiting_helper()
    try:
        helper.kill()
        helper.join(timeout=60)
        assert not helper.is_alive()
    finally:
        os.close(jobs)


def test_a_helper_that_cannot_start_is_never_alive_and_leaves_its_ends_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    ours, theirs = os.pipe()

    helper = start_helper(report_back, [theirs], {}, "test-helper")
    os.close(theirs)

    assert not helper.is_alive()
    helper.kill()
    helper.join(timeout=60)
    with os.fdopen(ours, "rb") as reports:
        assert reports.read() == b""
