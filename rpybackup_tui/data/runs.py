"""Backups started from the console: their outcome, kept for the runs screen."""

from __future__ import annotations

from dataclasses import dataclass

OK = "ok"
INCOMPLETE = "incomplete"
FAILED = "failed"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunRecord:
    started: str
    outcome: str
    files: int = 0
    bytes: int = 0
    uploaded_bytes: int = 0
    snapshot: str = ""
    message: str = ""
