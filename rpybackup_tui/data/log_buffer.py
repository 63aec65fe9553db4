"""Recent log records of the console process, kept in a bounded ring for the logs screen."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LogLine:
    created: float
    level: str
    source: str
    message: str

    @property
    def levelno(self) -> int:
        return logging.getLevelName(self.level) if self.level in LEVELS else logging.ERROR


class LogBuffer(logging.Handler):
    """Keeps the last ``capacity`` records; may be fed from any thread."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(logging.DEBUG)
        self._lines: collections.deque[LogLine] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()
        self.listener: Callable[[LogLine], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        level = record.levelname if record.levelname in LEVELS else "ERROR"
        line = LogLine(record.created, level, record.name, message)
        with self._guard:
            self._lines.append(line)
            listener = self.listener
        if listener is not None:
            listener(line)

    def lines(self, min_level: str = "DEBUG") -> list[LogLine]:
        threshold = logging.getLevelName(min_level)
        with self._guard:
            return [line for line in self._lines if line.levelno >= threshold]
