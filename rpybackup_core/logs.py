"""Logging setup: stderr for the journal, an optional file beside it."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of each record (it may be replaced), and
    marks the handlers this module installed, so a second setup replaces only those."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - the logging API's attribute
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
