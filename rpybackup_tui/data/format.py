"""How numbers and times read on screen."""

from __future__ import annotations

import datetime
import os

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit always returns")


def short_time(iso: str | None) -> str:
    """``2026-01-31 12:00`` in UTC, from an ISO 8601 stamp; a dash when there is none."""
    if not iso:
        return "—"
    try:
        moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def display_path(path: str | os.PathLike[str]) -> str:
    """A local path with the home directory shown as ``~``, as the user would type it."""
    text = str(path)
    home = os.path.expanduser("~")
    if home != "/" and (text == home or text.startswith(home + os.sep)):
        return "~" + text[len(home) :]
    return text
