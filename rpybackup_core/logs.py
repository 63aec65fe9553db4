"""Logging setup: stderr for the journal, an optional file beside it."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handlers this module installed, so a second setup replaces only those."""


class _OwnFileHandler(logging.FileHandler):
    pass


def setup_logging(level: str = "warning", log_file: str = "") -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if isinstance(handler, (_OwnHandler, _OwnFileHandler)):
            root.removeHandler(handler)
            handler.close()
    stderr = _OwnHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(stderr)
    if log_file:
        file_handler = _OwnFileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(file_handler)
