"""Server and client configuration: TOML files, defaults, validation, atomic saves."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .durable import atomic_write_bytes
from .errors import ConfigError, InvalidRequest
from .retention import DEFAULT_POLICY, RetentionPolicy, format_duration

DEFAULT_PORT = 7443
_DURATION = re.compile(r"(\d+)\s*([smhdwy])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_S3_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/([A-Za-z0-9._/-]*))?$")


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``24h``, ``1d12h`` or ``2w``."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned.isdigit():
        return int(cleaned)
    pos = 0
    total = 0
    for match in _DURATION.finditer(cleaned):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise ConfigError(f"{text!r} is not a duration (examples: 90s, 24h, 7d, 1w2d)")
    return total


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ConfigError(f"address {text!r} has no host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError as exc:
        raise ConfigError(f"address {text!r} has a non-numeric port") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"address {text!r} has a port out of range")
    return host, port


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` -> (bucket, prefix without surrounding slashes)."""
    match = _S3_URL.match(url.strip())
    prefix = (match.group(2) or "").strip("/") if match else ""
    if not match or ".." in prefix or "//" in prefix:
        raise ConfigError(f"storage {url!r} is not 'local' or s3://BUCKET[/PREFIX]")
    return match.group(1), prefix


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def xdg_dir(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def default_client_config() -> Path:
    env = os.environ.get("RPYBACKUP_CONFIG")
    if env:
        return Path(env)
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "rpybackup" / "client.toml"


def default_server_config() -> Path:
    env = os.environ.get("RPYBACKUP_SERVER_CONFIG")
    if env:
        return Path(env)
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "rpybackup" / "server.toml"


def _load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"no {what} config at {path}") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} config {path}: {exc}") from exc


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _retention(section: dict[str, Any]) -> RetentionPolicy:
    """[retention]: keep_* counts and keep_within as a duration; absent means the default."""
    if not section:
        return DEFAULT_POLICY
    doc = dict(section)
    if "keep_within" in doc:
        doc["keep_within"] = parse_duration(_typed(section, "keep_within", str, "", "retention"))
    try:
        return RetentionPolicy.from_json(doc)
    except InvalidRequest as exc:
        raise ConfigError(f"[retention]: {exc}") from exc


def _typed(section: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = section.get(key, default)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be an integer")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be of type {kind.__name__}")
    return value


@dataclass
class ServerConfig:
    path: Path
    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    max_connections: int = 64
    pack_size: int = 32 * 1024 * 1024
    storage_url: str = "local"
    s3_endpoint: str = ""
    enroll_ttl: int = 24 * 3600
    idle_timeout: int = 600
    log_file: str = ""
    log_level: str = "info"
    retention: RetentionPolicy = DEFAULT_POLICY
    """The policy of every client that has none of its own."""
    prune_interval: int = 24 * 3600
    repack_unused_percent: int = 50
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def listen(self) -> str:
        return format_address(self.listen_host, self.listen_port)

    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        doc = _load_toml(path, "server")
        server = _section(doc, "server")
        storage = _section(doc, "storage")
        enrollment = _section(doc, "enrollment")
        prune = _section(doc, "prune")
        data = _typed(server, "data", str, "", "server")
        if not data:
            raise ConfigError(f"{path}: server.data (the data directory) is not set")
        host, port = parse_address(_typed(server, "listen", str, "127.0.0.1:7443", "server"))
        config = cls(
            path=path,
            data_dir=Path(data).expanduser(),
            listen_host=host,
            listen_port=port,
            max_connections=_typed(server, "max_connections", int, 64, "server"),
            idle_timeout=_typed(server, "idle_timeout_seconds", int, 600, "server"),
            log_file=_typed(server, "log_file", str, "", "server"),
            log_level=_typed(server, "log_level", str, "info", "server"),
            pack_size=_typed(storage, "pack_size_mib", int, 32, "storage") * 1024 * 1024,
            storage_url=_typed(storage, "url", str, "local", "storage"),
            s3_endpoint=_typed(storage, "s3_endpoint", str, "", "storage"),
            enroll_ttl=parse_duration(_typed(enrollment, "code_ttl", str, "24h", "enrollment")),
            retention=_retention(_section(doc, "retention")),
            prune_interval=parse_duration(_typed(prune, "interval", str, "24h", "prune")),
            repack_unused_percent=_typed(prune, "repack_unused_percent", int, 50, "prune"),
            extra={
                k: v
                for k, v in doc.items()
                if k not in ("server", "storage", "enrollment", "retention", "prune")
            },
        )
        config.validate()
        return config

    def validate(self) -> None:
        if not 1 <= self.max_connections <= 4096:
            raise ConfigError("server.max_connections must be between 1 and 4096")
        if not 1024 * 1024 <= self.pack_size <= 1024 * 1024 * 1024:
            raise ConfigError("storage.pack_size_mib must be between 1 and 1024")
        if self.storage_url != "local":
            split_s3_url(self.storage_url)
        elif self.s3_endpoint:
            raise ConfigError("storage.s3_endpoint is set, but storage.url is not s3://...")
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            raise ConfigError("storage.s3_endpoint must be an http:// or https:// URL")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("server.log_level must be debug, info, warning or error")
        if not 1 <= self.repack_unused_percent <= 100:
            raise ConfigError("prune.repack_unused_percent must be between 1 and 100")

    def to_toml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "server": {
                "listen": self.listen,
                "data": str(self.data_dir),
                "max_connections": self.max_connections,
                "idle_timeout_seconds": self.idle_timeout,
                "log_file": self.log_file,
                "log_level": self.log_level,
            },
            "storage": {
                "pack_size_mib": self.pack_size // (1024 * 1024),
                "url": self.storage_url,
                "s3_endpoint": self.s3_endpoint,
            },
            "enrollment": {"code_ttl": f"{self.enroll_ttl}s"},
            "retention": {
                **self.retention.to_json(),
                "keep_within": format_duration(self.retention.keep_within),
            },
            "prune": {
                "interval": f"{self.prune_interval}s",
                "repack_unused_percent": self.repack_unused_percent,
            },
        }
        doc.update(self.extra)
        return doc

    def save(self) -> None:
        atomic_write_bytes(self.path, tomli_w.dumps(self.to_toml()).encode("utf-8"), mode=0o600)


