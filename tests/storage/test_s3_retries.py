"""Transient S3 failures are retried with backoff; what persists becomes one clear error.

A fault-injecting HTTP proxy on loopback sits between the backend and a real SeaweedFS.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from rpybackup_core.errors import StorageError
from rpybackup_core.s3storage import S3Backend

MiB = 1024 * 1024


def through(proxy: Any, prefix: str, attempts: int = 4) -> S3Backend:
    return S3Backend("conformance", prefix, proxy.endpoint, attempts=attempts, part_size=5 * MiB)


def test_throttling_and_server_errors_are_retried_until_they_pass(
    fault_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = through(fault_proxy, "retry-small")
    fault_proxy.fail("PUT", times=2)
    fault_proxy.fail("GET", status=500, code="InternalError")

    with caplog.at_level(logging.WARNING, logger="rpybackup_core.s3storage"):
        backend.put("packs", "a", b"payload")
        assert backend.get_range("packs", "a", 1, 5) == b"ayloa"

    assert fault_proxy.count("PUT") == 3
    assert fault_proxy.count("GET") == 2
    assert "storing packs/a succeeded after 2 retries" in caplog.text
    assert "reading packs/a succeeded after 1 retries" in caplog.text


def test_a_failing_part_of_a_large_upload_is_sent_again(fault_proxy: Any, tmp_path: Path) -> None:
    backend = through(fault_proxy, "retry-multipart")
    local = tmp_path / "pack.tmp"
    data = os.urandom(11 * MiB)
    local.write_bytes(data)
    fault_proxy.fail("PUT", code="ServiceUnavailable", after=1)

    backend.put_file("packs", "big", local)

    assert backend.get("packs", "big") == data
    assert fault_proxy.count("PUT") == 3 + 1  # three parts, the second one twice


def test_a_body_cut_off_mid_read_is_read_again(fault_proxy: Any) -> None:
    backend = through(fault_proxy, "retry-cut")
    data = os.urandom(200_000)
    backend.put("packs", "cut", data)
    fault_proxy.cut_body("GET")

    assert backend.get_range("packs", "cut", 1000, 100_000) == data[1000:101_000]
    assert fault_proxy.count("GET") == 2


def test_a_store_that_keeps_failing_gives_up_after_the_attempts(fault_proxy: Any) -> None:
    backend = through(fault_proxy, "retry-never", attempts=3)
    fault_proxy.fail("PUT", times=1000)

    with pytest.raises(StorageError, match="S3 failed while storing packs/x: SlowDown") as caught:
        backend.put("packs", "x", b"data")

    assert "\n" not in str(caught.value)
    assert fault_proxy.count("PUT") == 3


def test_a_permanently_failed_large_upload_leaves_no_parts_behind(
    fault_proxy: Any, aws_env: Any, tmp_path: Path
) -> None:
    backend = through(fault_proxy, "retry-abort")
    local = tmp_path / "pack.tmp"
    local.write_bytes(os.urandom(11 * MiB))
    # The third part is refused for good: the upload must be aborted, the local pack kept.
    fault_proxy.fail("PUT", times=1000, status=403, code="AccessDenied", after=2)

    with pytest.raises(StorageError, match="refused access"):
        backend.put_file("packs", "big", local)

    assert local.exists()
    uploads = aws_env.client().list_multipart_uploads(Bucket="conformance", Prefix="retry-abort/")
    assert uploads.get("Uploads", []) == []


def test_a_store_that_ignores_the_range_is_refused_not_read_whole(fault_proxy: Any) -> None:
    backend = through(fault_proxy, "retry-unranged")
    backend.put("packs", "p", os.urandom(50_000))
    fault_proxy.ignore_range()

    with pytest.raises(StorageError, match="ignored the byte range"):
        backend.get_range("packs", "p", 100, 1000)
