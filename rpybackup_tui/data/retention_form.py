"""The retention editor's fields: text in, a RetentionPolicy (or a message per field) out."""

from __future__ import annotations

from dataclasses import dataclass

from rpybackup_core.config import parse_duration
from rpybackup_core.errors import ConfigError
from rpybackup_core.retention import RetentionPolicy, format_duration

COUNTS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
RULES = (*COUNTS, "keep_within")
MAX_COUNT = 100_000


@dataclass(frozen=True)
class RetentionChoice:
    """What the editor decided: a policy of the client's own, or None for the server default."""

    policy: RetentionPolicy | None


def form_values(policy: RetentionPolicy) -> dict[str, str]:
    values = {name: str(getattr(policy, name)) for name in COUNTS}
    values["keep_within"] = format_duration(policy.keep_within) if policy.keep_within else "0"
    return values


def check_rule(name: str, text: str) -> str:
    """The message to show next to one rule; empty when it is valid."""
    text = text.strip() or "0"
    if name == "keep_within":
        try:
            parse_duration(text)
        except ConfigError as exc:
            return str(exc)
        return ""
    if not text.isdigit() or int(text) > MAX_COUNT:
        return f"a whole number from 0 to {MAX_COUNT:,}"
    return ""


def policy_from(values: dict[str, str]) -> RetentionPolicy:
    """The policy the fields describe; raises ConfigError naming the first bad field."""
    for name in RULES:
        message = check_rule(name, values[name])
        if message:
            raise ConfigError(f"{name}: {message}")
    counts = {name: int(values[name].strip() or "0") for name in COUNTS}
    return RetentionPolicy(
        **counts, keep_within=parse_duration(values["keep_within"].strip() or "0")
    )