@dataclass
class ClientConfig:
    path: Path
    server: str
    fingerprint: str
    name: str
    token: str
    key: str
    sources: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    quiet_seconds: int = 10
    max_delay: int = 600
    cache_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return xdg_dir("XDG_CACHE_HOME", ".cache") / "rpybackup" / self.name

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        doc = _load_toml(path, "client")
        server = _section(doc, "server")
        identity = _section(doc, "identity")
        repository = _section(doc, "repository")
        backup = _section(doc, "backup")
        watch = _section(doc, "watch")
        cache = _section(doc, "cache")
        config = cls(
            path=path,
            server=_typed(server, "address", str, "", "server"),
            fingerprint=_typed(server, "fingerprint", str, "", "server"),
            name=_typed(identity, "name", str, "", "identity"),
            token=_typed(identity, "token", str, "", "identity"),
            key=_typed(repository, "key", str, "", "repository"),
            sources=list(_typed(backup, "sources", list, [], "backup")),
            excludes=list(_typed(backup, "excludes", list, [], "backup")),
            quiet_seconds=_typed(watch, "quiet_seconds", int, 10, "watch"),
            max_delay=parse_duration(_typed(watch, "max_delay", str, "10m", "watch")),
            cache_dir=_typed(cache, "dir", str, "", "cache"),
            extra={
                k: v
                for k, v in doc.items()
                if k not in ("server", "identity", "repository", "backup", "watch", "cache")
            },
        )
        config.validate()
        return config

    def validate(self) -> None:
        for key in ("server", "fingerprint", "name", "token", "key"):
            if not getattr(self, key):
                raise ConfigError(f"{self.path}: {key} is missing; run 'rpybackup-core enroll'")
        parse_address(self.server)
        if not all(isinstance(item, str) for item in self.sources + self.excludes):
            raise ConfigError(f"{self.path}: backup.sources and backup.excludes hold strings")
        if not 0 < self.quiet_seconds <= 86400:
            raise ConfigError(f"{self.path}: watch.quiet_seconds must be between 1 and 86400")
        if not 0 < self.max_delay <= 7 * 86400:
            raise ConfigError(f"{self.path}: watch.max_delay must be between 1s and 7d")

    def to_toml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "server": {"address": self.server, "fingerprint": self.fingerprint},
            "identity": {"name": self.name, "token": self.token},
            "repository": {"key": self.key},
            "backup": {"sources": self.sources, "excludes": self.excludes},
            "watch": {"quiet_seconds": self.quiet_seconds, "max_delay": f"{self.max_delay}s"},
        }
        if self.cache_dir:
            doc["cache"] = {"dir": self.cache_dir}
        doc.update(self.extra)
        return doc

    def save(self) -> None:
        atomic_write_bytes(self.path, tomli_w.dumps(self.to_toml()).encode("utf-8"), mode=0o600)
