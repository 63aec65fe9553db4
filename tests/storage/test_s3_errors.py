"""What an admin sees when the object store is misconfigured or away: one clear line, exit 1."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from rpybackup_core.config import ServerConfig, split_s3_url
from rpybackup_core.errors import ConfigError, NotFound, StorageError
from rpybackup_core.s3storage import S3Backend
from rpybackup_core.storage import LocalBackend, open_backend

BUCKET = "conformance"


def test_wrong_credentials_are_refused_with_a_reason(
    aws_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    backend = S3Backend(BUCKET, "denied", aws_env.endpoint)
    with pytest.raises(StorageError, match=r"refused access.*SignatureDoesNotMatch") as caught:
        backend.put("packs", "x", b"data")
    assert "\n" not in str(caught.value)


def test_missing_credentials_say_where_to_put_them(
    aws_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = S3Backend(BUCKET, "nocreds", aws_env.endpoint)
    with pytest.raises(StorageError, match=r"no AWS credentials.*AWS_ACCESS_KEY_ID"):
        backend.stat("packs", "x")


def test_a_missing_bucket_is_named(aws_env: Any) -> None:
    backend = S3Backend("no-such-bucket", "", aws_env.endpoint)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        backend.get_range("packs", "x", 0, 10)


def test_an_unreachable_store_fails_after_bounded_retries(aws_env: Any) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        backend = S3Backend(BUCKET, "", endpoint, attempts=2)
        with pytest.raises(StorageError, match=r"cannot reach .* after 2 attempts") as caught:
            backend.get_range("packs", "x", 0, 10)
    assert not isinstance(caught.value, NotFound)


def test_server_init_creates_the_bucket_and_refuses_bad_storage_urls(
    aws_env: Any, cli, tmp_path: Path
) -> None:
    made = cli(
        "--config",
        str(tmp_path / "a.toml"),
        "server",
        "init",
        "--data",
        str(tmp_path / "a"),
        "--storage",
        "s3://fresh-bucket/x",
        "--s3-endpoint",
        aws_env.endpoint,
    )
    assert made.code == 0, made.err
    assert "created bucket fresh-bucket" in made.out
    buckets = {bucket["Name"] for bucket in aws_env.client().list_buckets()["Buckets"]}
    assert "fresh-bucket" in buckets

    bad = cli(
        "--config",
        str(tmp_path / "b.toml"),
        "server",
        "init",
        "--data",
        str(tmp_path / "b"),
        "--storage",
        "s3://Bad_Bucket",
    )
    assert bad.code == 1
    assert "s3://BUCKET[/PREFIX]" in bad.err
    assert not (tmp_path / "b.toml").exists()


def test_server_init_with_unusable_storage_writes_no_config(
    aws_env: Any, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    result = cli(
        "--config",
        str(tmp_path / "s.toml"),
        "server",
        "init",
        "--data",
        str(tmp_path / "d"),
        "--storage",
        "s3://rpb-denied",
        "--s3-endpoint",
        aws_env.endpoint,
    )
    assert result.code == 1
    assert "refused access" in result.err
    assert not (tmp_path / "s.toml").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://rpb", ("rpb", "")),
        ("s3://rpb/", ("rpb", "")),
        ("s3://rpb/backups", ("rpb", "backups")),
        ("s3://my.bucket-1/a/b/", ("my.bucket-1", "a/b")),
    ],
)
def test_s3_urls_split_into_bucket_and_prefix(url: str, expected: tuple[str, str]) -> None:
    assert split_s3_url(url) == expected


@pytest.mark.parametrize(
    "url", ["s3://", "s3://ab", "s3://UPPER", "s3://b_x", "http://rpb", "s3://rpb/../x", "rpb"]
)
def test_bad_s3_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        split_s3_url(url)


def test_storage_settings_round_trip_through_server_toml(tmp_path: Path) -> None:
    config = ServerConfig(
        path=tmp_path / "server.toml",
        data_dir=tmp_path / "data",
        storage_url="s3://rpb/backups",
        s3_endpoint="http://127.0.0.1:8333",
    )
    config.save()
    loaded = ServerConfig.load(config.path)
    assert (loaded.storage_url, loaded.s3_endpoint) == ("s3://rpb/backups", "http://127.0.0.1:8333")


def test_local_storage_stays_the_default(tmp_path: Path) -> None:
    config = ServerConfig(path=tmp_path / "server.toml", data_dir=tmp_path / "data")
    config.save()
    backend = open_backend(ServerConfig.load(config.path))
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "data" / "storage"


def test_an_endpoint_without_an_s3_url_is_refused(cli, tmp_path: Path) -> None:
    result = cli(
        "--config",
        str(tmp_path / "s.toml"),
        "server",
        "init",
        "--data",
        str(tmp_path / "d"),
        "--s3-endpoint",
        "http://127.0.0.1:8333",
    )
    assert result.code == 1
    assert "storage.url is not s3://" in result.err
    assert not (tmp_path / "s.toml").exists()


def test_server_init_json_names_the_storage(aws_env: Any, cli, tmp_path: Path) -> None:
    made = cli(
        "--config",
        str(tmp_path / "j.toml"),
        "server",
        "init",
        "--data",
        str(tmp_path / "j"),
        "--storage",
        "s3://json-bucket/fleet",
        "--s3-endpoint",
        aws_env.endpoint,
        "--json",
    )
    assert made.code == 0, made.err
    doc = json.loads(made.out)
    assert doc["storage"] == "s3://json-bucket/fleet"
    assert doc["s3_endpoint"] == aws_env.endpoint
    assert {"config", "fingerprint", "listen"} <= doc.keys()
