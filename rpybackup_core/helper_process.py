"""Starting a helper process: a second interpreter for the half of a backup or restore that
would otherwise wait for the GIL behind the other half (backup_helper.py, restore_helper.py)."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import subprocess

_Message = TypeVar("_Message")

log = logging.getLogger(__name__)

# The helper's first lines: its setup comes on stdin, so no secret is on its command line.
_BOOT = (
    "import json, sys; setup = json.load(sys.stdin); sys.path[:] = setup['path']; "
    f"from {__name__} import run_helper; run_helper(setup)"
)


def helper_wanted() -> bool:
    """A helper pays only where the two processes get a core each."""
    return (os.cpu_count() or 1) >= 2


class HelperProcess:
    """A started helper: it ends by itself once the caller closes its end of their channel,
    which the kernel does when the caller dies, so it never outlives the caller for long.
    Without a process (``None``), one that could not start: never alive."""

    def __init__(self, popen: subprocess.Popen[bytes] | None) -> None:
        self._popen = popen

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._popen is not None:
            import subprocess

            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)

    def kill(self) -> None:
        if self._popen is not None:
            self._popen.kill()


def start_helper(
    target: Callable[[list[int], dict[str, Any]], None],
    fds: list[int],
    args: dict[str, Any],
    name: str,
) -> HelperProcess:
    """Run ``target(fds, args)`` in a new interpreter that inherits the descriptors ``fds``;
    ``name`` ends its command line, so that ``ps`` tells which helper it is.

    A fresh interpreter, not a fork: the caller's threads (upload, sealing, writing) may hold
    locks inside OpenSSL or zstd at the moment of a fork. Not multiprocessing's spawn either:
    that starts a third interpreter (its resource tracker) and has the helper import the
    caller's main script again, ~65 ms of CPU at the start of every backup and restore that
    needs a helper.

    A helper that cannot start is one that ended at once: the caller finds the other ends of
    ``fds`` closed, as when a helper dies, and does the work itself."""
    # Imported here: subprocess costs every command's start ~4 ms; only a helper needs it.
    import subprocess

    setup = {
        "path": [str(entry) for entry in sys.path],
        "module": target.__module__,
        "function": target.__qualname__,
        "fds": fds,
        "args": args,
    }
    # A process group of its own: a Ctrl-C at the terminal reaches the caller only, which
    # stops the helper itself (it would otherwise die mid-file with a traceback of its own).
    try:
        popen = subprocess.Popen(
            [sys.executable, "-c", _BOOT, name],
            stdin=subprocess.PIPE,
            pass_fds=fds,
            process_group=0,
        )
    except OSError as exc:
        log.warning("a helper process could not start (%s): its work is done here", exc)
        return HelperProcess(None)
    assert popen.stdin is not None
    try:
        # A few hundred bytes: the pipe takes them before the helper reads, so this never waits.
        popen.stdin.write(json.dumps(setup).encode())
        popen.stdin.close()
    except OSError:
        # It is already gone: the caller finds its ends closed.
        popen.kill()
    return HelperProcess(popen)


def run_helper(setup: dict[str, Any]) -> None:
    """The helper's side of ``start_helper``."""
    target = getattr(importlib.import_module(setup["module"]), setup["function"])
    target(setup["fds"], setup["args"])


def take_messages(messages: queue.SimpleQueue[_Message], wait: bool) -> list[_Message]:
    """What a helper's reader thread has queued, after waiting for one message with ``wait``.
    The reader puts ``None`` last, when the helper is gone: nothing is taken after it."""
    taken: list[_Message] = []
    with contextlib.suppress(queue.Empty):
        if wait:
            taken.append(messages.get())
        while not taken or taken[-1] is not None:
            taken.append(messages.get_nowait())
    return taken
