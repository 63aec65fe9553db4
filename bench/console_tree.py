"""How the console's backup browser copes with a snapshot of 100,000 files.

    python bench/console_tree.py [--files 100000] [--work DIR]

Half the files sit in one flat directory (the worst case for one folder), half in folders of
1,000. A loopback server gets one backup of it; then the script times what the browser does:
listing one folder through the client API (one connection, the path walked from the root), and
in the headless console, opening the snapshot and expanding the flat folder until its first
page of rows is on screen. Only folders that are opened are ever fetched.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from textual.widgets import DataTable, Tree

from rpybackup_core.client import BackupClient, enroll
from rpybackup_core.config import ServerConfig
from rpybackup_core.server import BackupServer
from rpybackup_core.tls import create_identity
from rpybackup_tui.app import ConsoleApp
from rpybackup_tui.data.backend import Backend
from rpybackup_tui.screens.browser import PAGE

FOLDER = 1000
T = TypeVar("T")


def make_tree(root: Path, files: int) -> tuple[Path, Path]:
    flat, nested = root / "flat", root / "nested"
    flat.mkdir(parents=True)
    for index in range(files // 2):
        (flat / f"f{index:06}.txt").write_text(f"flat {index}\n")
    for index in range(files - files // 2):
        folder = nested / f"d{index // FOLDER:04}"
        if index % FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"f{index:06}.txt").write_text(f"nested {index}\n")
    return flat, nested


def timed(what: str, call: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = call()
    print(f"{what:<52} {time.perf_counter() - start:8.3f} s")
    return result


async def open_flat_folder(app: ConsoleApp, flat: Path) -> float:
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        table = app.screen.query_one("#snapshots", DataTable)
        while table.row_count == 0:
            await pilot.pause(0.01)
        table.focus()
        start = time.perf_counter()
        await pilot.press("enter")
        tree = app.screen.query_one("#files", Tree)
        node = tree.root
        for part in flat.parts[1:]:
            while not (node.data and node.data.loaded):
                await pilot.pause(0.01)
            node = next(c for c in node.children if str(c.label).rstrip("/") == part)
            node.expand()
        while not (node.data and node.data.loaded):
            await pilot.pause(0.01)
        await pilot.pause()
        elapsed = time.perf_counter() - start
        assert len(node.children) == PAGE + 1, len(node.children)
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rpb-console-", dir=args.work))
    config = ServerConfig(path=work / "server.toml", data_dir=work / "data", listen_port=0)
    fingerprint = create_identity(config.tls_dir)
    server = BackupServer(config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.address[1]}"
        code = server.repo.add_client("bench", admin=False, ttl=600)
        client_config, _ = enroll(
            address, code, fingerprint, work / "client.toml", passphrase="bench"
        )
        client_config.cache_dir = str(work / "cache")
        flat, nested = timed(
            f"create {args.files:,} files", lambda: make_tree(work / "src", args.files)
        )
        client_config.sources = [str(work / "src")]
        client_config.save()
        result = timed("back them up (one snapshot)", lambda: BackupClient(client_config).backup())
        print(f"  {result.files:,} files, {result.dirs:,} folders in the snapshot")
        backend = Backend(client_config)
        snap = result.snapshot
        timed("list the snapshot's top folder", lambda: backend.children(snap, "/"))
        timed(
            f"list a folder of {FOLDER:,} files",
            lambda: backend.children(snap, str(nested / "d0000")),
        )
        entries = timed(
            f"list the flat folder ({args.files // 2:,} files)",
            lambda: backend.children(snap, str(flat)),
        )
        assert len(entries) == args.files // 2
        seconds = asyncio.run(open_flat_folder(ConsoleApp(client_config), flat))
        print(f"{'console: open snapshot, expand to the flat folder':<52} {seconds:8.3f} s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{'peak RSS of this process (server included)':<52} {peak:8.0f} MiB")
    finally:
        server.shutdown()
        server.repo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
