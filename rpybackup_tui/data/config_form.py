"""The client config editor's form: text fields in, a validated ClientConfig (or messages) out."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from rpybackup_core.config import ClientConfig, parse_address, parse_duration
from rpybackup_core.errors import ConfigError
from rpybackup_core.retention import format_duration

FIELDS = ("server", "sources", "excludes", "quiet", "max_delay")


@dataclass(frozen=True)
class ConfigForm:
    """The editable fields as the user typed them; lists hold one entry per line."""

    server: str
    sources: str
    excludes: str
    quiet: str
    max_delay: str

    @classmethod
    def from_config(cls, config: ClientConfig) -> ConfigForm:
        return cls(
            server=config.server,
            sources="\n".join(config.sources),
            excludes="\n".join(config.excludes),
            quiet=format_duration(config.quiet_seconds),
            max_delay=format_duration(config.max_delay),
        )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_server(text: str) -> str:
    if not text.strip():
        return "give the server as HOST:PORT"
    try:
        parse_address(text)
    except ConfigError as exc:
        return str(exc)
    return ""


def _check_sources(text: str) -> str:
    # No sources is allowed: an admin identity may only ever watch the fleet.
    for source in _lines(text):
        path = os.path.expanduser(source)
        if not os.path.isabs(path):
            return f"{source}: give an absolute path (or one starting with ~)"
        if not os.path.exists(path):
            return f"{source}: does not exist on this machine"
    return ""


def _check_excludes(text: str) -> str:
    for pattern in _lines(text):
        if "\x00" in pattern:
            return "a pattern cannot hold a NUL character"
    return ""


def _check_quiet(text: str) -> str:
    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        return str(exc)
    if not 0 < seconds <= 86400:
        return "the quiet period must be between 1s and 24h"
    return ""


def _check_max_delay(text: str) -> str:
    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        return str(exc)
    if not 0 < seconds <= 7 * 86400:
        return "the maximum delay must be between 1s and 7d"
    return ""


_CHECKS = {
    "server": _check_server,
    "sources": _check_sources,
    "excludes": _check_excludes,
    "quiet": _check_quiet,
    "max_delay": _check_max_delay,
}


def check_field(name: str, text: str) -> str:
    """The message to show next to one field; empty when the field is valid."""
    return _CHECKS[name](text)


def check_form(form: ConfigForm) -> dict[str, str]:
    """Every field's message, only for the fields that are invalid."""
    messages = {name: check_field(name, getattr(form, name)) for name in FIELDS}
    if (
        not messages["quiet"]
        and not messages["max_delay"]
        and (parse_duration(form.max_delay) < parse_duration(form.quiet))
    ):
        messages["max_delay"] = "the maximum delay cannot be shorter than the quiet period"
    return {name: message for name, message in messages.items() if message}


def apply_form(config: ClientConfig, form: ConfigForm) -> ClientConfig:
    """A copy of ``config`` holding the form's values; raises ConfigError if any is invalid."""
    messages = check_form(form)
    if messages:
        name, message = next(iter(messages.items()))
        raise ConfigError(f"{name}: {message}")
    updated = dataclasses.replace(
        config,
        server=form.server.strip(),
        sources=_lines(form.sources),
        excludes=_lines(form.excludes),
        quiet_seconds=parse_duration(form.quiet),
        max_delay=parse_duration(form.max_delay),
    )
    updated.validate()
    return updated
