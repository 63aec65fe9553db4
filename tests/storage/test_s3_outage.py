"""The object store refusing writes in the middle of a backup: the run fails with one clear line,
nothing committed is lost, and the next run (store back) completes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rpybackup_core.demo import compare_trees

MiB = 1024 * 1024


@pytest.fixture
def s3_endpoint(fault_proxy: Any) -> str:
    """This module's server reaches SeaweedFS through the fault-injecting proxy."""
    return fault_proxy.endpoint


def snapshots(cli, client: Any) -> list[dict]:
    result = cli("--config", str(client.path), "snapshots", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_a_store_refusing_writes_fails_the_run_and_the_next_run_completes(
    s3_server: Any, fault_proxy: Any, cli, sample_tree: Path, tmp_path: Path
) -> None:
    alice = s3_server.enroll("alice")
    first = cli("--config", str(alice.path), "run", str(sample_tree), "--json")
    assert first.code == 0, first.err
    (sample_tree / "new.bin").write_bytes(os.urandom(12 * MiB))
    fault_proxy.fail("PUT", times=10**6, status=403, code="AccessDenied")

    refused = cli("--config", str(alice.path), "run", str(sample_tree), "--json")

    assert refused.code == 1
    assert "refused access" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert len(snapshots(cli, alice)) == 1

    fault_proxy.faults.clear()
    second = cli("--config", str(alice.path), "run", str(sample_tree), "--json")
    assert second.code == 0, second.err
    assert len(snapshots(cli, alice)) == 2
    target = tmp_path / "restored"
    restored = cli("--config", str(alice.path), "restore", "latest", "--target", str(target))
    assert restored.code == 0, restored.err
    assert compare_trees(sample_tree, target / sample_tree.relative_to("/")) == []
