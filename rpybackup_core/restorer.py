"""The restore side: read trees, fetch and verify chunks, write files safely under a target.

Everything is written relative to directory file descriptors opened with O_NOFOLLOW, so a
symlink in the target (or one the snapshot itself restores) can never redirect a write outside
the target. Names were validated when the tree was decoded. A file is written under a temporary
name and renamed into place only after its SHA-256 matches; a damaged file is reported and
skipped, and the rest of the restore goes on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .crypto import MasterKey, Sealer
from .errors import IntegrityError, NotFound, RestoreError, RPyBackupError, UsageError
from .progress import Progress, ProgressCallback, ignore_progress
from .remote import RemoteRepository
from .tree import DIR, FILE, SYMLINK, Node, check_name, decode_tree

log = logging.getLogger(__name__)

_FETCH_BYTES = 8 * 1024 * 1024
_FETCH_IDS = 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "bytes": self.bytes,
            "errors": self.errors,
        }


def split_snapshot_path(path: str) -> list[str]:
    """Components of a path inside a snapshot; '..' and empty components are refused."""
    parts = [part for part in PurePosixPath("/" + path.strip()).parts[1:] if part != "."]
    for part in parts:
        try:
            check_name(part)
        except IntegrityError as exc:
            raise UsageError(f"{path!r} is not a valid path inside a snapshot") from exc
    return parts


class TreeReader:
    """Loads and decodes trees by their content ids, keeping the most recent ones."""

    def __init__(self, remote: RemoteRepository, sealer: Sealer, keep: int = 256) -> None:
        self.remote = remote
        self.sealer = sealer
        self._cache: OrderedDict[tuple[bytes, ...], list[Node]] = OrderedDict()
        self._keep = keep

    def load(self, ids: list[bytes]) -> list[Node]:
        key = tuple(ids)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = b"".join(self.sealer.open(cid, blob) for cid, blob in self.remote.get(list(ids)))
        nodes = decode_tree(data)
        self._cache[key] = nodes
        if len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return nodes

    def find(self, root: list[bytes], parts: list[str]) -> tuple[list[Node], Node | None]:
        """The nodes along ``parts`` (parents first) and the node itself; None for the root."""
        trail: list[Node] = []
        nodes = self.load(root)
        node: Node | None = None
        for index, part in enumerate(parts):
            node = next((n for n in nodes if n.name == part), None)
            if node is None:
                raise NotFound(f"/{'/'.join(parts[: index + 1])} is not in the snapshot")
            if index < len(parts) - 1:
                if node.kind != DIR:
                    raise NotFound(f"/{'/'.join(parts[: index + 1])} is not a directory")
                trail.append(node)
                nodes = self.load(node.content)
        return trail, node

    def walk(self, root: list[bytes], prefix: str = "") -> Iterator[tuple[str, Node]]:
        for node in self.load(root):
            path = f"{prefix}/{node.name}"
            yield path, node
            if node.kind == DIR:
                yield from self.walk(node.content, path)


class Restorer:
    def __init__(
        self,
        remote: RemoteRepository,
        key: MasterKey,
        progress: ProgressCallback = ignore_progress,
    ) -> None:
        self.remote = remote
        self.sealer = Sealer(key)
        self.trees = TreeReader(remote, self.sealer)
        self.report = progress
        self.progress = Progress("restore")
        self.result = RestoreResult()

    # ---- entry points -----------------------------------------------------------------------

    def restore(self, root: list[bytes], target: Path, include: str | None = None) -> RestoreResult:
        parts = split_snapshot_path(include) if include else []
        trail, node = self.trees.find(root, parts)
        target.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if node is None:
                self._restore_nodes(fd, self.trees.load(root), "")
            else:
                self._restore_along(fd, trail, node)
        finally:
            os.close(fd)
        self.progress.phase = "done"
        self.report(self.progress)
        return self.result

    def fetch_file(self, node: Node, dest: Path) -> int:
        """Write one file's verified content to ``dest`` (a local path the user chose)."""
        if node.kind != FILE:
            raise UsageError(f"{node.name} is a {node.kind}, not a file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._write_file(fd, dest.name, node, str(dest), follow_existing=True)
        finally:
            os.close(fd)
        if self.result.errors:
            raise IntegrityError(self.result.errors[0])
        return node.size

    # ---- directories ------------------------------------------------------------------------

    def _restore_along(self, fd: int, trail: list[Node], node: Node) -> None:
        """Create the parents of an included path, then restore it."""
        if not trail:
            self._restore_nodes(fd, [node], "")
            return
        parent = trail[0]
        child_fd = self._open_dir(fd, parent.name, "/" + parent.name)
        try:
            self._restore_along(child_fd, trail[1:], node)
            self._apply_dir_metadata(child_fd, parent)
        finally:
            os.close(child_fd)

    def _open_dir(self, fd: int, name: str, shown: str) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RestoreError(
                    f"{shown}: the target holds a symlink or file where a directory belongs; "
                    "refusing to write through it"
                ) from exc
            raise

    def _restore_nodes(self, fd: int, nodes: list[Node], prefix: str) -> None:
        files = [node for node in nodes if node.kind == FILE]
        self._restore_files(fd, files, prefix)
        for node in nodes:
            shown = f"{prefix}/{node.name}"
            try:
                if node.kind == DIR:
                    self._restore_dir(fd, node, shown)
                elif node.kind == SYMLINK:
                    self._restore_symlink(fd, node, shown)
            except (OSError, RPyBackupError) as exc:
                self._fail(shown, exc)

    def _restore_dir(self, fd: int, node: Node, shown: str) -> None:
        child_fd = self._open_dir(fd, node.name, shown)
        try:
            self._restore_nodes(child_fd, self.trees.load(node.content), shown)
            self._apply_dir_metadata(child_fd, node)
        finally:
            os.close(child_fd)
        self.result.dirs += 1

    def _apply_dir_metadata(self, fd: int, node: Node) -> None:
        if _IS_ROOT:
            with contextlib.suppress(OSError):
                os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, node.mode)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))

    def _restore_symlink(self, fd: int, node: Node, shown: str) -> None:
        self._remove_existing(fd, node.name, shown)
        os.symlink(node.target, node.name, dir_fd=fd)
        if _IS_ROOT:
            with contextlib.suppress(OSError):
                os.chown(node.name, node.uid, node.gid, dir_fd=fd, follow_symlinks=False)
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(
                node.name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False
            )
        self.result.symlinks += 1

    @staticmethod
    def _remove_existing(fd: int, name: str, shown: str) -> None:
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError as exc:
            raise RestoreError(f"{shown}: a directory is in the way") from exc

    # ---- files ------------------------------------------------------------------------------

    def _restore_files(self, fd: int, files: list[Node], prefix: str) -> None:
        """Fetch small files in shared batches; large files stream chunk batch by batch."""
        group: list[Node] = []
        group_bytes = 0
        for node in files:
            if node.size > _FETCH_BYTES:
                self._write_file(fd, node.name, node, f"{prefix}/{node.name}")
                continue
            group.append(node)
            group_bytes += node.size
            if group_bytes >= _FETCH_BYTES or sum(len(n.content) for n in group) >= _FETCH_IDS:
                self._write_group(fd, group, prefix)
                group, group_bytes = [], 0
        if group:
            self._write_group(fd, group, prefix)

    def _write_group(self, fd: int, group: list[Node], prefix: str) -> None:
        ids = list(dict.fromkeys(cid for node in group for cid in node.content))
        blobs: dict[bytes, bytes] = {}
        try:
            for chunk_id, sealed in self.remote.get(ids) if ids else ():
                blobs[chunk_id] = self.sealer.open(chunk_id, sealed)
        except IntegrityError:
            # One damaged chunk: fall back to file by file so every other file still restores.
            for node in group:
                self._write_file(fd, node.name, node, f"{prefix}/{node.name}")
            return
        for node in group:
            self._write_file(fd, node.name, node, f"{prefix}/{node.name}", blobs)

    def _chunks(self, node: Node, blobs: dict[bytes, bytes] | None) -> Iterator[bytes]:
        if blobs is not None:
            for chunk_id in node.content:
                yield blobs[chunk_id]
            return
        batch: list[bytes] = []
        estimate = max(1, node.size // max(1, len(node.content)))
        for chunk_id in node.content:
            batch.append(chunk_id)
            if len(batch) * estimate >= _FETCH_BYTES:
                yield from self._fetch(batch)
                batch = []
        if batch:
            yield from self._fetch(batch)

    def _fetch(self, ids: list[bytes]) -> Iterator[bytes]:
        unique = list(dict.fromkeys(ids))
        opened = {cid: self.sealer.open(cid, blob) for cid, blob in self.remote.get(unique)}
        for chunk_id in ids:
            yield opened[chunk_id]

    def _write_file(
        self,
        fd: int,
        name: str,
        node: Node,
        shown: str,
        blobs: dict[bytes, bytes] | None = None,
        follow_existing: bool = False,
    ) -> None:
        temp = f".{name[:64]}.{secrets.token_hex(4)}.rpbtmp"
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=fd)
        digest = hashlib.sha256()
        written = 0
        try:
            try:
                with os.fdopen(out, "wb", closefd=False) as handle:
                    for data in self._chunks(node, blobs):
                        digest.update(data)
                        handle.write(data)
                        written += len(data)
                        self.progress.bytes_done += len(data)
                        self.report(self.progress)
                if digest.hexdigest() != node.sha256 or written != node.size:
                    raise IntegrityError(f"{shown}: content does not match its SHA-256")
                if _IS_ROOT:
                    with contextlib.suppress(OSError):
                        os.fchown(out, node.uid, node.gid)
                os.fchmod(out, node.mode)
                os.utime(out, ns=(node.mtime_ns, node.mtime_ns))
            finally:
                os.close(out)
            if not follow_existing:
                self._remove_if_dir(fd, name, shown)
            os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except (OSError, RPyBackupError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=fd)
            self._fail(shown, exc)
            return
        self.result.files += 1
        self.result.bytes += written
        self.progress.files_done += 1

    @staticmethod
    def _remove_if_dir(fd: int, name: str, shown: str) -> None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise RestoreError(f"{shown}: a directory is in the way")

    def _fail(self, shown: str, exc: OSError | RPyBackupError) -> None:
        reason = str(exc) if isinstance(exc, RPyBackupError) else (exc.strerror or str(exc))
        message = reason if reason.startswith(shown) else f"{shown}: {reason}"
        log.error("restore: %s", message)
        self.result.errors.append(message)
        self.progress.errors.append(message)
