"""The client API: what the CLI, watch mode and the console call. Nothing here prints.

Every call opens its own authenticated connection, so the API is safe to use from worker
threads (one call per thread at a time).
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .archiver import SNAPSHOT_META, Archiver, BackupResult, normalize_sources
from .backup_helper import BackupHelper
from .config import ClientConfig
from .crypto import MasterKey, Sealer, unwrap_key, wrap_key
from .errors import BackupIncomplete, ConfigError, EnrollmentFailed, NotFound, UsageError
from .files_cache import FilesCache
from .helper_process import helper_wanted
from .progress import ProgressCallback, ignore_progress
from .remote import RemoteRepository
from .restore_helper import RestoreHelper
from .restorer import Restorer, RestoreResult
from .tree import DIR, Node
from .tree_reader import TreeReader, split_snapshot_path

_Helper = TypeVar("_Helper", BackupHelper, RestoreHelper)


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    time: str
    hostname: str
    tags: list[str]
    paths: list[str]
    stats: dict[str, Any]
    root: list[bytes]

    @classmethod
    def from_wire(cls, doc: dict[str, Any], sealer: Sealer) -> SnapshotInfo:
        meta = sealer.open_document(SNAPSHOT_META, str(doc["meta"]))
        return cls(
            id=str(doc["id"]),
            time=str(doc["time"]),
            hostname=str(meta.get("hostname", "")),
            tags=list(doc.get("tags", [])),
            paths=[str(path) for path in meta.get("paths", [])],
            stats=dict(doc.get("stats", {})),
            root=[bytes.fromhex(h) for h in doc["root"]],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "short_id": self.id[:8],
            "time": self.time,
            "hostname": self.hostname,
            "tags": self.tags,
            "paths": self.paths,
            "stats": self.stats,
        }


@dataclass(frozen=True)
class ListedEntry:
    path: str
    node: Node

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "path": self.path,
            "type": self.node.kind,
            "mode": oct(self.node.mode),
            "mtime_ns": self.node.mtime_ns,
            "size": self.node.size,
        }
        if self.node.target:
            doc["target"] = self.node.target
        return doc


class BackupClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.key = MasterKey.from_text(config.key)
        self._sealer = Sealer(self.key)

    def _snapshots(self, remote: RemoteRepository) -> list[SnapshotInfo]:
        return [SnapshotInfo.from_wire(doc, self._sealer) for doc in remote.snapshots()]

    def connection(self) -> RemoteRepository:
        """An authenticated connection; use it in a ``with`` block so it is closed."""
        return RemoteRepository.from_config(self.config)

    # ---- backups ----------------------------------------------------------------------------

    def backup(
        self,
        paths: list[str] | None = None,
        when: datetime.datetime | None = None,
        tags: list[str] | None = None,
        progress: ProgressCallback = ignore_progress,
        use_cache: bool = True,
    ) -> BackupResult:
        """Back up the given paths (default: the configured sources) as one snapshot.

        Raises BackupIncomplete (after committing) when some files could not be read.
        """
        sources = normalize_sources(paths or self.config.sources)
        excludes = [*self.config.excludes, str(self.config.cache_path)]
        cache = FilesCache(self.config.cache_path) if use_cache else None
        try:
            with self.connection() as remote:
                parent = self._latest_id(remote)
                archiver = Archiver(
                    remote,
                    self.key,
                    cache,
                    excludes,
                    progress,
                    helper=self._helper(BackupHelper),
                )
                result = archiver.run(sources, when, tags, parent)
        finally:
            if cache is not None:
                cache.close()
        if result.errors:
            raise BackupIncomplete(
                f"snapshot {result.snapshot[:8]} committed, but {len(result.errors)} "
                f"item(s) could not be read: {result.errors[0]}",
                result,
            )
        return result

    def _helper(
        self, start: Callable[[str, str, str, str, MasterKey], _Helper]
    ) -> Callable[[], _Helper] | None:
        """What starts a helper process for a backup's or a restore's large files (connecting
        as this client), where it pays."""
        if not helper_wanted():
            return None
        config = self.config
        return lambda: start(config.server, config.fingerprint, config.name, config.token, self.key)

    @staticmethod
    def _latest_id(remote: RemoteRepository) -> str | None:
        snapshots = remote.snapshots()
        return str(snapshots[-1]["id"]) if snapshots else None

    def report_state(self, state: str, last_backup: str | None, last_result: str) -> None:
        """Tell the server what this client is doing (watch mode), for ``status``."""
        with self.connection() as remote:
            remote.report_state(state, last_backup, last_result)

    # ---- snapshots --------------------------------------------------------------------------

    def snapshots(self) -> list[SnapshotInfo]:
        with self.connection() as remote:
            return self._snapshots(remote)

    @staticmethod
    def resolve(snapshots: list[SnapshotInfo], ref: str) -> SnapshotInfo:
        """``latest``, a full id, or a unique id prefix of at least 4 characters."""
        if not snapshots:
            raise NotFound("there are no snapshots yet")
        if ref == "latest":
            return snapshots[-1]
        ref = ref.lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise UsageError(f"{ref!r} is not a snapshot id (give 'latest' or 4+ hex digits)")
        matches = [snap for snap in snapshots if snap.id.startswith(ref)]
        if not matches:
            raise NotFound(f"no snapshot {ref}")
        if len(matches) > 1:
            raise UsageError(f"snapshot id {ref} is ambiguous; give more digits")
        return matches[0]

    @contextlib.contextmanager
    def listing(
        self, path: str = "/", snapshot: str = "latest", recursive: bool = True
    ) -> Iterator[tuple[SnapshotInfo, Iterator[ListedEntry]]]:
        """The snapshot and its entries under ``path``, read as they are taken (a tree a
        chunk at a time) while the connection is open: a listing of millions of files is
        never held whole."""
        with self.connection() as remote:
            snap = self.resolve(self._snapshots(remote), snapshot)
            reader = TreeReader(remote, Sealer(self.key))
            parts = split_snapshot_path(path)
            _, node = reader.find(snap.root, parts)
            yield snap, _listed(reader, snap, parts, node, recursive)

    def restore(
        self,
        snapshot: str,
        target: Path,
        include: str | None = None,
        progress: ProgressCallback = ignore_progress,
    ) -> tuple[SnapshotInfo, RestoreResult]:
        with self.connection() as remote:
            snap = self.resolve(self._snapshots(remote), snapshot)
            restorer = Restorer(remote, self.key, progress, helper=self._helper(RestoreHelper))
            restorer.progress.bytes_total = int(snap.stats.get("bytes", 0)) if not include else None
            result = restorer.restore(snap.root, target, include)
        return snap, result

    def get_file(self, path: str, dest: Path | None = None, snapshot: str | None = None) -> Path:
        """Fetch one file, from the given snapshot or else the newest snapshot holding it."""
        parts = split_snapshot_path(path)
        if not parts:
            raise UsageError("give the path of a file inside the snapshot")
        with self.connection() as remote:
            snaps = self._snapshots(remote)
            candidates = [self.resolve(snaps, snapshot)] if snapshot else list(reversed(snaps))
            if not candidates:
                raise NotFound("there are no snapshots yet")
            restorer = Restorer(remote, self.key)
            node = None
            for snap in candidates:
                try:
                    _, node = restorer.trees.find(snap.root, parts)
                    break
                except NotFound:
                    continue
            if node is None:
                raise NotFound(f"/{'/'.join(parts)} is in no snapshot")
            target = dest or Path(parts[-1])
            if target.is_dir():
                target = target / parts[-1]
            restorer.fetch_file(node, target)
        return target


def enroll(
    address: str,
    code: str,
    fingerprint: str,
    config_path: Path,
    name: str | None = None,
    passphrase: str | None = None,
) -> tuple[ClientConfig, str | None]:
    """Join a server and write the client config; returns it and a generated recovery passphrase.

    A first enrollment makes a new master key and stores a passphrase-wrapped copy on the
    server (with a generated passphrase when none is given). Re-enrolling a client whose key is
    already on the server recovers that key, which needs the passphrase.
    """
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists; remove it or pass another --config")
    with RemoteRepository.open(address, fingerprint) as remote:
        reply = remote.enroll(code)
    client_name = str(reply["client"])
    if name and name != client_name:
        raise EnrollmentFailed(f"the code was issued for {client_name!r}, not {name!r}")
    token = str(reply["token"])
    generated = None
    with RemoteRepository.connect(address, fingerprint, client_name, token) as remote:
        if reply.get("has_key"):
            if not passphrase:
                raise EnrollmentFailed(
                    f"{client_name!r} already has backups on this server; give its passphrase "
                    "(--passphrase-file or RPYBACKUP_PASSPHRASE) to recover the key"
                )
            key = unwrap_key(remote.wrapped_key(), passphrase)
        else:
            key = MasterKey.generate()
            if not passphrase:
                generated = passphrase = secrets.token_urlsafe(18)
            remote.set_wrapped_key(wrap_key(key, passphrase))
    config = ClientConfig(
        path=config_path,
        server=address,
        fingerprint=fingerprint,
        name=client_name,
        token=token,
        key=key.to_text(),
    )
    config.save()
    return config, generated


def _listed(
    reader: TreeReader, snap: SnapshotInfo, parts: list[str], node: Node | None, recursive: bool
) -> Iterator[ListedEntry]:
    """The entries under the node found at ``parts`` (None: the snapshot's root)."""
    base = "/" + "/".join(parts) if parts else ""
    if node is not None and node.kind != DIR:
        yield ListedEntry(base, node)
        return
    root = snap.root if node is None else node.content
    if recursive:
        for path, child in reader.walk(root):
            yield ListedEntry(base + path, child)
        return
    for nodes in reader.slices(root):
        for child in nodes:
            yield ListedEntry(f"{base}/{child.name}", child)
