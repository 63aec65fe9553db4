"""`server init` with either storage: what it leaves on the local disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_server_init_makes_a_private_data_directory(
    request: pytest.FixtureRequest, cli, tmp_path: Path, storage: str
) -> None:
    args = ["--config", str(tmp_path / "server.toml"), "server", "init"]
    args += ["--data", str(tmp_path / "data")]
    if storage == "s3":
        weed = request.getfixturevalue("aws_env")
        args += ["--storage", "s3://private-check", "--s3-endpoint", weed.endpoint]

    result = cli(*args)

    assert result.code == 0, result.err
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert (tmp_path / "data" / "storage").exists() == (storage == "local")
