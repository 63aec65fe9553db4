"""Recent log records of the console process, kept for the logs screen, which follows them."""

from __future__ import annotations

from collections.abc import Callable

from rpybackup_core.logs import LogLine, RecentLog


class LogBuffer(RecentLog):
    """The core's ring of recent lines, telling a listener (the logs screen) of each new one."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(capacity)
        self.listener: Callable[[LogLine], None] | None = None

    def keep(self, line: LogLine) -> None:
        super().keep(line)
        listener = self.listener
        if listener is not None:
            listener(line)
