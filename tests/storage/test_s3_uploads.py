"""Large packs reach S3 in parts, without holding the whole pack in memory."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

from rpybackup_core.s3storage import S3Backend

MiB = 1024 * 1024


def test_a_large_pack_is_uploaded_holding_about_one_part_in_memory(
    aws_env: Any, tmp_path: Path
) -> None:
    part = 5 * MiB
    backend = S3Backend("conformance", "memory", aws_env.endpoint, part_size=part)
    local = tmp_path / "pack.tmp"
    with local.open("wb") as handle:
        for _ in range(32):
            handle.write(os.urandom(MiB))

    tracemalloc.start()
    try:
        backend.put_file("packs", "big", local)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # A buffered whole pack alone would be 32 MiB.
    assert peak < 3 * part, f"peak {peak / MiB:.1f} MiB"
    assert backend.size("packs", "big") == 32 * MiB
