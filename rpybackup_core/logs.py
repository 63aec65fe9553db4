"""Logging setup: stderr for the journal, an optional file beside it, and the recent lines kept
in memory for the admin console."""

from __future__ import annotations

import collections
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .terminal import printable

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


class _Formatter(logging.Formatter):
    """A record's line with what a terminal would act on escaped (a file's name can hold an
    escape sequence or a newline that would forge a line); a traceback after it is left as
    it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def setup_logging(level: str = "warning", log_file: str = "") -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if isinstance(handler, (_OwnHandler, _OwnFileHandler)):
            root.removeHandler(handler)
            handler.close()
    stderr = _OwnHandler()
    stderr.setFormatter(_Formatter(_FORMAT))
    root.addHandler(stderr)
    if log_file:
        file_handler = _OwnFileHandler(log_file)
        file_handler.setFormatter(_Formatter(_FORMAT))
        root.addHandler(file_handler)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_MESSAGE = 2000


def _shown(text: str) -> str:
    """Log text as an admin's terminal may show it (it can carry what a client sent, or a
    file's name), cut to a bounded length."""
    return printable(text[:_MAX_MESSAGE])


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
            _shown(str(doc["source"])),
            _shown(str(doc["message"])),
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
        self.keep(LogLine(record.created, level, record.name, _shown(message)))

    def keep(self, line: LogLine) -> None:
        with self._guard:
            self._lines.append(line)

    def lines(self, min_level: str = "DEBUG", limit: int | None = None) -> list[LogLine]:
        """Oldest first; at most ``limit`` of the newest lines at ``min_level`` or above."""
        threshold = logging.getLevelName(min_level)
        with self._guard:
            kept = [line for line in self._lines if line.levelno >= threshold]
        return kept[-limit:] if limit else kept
