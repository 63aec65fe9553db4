"""Starting a helper process: a second interpreter for the half of a backup or restore that
would otherwise wait for the GIL behind the other half (backup_helper.py, restore_helper.py)."""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

_Message = TypeVar("_Message")


def helper_wanted() -> bool:
    """A helper pays only where the two processes get a core each."""
    return (os.cpu_count() or 1) >= 2


def start_helper(target: Callable[..., None], args: tuple[Any, ...], name: str) -> BaseProcess:
    """Spawned, not forked: the caller's threads (upload, sealing, writing) may hold locks
    inside OpenSSL or zstd at the moment of a fork. A daemon, so it never outlives the caller."""
    # Imported here: multiprocessing costs every command's start ~10 ms; only a helper needs it.
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(
        target=target, args=args, name=name, daemon=True
    )
    process.start()
    return process


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
