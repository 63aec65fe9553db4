"""The server's peak memory as a client's chunk count grows: a backup's commit and a prune.

Usage: ``python bench/server_memory.py [--chunks 100000,400000,1600000] [--work DIR]``
(``just bench-server-memory``).

For each count a fresh server process (bench/tools.py) takes one client's snapshot of that
many tiny chunks, put over loopback TLS as a first backup would (random ids and bytes: the
server never sees plaintext), then a second snapshot that references half of them through
has-checks, as an unchanged run would. A prune with ``--keep-last 1`` then removes the first
snapshot and collects the half nobody references, and a `check` verifies what is left.
Printed and written to ``bench/results/*-server-memory.json``: the server's peak RSS (VmHWM,
a fresh process for each session) and the prune's and the check's, each as a ratio to the
smallest count's. Flat means ratios
near 1 however many chunks a client has.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tools import RPyBackup

from rpybackup_core.config import ClientConfig, parse_address
from rpybackup_core.remote import RemoteRepository

# Records in one put frame and ids in one has-check (the server's limit per request).
_PUT_BATCH = 4096
_HAS_BATCH = 65536
_CHUNK_BYTES = 64


def _commit(remote: RemoteRepository, root: bytes) -> str:
    return remote.commit(
        {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "tags": [],
            "meta": base64.b64encode(os.urandom(64)).decode(),
            "stats": {},
            "root": [root.hex()],
            "parent": None,
        }
    )


def _first_snapshot(config: ClientConfig, count: int) -> list[bytes]:
    """Put ``count`` tiny chunks and commit a snapshot of all of them; their ids."""
    ids = [os.urandom(32) for _ in range(count)]
    with RemoteRepository.from_config(config) as remote:
        for start in range(0, count, _PUT_BATCH):
            batch = ids[start : start + _PUT_BATCH]
            remote.put([(chunk_id, os.urandom(_CHUNK_BYTES)) for chunk_id in batch])
        remote.sync()
        _commit(remote, ids[0])
    return ids


def _second_snapshot(config: ClientConfig, ids: list[bytes]) -> None:
    """A snapshot of every other chunk, referenced through has-checks."""
    kept = ids[::2]
    with RemoteRepository.from_config(config) as remote:
        for start in range(0, len(kept), _HAS_BATCH):
            batch = kept[start : start + _HAS_BATCH]
            count = len(batch)
            if not all(remote.has_answer(remote.ask_has(batch, reference=True), count)):
                raise SystemExit("the server lost chunks it was given")
        _commit(remote, kept[0])


def measure(work: Path, count: int) -> dict[str, float]:
    rpy = RPyBackup(work)
    rpy.setup()
    try:
        config = ClientConfig.load(rpy.client_config)
        rpy.reset_server_peak()
        started = time.perf_counter()
        ids = _first_snapshot(config, count)
        first = {"seconds": time.perf_counter() - started, "peak": rpy.server_peak()}
        # A fresh server process: the second session's peak is its own, not the first's.
        rpy.stop()
        rpy.start_server(parse_address(config.server)[1])
        started = time.perf_counter()
        _second_snapshot(config, ids)
        second = {"seconds": time.perf_counter() - started, "peak": rpy.server_peak()}
    finally:
        rpy.stop()
    rpy.server_cli("client", "retention", "bench", "--keep-last", "1")
    prune = rpy.server_cli("prune", "--json")
    freed = json.loads(prune.stdout)["clients"][0]["chunks_freed"]
    if freed != count - len(ids[::2]):
        raise SystemExit(f"the prune freed {freed} chunks, not {count - len(ids[::2])}")
    check = rpy.server_cli("check", "--json")
    if json.loads(check.stdout)["problems"]:
        raise SystemExit(f"the check found problems: {check.stdout[:500]}")
    return {
        "chunks": count,
        "first_seconds": first["seconds"],
        "first_peak": first["peak"],
        "second_seconds": second["seconds"],
        "second_peak": second["peak"],
        "prune_seconds": prune.seconds,
        "prune_peak": prune.peak_rss,
        "check_seconds": check.seconds,
        "check_peak": check.peak_rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="100000,400000,1600000")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(text) for text in args.chunks.split(",")]
    base = args.work or Path(tempfile.mkdtemp(prefix="rpy-server-memory-"))
    rows = []
    try:
        for count in counts:
            work = base / f"n{count}"
            shutil.rmtree(work, ignore_errors=True)
            rows.append(measure(work, count))
            shutil.rmtree(work, ignore_errors=True)
            print(_line(rows[-1], rows[0]), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(base, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = Path(__file__).resolve().parent / "results" / f"{stamp}-server-memory.json"
    results.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"written to {results}")
    return 0


def _line(row: dict[str, float], baseline: dict[str, float]) -> str:
    mib = 1 << 20
    parts = [f"{row['chunks']:>9,} chunks:"]
    for phase in ("first", "second", "prune", "check"):
        peak = row[f"{phase}_peak"]
        ratio = peak / baseline[f"{phase}_peak"]
        parts.append(
            f"{phase} {row[f'{phase}_seconds']:6.1f} s {peak / mib:6.1f} MiB ({ratio:4.2f}x)"
        )
    return "  ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
