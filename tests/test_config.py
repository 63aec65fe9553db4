"""Config parsing: durations, addresses, and TOML round trips with validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpybackup_core.config import (
    ClientConfig,
    ServerConfig,
    parse_address,
    parse_duration,
)
from rpybackup_core.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("24h", 86400), ("1d12h", 129600), ("2w", 1209600), ("45", 45), ("1y", 31536000)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "1h-", "abc"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host:1", ("host", 1)),
        ("[::1]:7443", ("::1", 7443)),
        ("example.org", ("example.org", 7443)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", [":80", "host:http", "host:70000"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)


def test_server_config_round_trips(tmp_path: Path) -> None:
    config = ServerConfig(path=tmp_path / "s.toml", data_dir=tmp_path / "data", listen_port=9000)
    config.save()
    loaded = ServerConfig.load(config.path)
    assert (loaded.data_dir, loaded.listen_port) == (config.data_dir, 9000)
    assert oct(config.path.stat().st_mode & 0o777) == "0o600"


def test_client_config_missing_fields_say_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\naddress = "h:1"\n')
    with pytest.raises(ConfigError, match="enroll"):
        ClientConfig.load(path)


def test_client_config_with_wrong_types_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[backup]\nsources = "not-a-list"\n')
    with pytest.raises(ConfigError, match="sources"):
        ClientConfig.load(path)


def test_unparsable_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="cannot read"):
        ClientConfig.load(path)


def test_the_shipped_example_configs_load() -> None:
    examples = Path(__file__).resolve().parent.parent / "config"
    server = ServerConfig.load(examples / "server.toml")
    assert server.listen_port == 7443
    client = ClientConfig.load(examples / "client.toml")
    assert client.sources and client.quiet_seconds == 10
