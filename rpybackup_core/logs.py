"""Logging setup: stderr for the journal, an optional file beside it, and the recent lines kept
in memory for the admin console."""

from __future__ import annotations

import collections
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (it may be replaced), and
    marks the handlers this module installed, so a second setup replaces only those."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


class _OwnFileHandler(logging.FileHandler):
    pass


def setup_logging(level: str = "warning", log_file: str = "") -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if isinstance(handler, (_OwnHandler, _OwnFileHandler)):
            root.removeHandler(handler)
            handler.close()
    stderr = _OwnHandler()
    stderr.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(stderr)
    if log_file:
        file_handler = _OwnFileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(file_handler)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_MESSAGE = 2000


def printable(text: str) -> str:
    """Control characters (escape sequences included) shown as U+FFFD: log text can carry what
    a client sent, and it ends up in an admin's terminal."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text[:_MAX_MESSAGE])


@dataclass(frozen=True)
class LogLine:
    created: float
    level: str
    source: str
    message: str

    @property
    def levelno(self) -> int:
        return int(logging.getLevelName(self.level))

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "level": self.level,
            "source": self.source,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LogLine:
        level = str(doc["level"])
        if level not in LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        return cls(
            float(doc["created"]),
            level,
            printable(str(doc["source"])),
            printable(str(doc["message"])),
        )


class RecentLog(logging.Handler):
    """The last ``capacity`` records, in memory: what the server shows an admin on request.
    Fed from any thread."""

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__(logging.DEBUG)
        self._lines: collections.deque[LogLine] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            message += f" ({type(error).__name__}: {error})"
        level = record.levelname if record.levelname in LEVELS else "ERROR"
        self.keep(LogLine(record.created, level, record.name, printable(message)))

    def keep(self, line: LogLine) -> None:
        with self._guard:
            self._lines.append(line)

    def lines(self, min_level: str = "DEBUG", limit: int | None = None) -> list[LogLine]:
        """Oldest first; at most ``limit`` of the newest lines at ``min_level`` or above."""
        threshold = logging.getLevelName(min_level)
        with self._guard:
            kept = [line for line in self._lines if line.levelno >= threshold]
        return kept[-limit:] if limit else kept
