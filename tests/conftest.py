"""Shared fixtures: a real TLS server on 127.0.0.1 (port 0) in a thread, enrolled clients."""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rpybackup_core import archiver
from rpybackup_core.archiver import SNAPSHOT_META
from rpybackup_core.batching import batched
from rpybackup_core.cli.main import main
from rpybackup_core.client import BackupClient, ListedEntry, enroll
from rpybackup_core.config import ClientConfig, ServerConfig
from rpybackup_core.crypto import MasterKey, Sealer
from rpybackup_core.files_cache import FilesCache, ListingDigest, is_racy
from rpybackup_core.pack import parse_trailer
from rpybackup_core.server import BackupServer
from rpybackup_core.storage import LocalBackend
from rpybackup_core.tls import create_identity


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class ServerHarness:
    root: Path
    config: ServerConfig
    fingerprint: str
    server: BackupServer | None = None
    thread: threading.Thread | None = None
    clients: dict[str, ClientConfig] = field(default_factory=dict)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.address[1]}"

    @property
    def repo(self):
        assert self.server is not None
        return self.server.repo

    def start(self) -> None:
        self.server = BackupServer(self.config)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            assert self.thread is not None
            self.thread.join(timeout=30)
            self.server.repo.close()
            self.server = None

    def restart(self) -> None:
        """Stop and start on the same port, like a daemon restart."""
        port = self.server.address[1] if self.server else self.config.listen_port
        self.stop()
        self.config.listen_port = port
        self.start()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """An outage: stopped inside the block, back on the same port after it."""
        assert self.server is not None
        port = self.server.address[1]
        self.stop()
        try:
            yield
        finally:
            self.config.listen_port = port
            self.start()

    def add_client(self, name: str, admin: bool = False) -> str:
        return self.repo.add_client(name, admin=admin, ttl=3600)

    def enroll(self, name: str, admin: bool = False) -> ClientConfig:
        code = self.add_client(name, admin)
        config_path = self.root / f"{name}.toml"
        config, _ = enroll(self.address, code, self.fingerprint, config_path, passphrase="pw")
        config.cache_dir = str(self.root / f"cache-{name}")
        config.save()
        self.clients[name] = config
        return config

    def client(self, name: str) -> BackupClient:
        return BackupClient(self.clients[name])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHarness]:
    root = tmp_path / "srv"
    config = ServerConfig(path=root / "server.toml", data_dir=root / "data", listen_port=0)
    fingerprint = create_identity(config.tls_dir)
    config.save()
    harness = ServerHarness(root, config, fingerprint)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run the real CLI entry point in-process and capture what it prints."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def commit_header(
    sealer: Sealer, root: list[bytes], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A minimal ``commit`` request for a snapshot whose root tree is ``root``, as a test
    talking the protocol directly sends it."""
    return {
        "time": "2026-01-01T00:00:00Z",
        "tags": [],
        "stats": {},
        "parent": None,
        "root": [chunk_id.hex() for chunk_id in root],
        "meta": sealer.seal_document(SNAPSHOT_META, meta or {}),
    }


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    from rpybackup_core.demo import make_sample_tree

    root = tmp_path / "sample"
    root.mkdir()
    make_sample_tree(root)
    return root


@dataclass
class HelperStarter:
    """Starts a backup's or a restore's helper process as ``client`` (``start`` is the helper's
    class), keeping each one started to look at afterwards."""

    client: BackupClient
    start: Callable[..., Any]
    token: str = ""
    started: list[Any] = field(default_factory=list)

    def __call__(self) -> Any:
        config = self.client.config
        token = self.token or config.token
        helper = self.start(config.server, config.fingerprint, config.name, token, self.client.key)
        self.started.append(helper)
        return helper


@pytest.fixture
def helper_starter() -> type[HelperStarter]:
    return HelperStarter


@pytest.fixture
def used_cache(tmp_path: Path) -> Iterator[FilesCache]:
    """A files cache that has seen a run: the next one is a re-run."""
    cache = FilesCache(tmp_path / "used-cache")
    cache.commit()
    yield cache
    cache.close()


def backed_up(server: ServerHarness, source: Path) -> BackupClient:
    """Client alice, with one snapshot of ``source``."""
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    return client


def listed(client: BackupClient, path: str = "/") -> list[ListedEntry]:
    """Every entry of the latest snapshot under ``path``, as ``rlist`` lists them."""
    with client.listing(path) as (_, entries):
        return list(entries)


def damage_chunk(server: ServerHarness, name: str, key_text: str, plain: bytes) -> None:
    """Flip a byte in the middle of the blob that stores ``plain`` for client ``name``."""
    sealer = Sealer(MasterKey.from_text(key_text))
    client_id = server.repo.client_by_name(name).id
    location = next(iter(server.repo.locate(client_id, [sealer.chunk_id(plain)]).values()))
    backend = server.repo.backend
    assert isinstance(backend, LocalBackend)
    with (backend.root / "packs" / location.pack).open("r+b") as handle:
        handle.seek(location.offset + location.length // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def name_a_chunk_never_stored(cache_dir: Path, path: Path) -> None:
    """As if the server lost it: ``path``'s one chunk id replaced in the files cache (its row
    and its directory's) by a random one."""
    db = sqlite3.connect(cache_dir / "files-v2.sqlite")
    with db:
        (stored,) = db.execute("SELECT ids FROM files WHERE path = ?", (str(path),)).fetchone()
        never = os.urandom(len(stored))
        db.execute("UPDATE files SET ids = ? WHERE path = ?", (never, str(path)))
        prefix = f"{path.parent}/"
        (ids,) = db.execute("SELECT ids FROM dirs WHERE path = ?", (prefix,)).fetchone()
        assert stored in ids
        db.execute("UPDATE dirs SET ids = ? WHERE path = ?", (ids.replace(stored, never), prefix))
    db.close()


def knows_directory(cache: FilesCache, directory: Path | str) -> bool:
    """Whether ``cache`` knows ``directory`` as its entries are now (a digest per slice the
    walk takes)."""
    prefix = f"{directory}/"
    names = sorted(os.listdir(directory))
    listing = ListingDigest()
    for part in batched(
        [(prefix + name, os.lstat(prefix + name)) for name in names], archiver._WALK_SLICE
    ):
        listing.add(part)
    digest = listing.digest()
    return digest is not None and cache.known_directory(prefix, digest) is not None


def settled(source: Path) -> None:
    """Wait (at most 5 s) until nothing under ``source`` changed so recently that the files
    cache would not trust it (``is_racy``): only then does a backup leave its rows."""
    paths = [source, *source.rglob("*")]
    newest = max((os.lstat(path) for path in paths), key=lambda st: st.st_ctime_ns)
    deadline = time.monotonic() + 5
    while is_racy(newest) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not is_racy(newest), f"{source} stayed too recent to cache"


def stored_copies(data_dir: Path) -> collections.Counter[bytes]:
    """How many blobs of each chunk id the server's packs hold, indexed or not."""
    packs = (path for path in (data_dir / "storage").rglob("*") if path.is_file())
    return collections.Counter(
        entry.chunk_id for pack in packs for entry in parse_trailer(pack.read_bytes())
    )
