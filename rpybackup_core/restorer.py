"""The restore side: read trees, fetch and verify chunks, write files safely under a target.

Everything is written relative to directory file descriptors opened with O_NOFOLLOW, so a
symlink in the target (or one the snapshot itself restores) can never redirect a write outside
the target. Names were validated when the tree was decoded. A file is written under a temporary
name and renamed into place only after its digest matches; a damaged file is reported and
skipped, and the rest of the restore goes on. In a directory the restore created itself (empty,
nothing to protect) a file is written under its own name and removed if it does not verify, so
only an interrupted restore can leave a partial file there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .crypto import MasterKey, Sealer
from .errors import IntegrityError, RestoreError, RPyBackupError, UsageError
from .memory import keep_freed_memory, share_malloc_arena
from .progress import Progress, ProgressCallback, ignore_progress
from .remote import RemoteRepository
from .restore_files import (
    IS_ROOT,
    HelperOutcome,
    OpenDir,
    Outcome,
    SliceOutcome,
    TempFile,
    refuse_dir,
    temp_name,
)
from .tree import DIR, FILE, SYMLINK, Node
from .tree_reader import TreeReader, split_snapshot_path

if TYPE_CHECKING:
    from .restore_helper import RestoreHelper

log = logging.getLogger(__name__)

_FETCH_BYTES = 4 * 1024 * 1024
_FETCH_IDS = 1024
# Small files over this are written past the page cache (directio.py) as large ones are: a
# file is written once and not read back, and on this VM a fresh page-cache page costs a
# fault to the host too (docs/performance.md, finding 96).
_DIRECT_FILE = 1024 * 1024
# Get requests on the wire while the oldest reply is read and handed to the write pool.
_FETCHES_IN_FLIGHT = 3
# Subdirectory trees asked for ahead when a directory is entered (then more, so many to a
# request, as its subdirectories are entered); the tree cache keeps 256.
_TREES_AHEAD = 32
_TREES_PER_FETCH = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Large files handed to the helper process and not yet back (each holds a descriptor here);
# with this many in its hands, this process writes the next one itself.
_HANDED_FILES = 16
# Small files go to the helper in slices of a directory's files (of at most _SLICE_BYTES but
# for a single file). It is given more only while it holds fewer than _HANDED_SMALL_FILES of
# less than _HANDED_SMALL_BYTES (the rest this process writes itself): enough to keep it busy
# between two looks, few enough that neither process waits long for the other at the end. It
# starts only after _HELPER_AFTER_FILES small files or _HELPER_AFTER_BYTES of them, as
# starting it costs ~0.3 s of a core that a small restore would not win back; by bytes, a
# tree of a few hundred files of some MiB each (photos) no longer runs in one process.
_SLICE_FILES = 128
_SLICE_BYTES = 8 * 1024 * 1024
_HANDED_SMALL_FILES = 1024
_HANDED_SMALL_BYTES = 32 * 1024 * 1024
_HELPER_AFTER_FILES = 1024
_HELPER_AFTER_BYTES = 32 * 1024 * 1024
# Hard-linked files whose first name a restore remembers, to link their other names to (a few
# hundred bytes each); past this many, further ones are restored as files of their own.
_LINK_GROUPS = 16384


def _process_umask() -> int | None:
    """The umask, read without changing it (``os.umask`` would, for every thread at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return None


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


def restore_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Fetch:
    """Chunks asked for and not read yet, and what to do with them (or with the error).

    A fetch without a request only marks a point in the sequence: ``ready`` gets nothing.
    """

    wheres: list[OpenDir]
    request_id: int | None
    # Distinct, in the order asked: what the reply must hold.
    ids: list[bytes]
    ready: Callable[[dict[bytes, memoryview]], None]
    failed: Callable[[OSError | RPyBackupError], None]


@dataclass
class _SmallFiles:
    """Small files waiting to be asked for in one request: per directory, (name, node, shown)."""

    segments: list[_Segment] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    size: int = 0


@dataclass
class _LargeFile:
    """A large file being fetched batch by batch: its last write job and its first error."""

    temp: TempFile
    previous: Future[list[Outcome]] | None = None
    error: OSError | RPyBackupError | None = None


@dataclass(eq=False)
class _LinkGroup:
    """The names of one hard-linked file in a restore: the first is restored as a file, the
    others are linked to it once it is in place (as files of their own if it failed)."""

    # What the names must agree on to be one file: size, digest, mode, owner, mtime.
    same: tuple[object, ...]
    # The first name as shown: its path under the restore's top directory.
    first: str
    restored: bool | None = None
    waiting: list[tuple[OpenDir, Node, str]] = field(default_factory=list)


def _identity(node: Node) -> tuple[object, ...]:
    return (node.size, node.digest, node.mode, node.uid, node.gid, node.mtime_ns)


# A file to write: its name, node and the path shown for it.
_Entry = tuple[str, Node, str]
# A directory and some of its files, written by one job.
_Segment = tuple[OpenDir, list[_Entry]]


def _sliced(files: list[_Entry]) -> Iterator[list[_Entry]]:
    """A directory's small files in slices of at most _SLICE_FILES files and _SLICE_BYTES
    (a larger file alone)."""
    taken: list[_Entry] = []
    size = 0
    for entry in files:
        if taken and (len(taken) >= _SLICE_FILES or size + entry[1].size > _SLICE_BYTES):
            yield taken
            taken, size = [], 0
        taken.append(entry)
        size += entry[1].size
    if taken:
        yield taken


def _shares(segments: list[_Segment], count: int) -> list[list[_Segment]]:
    """Split a batch's files into at most ``count`` runs of about as many files each, in
    order; a directory's files may fall into two runs."""
    size = max(1, -(-sum(len(entries) for _, entries in segments) // count))
    shares: list[list[_Segment]] = []
    share: list[_Segment] = []
    room = size
    for where, entries in segments:
        while entries:
            taken, entries = entries[:room], entries[room:]
            share.append((where, taken))
            room -= len(taken)
            if not room:
                shares.append(share)
                share, room = [], size
    if share:
        shares.append(share)
    return shares


class Restorer:
    """Fetches on the calling thread and writes on a small pool.

    The main thread walks trees and receives sealed chunks; pool threads decrypt, verify and
    write files (AES-GCM, zstd, the file digest and file I/O release the GIL), so the next batch is
    on the wire while the last one is written. No directory waits for the jobs of another:
    each is finished (times, mode) when its own last job ends.

    With ``helper``, a second process (restore_helper.py) takes a share of the work, on a
    connection of its own: large files (this process creates each file and hands the helper
    its descriptor; the helper fetches, verifies and writes the content and reports its
    digest; this process checks it and finishes the file) and slices of small files (handed
    with their directory's descriptor and written there entirely, in the same way as here,
    while this process writes others). Both halves are bound by the GIL or bulk crypto and
    I/O; two interpreters use two cores.
    """

    def __init__(
        self,
        remote: RemoteRepository,
        key: MasterKey,
        progress: ProgressCallback = ignore_progress,
        workers: int | None = None,
        helper: Callable[[], RestoreHelper] | None = None,
    ) -> None:
        self.remote = remote
        self.sealer = Sealer(key)
        self.trees = TreeReader(remote, self.sealer, before_request=self._await_tree)
        self.report = progress
        self.progress = Progress("restore")
        self.result = RestoreResult()
        self._key = key
        self._local = threading.local()
        self._workers = workers or restore_workers()
        self._pool: ThreadPoolExecutor | None = None
        # Jobs in the pool, oldest first, with the directories each writes into.
        self._jobs: deque[tuple[Future[list[Outcome]], list[OpenDir]]] = deque()
        self._fetches: deque[_Fetch] = deque()
        self._batch = _SmallFiles()
        self._umask = _process_umask()
        self._open: list[OpenDir] = []
        self._start_helper = helper
        self._helper: RestoreHelper | None = None
        # Files the helper is writing, by shown path: their directory, file and mode of writing.
        self._handed: dict[str, tuple[OpenDir, TempFile, bool]] = {}
        # Slices of small files the helper is writing, by number; how many small files met.
        self._slices: dict[int, _Segment] = {}
        self._slice_numbers = itertools.count()
        self._small_seen = 0
        self._small_bytes = 0
        # Small files, and their bytes, in the slices the helper is writing.
        self._handed_small_files = 0
        self._handed_small_bytes = 0
        # What the helper wrote that progress counts so far, and of that, its finished files.
        self._helper_written = 0
        self._helper_finished = 0
        # Hard links: the restore's top directory (None: names are not linked), the groups by
        # link key, and those whose first name is still being written, by its shown path.
        self._top_fd: int | None = None
        self._link_groups: dict[str, _LinkGroup] = {}
        self._linking: dict[str, _LinkGroup] = {}

    # ---- entry points -----------------------------------------------------------------------

    def restore(self, root: list[bytes], target: Path, include: str | None = None) -> RestoreResult:
        parts = split_snapshot_path(include) if include else []
        trail, node = self.trees.find(root, parts)
        target.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        top = OpenDir(fd, "")
        self._top_fd = fd
        try:
            with self._running():
                if node is None:
                    for nodes in self.trees.slices(root):
                        self._restore_nodes(top, nodes, "")
                else:
                    self._restore_along(top, trail, node)
        finally:
            self._top_fd = None
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
            with self._running():
                where = OpenDir(fd, str(dest.parent))
                self._restore_file(where, dest.name, node, str(dest), follow_existing=True)
        finally:
            os.close(fd)
        if self.result.errors:
            raise IntegrityError(self.result.errors[0])
        return node.size

    # ---- the write pool ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        share_malloc_arena()
        keep_freed_memory()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="restore")
        try:
            yield
            while True:
                self._fetch_batch()
                self._settle_fetches()
                self._drain()
                # A file's outcome may start more work: its other names, restored as files.
                if self._fetches or self._jobs or self._batch.segments:
                    continue
                if not (self._handed or self._slices):
                    break
                if self._helper is not None and self._helper.stopped:
                    self._write_handed_here()
                else:
                    self._take_helper_outcomes(wait=True)
        finally:
            self._fetches.clear()
            self._batch = _SmallFiles()
            # Every job must end before a directory descriptor it uses is closed.
            self._settle()
            self._pool.shutdown(wait=True)
            self._pool = None
            self._stop_helper()
            for where in self._open:
                os.close(where.fd)
            self._open.clear()

    def _sealer(self) -> Sealer:
        sealer = getattr(self._local, "sealer", None)
        if sealer is None:
            sealer = self._local.sealer = Sealer(self._key)
        return sealer

    def _submit(
        self, wheres: list[OpenDir], job: Callable[..., list[Outcome]], *args: Any
    ) -> Future[list[Outcome]]:
        assert self._pool is not None
        while len(self._jobs) > self._workers + 1:
            self._collect()
        future = self._pool.submit(job, *args)
        self._jobs.append((future, wheres))
        for where in wheres:
            where.pending += 1
        return future

    def _fetch(
        self,
        wheres: list[OpenDir],
        ids: list[bytes],
        ready: Callable[[dict[bytes, memoryview]], None],
        failed: Callable[[OSError | RPyBackupError], None],
    ) -> None:
        """Ask for chunks now; they are handed to ``ready`` after every earlier fetch, while
        the server already sends the next ones (a few requests stay in flight). The
        directories the chunks are for stay open until then."""
        unique = list(dict.fromkeys(ids))
        request_id = self.remote.ask_get(unique) if unique else None
        wheres = list(dict.fromkeys(wheres))
        self._fetches.append(_Fetch(wheres, request_id, unique, ready, failed))
        for where in wheres:
            where.pending += 1
        while len(self._fetches) > _FETCHES_IN_FLIGHT:
            self._receive_fetch()

    def _receive_fetch(self) -> None:
        fetch = self._fetches.popleft()
        try:
            if fetch.request_id is None:
                fetch.ready({})
                return
            try:
                sealed = dict(self.remote.get_answer(fetch.request_id, fetch.ids))
            except (OSError, RPyBackupError) as exc:
                fetch.failed(exc)
                return
            fetch.ready(sealed)
        finally:
            for where in fetch.wheres:
                where.pending -= 1
                self._finish_if_done(where)

    def _await_tree(self, ids: list[bytes]) -> None:
        """Before a tree is asked for on its own: read what is in flight up to the tree, if it
        was fetched ahead; otherwise all of it (a plain get must not overtake replies)."""
        while self._fetches and self.trees.cached(ids) is None:
            self._receive_fetch()

    def _settle_fetches(self) -> None:
        while self._fetches:
            self._receive_fetch()

    def _collect(self) -> None:
        self._take_helper_outcomes(wait=False)
        future, wheres = self._jobs.popleft()
        self._merge(future.result())
        for where in wheres:
            where.pending -= 1
            self._finish_if_done(where)

    def _drain(self) -> None:
        while self._jobs:
            self._collect()

    def _settle(self) -> None:
        wait([future for future, _ in self._jobs])
        self._jobs.clear()

    def _merge(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is not None:
                self._fail(outcome.shown, outcome.error)
                continue
            self.result.files += 1
            self.result.bytes += outcome.written
            self.progress.files_done += 1
            self.progress.bytes_done += outcome.written
        self.report(self.progress)
        if self._linking:
            for outcome in outcomes:
                if outcome.error is None:
                    self._link_waiting(outcome.shown, True)

    # ---- directories ------------------------------------------------------------------------

    def _restore_along(self, where: OpenDir, trail: list[Node], node: Node) -> None:
        """Create the parents of an included path, then restore it."""
        if not trail:
            self._restore_nodes(where, [node], "")
            return
        parent = trail[0]
        child = self._open_dir(where, parent, "/" + parent.name)
        try:
            self._restore_along(child, trail[1:], node)
        finally:
            child.walked = True
            self._finish_if_done(child)

    def _open_dir(self, where: OpenDir, node: Node, shown: str) -> OpenDir:
        created = False
        with contextlib.suppress(FileExistsError):
            os.mkdir(node.name, 0o700, dir_fd=where.fd)
            created = True
        try:
            fd = os.open(node.name, _DIR_FLAGS, dir_fd=where.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RestoreError(
                    f"{shown}: the target holds a symlink or file where a directory belongs; "
                    "refusing to write through it"
                ) from exc
            raise
        child = OpenDir(fd, shown, node, fresh=created)
        self._open.append(child)
        if created:
            self._note_new_file_defaults(child)
        return child

    def _note_new_file_defaults(self, where: OpenDir) -> None:
        """What a file created in a fresh directory starts as, so that files that already
        match need no fchmod or fchown."""
        where.umask = self._umask
        if IS_ROOT:
            st = os.fstat(where.fd)
            where.owner = (st.st_uid, st.st_gid)
            group = st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()
            where.new_file_owner = (os.geteuid(), group)

    def _finish_if_done(self, where: OpenDir) -> None:
        """Writing a file touches its directory: a directory's times go on after its files."""
        if not where.walked or where.pending or where.node is None:
            return
        self._open.remove(where)
        try:
            self._apply_dir_metadata(where, where.node)
            self.result.dirs += 1
        except OSError as exc:
            self._fail(where.shown, exc)
        finally:
            os.close(where.fd)

    def _restore_nodes(self, where: OpenDir, nodes: list[Node], prefix: str) -> None:
        # The subdirectories' trees travel with the file chunks, so going into a directory
        # does not stop the stream for a round trip of its own (a source tree has thousands).
        subdirs = [node for node in nodes if node.kind == DIR]
        self._prefetch_trees(where, subdirs[:_TREES_AHEAD])
        later = subdirs[_TREES_AHEAD:]
        entered = 0
        files = [node for node in nodes if node.kind == FILE]
        self._restore_files(where, files, prefix)
        for node in nodes:
            shown = f"{prefix}/{node.name}"
            try:
                if node.kind == DIR:
                    # Keep 16 to 32 trees ahead, 16 to a request.
                    if entered % _TREES_PER_FETCH == 0:
                        self._prefetch_trees(where, later[entered : entered + _TREES_PER_FETCH])
                    entered += 1
                    self._restore_dir(where, node, shown)
                elif node.kind == SYMLINK:
                    self._restore_symlink(where, node, shown)
            except (OSError, RPyBackupError) as exc:
                self._fail(shown, exc)

    def _prefetch_trees(self, where: OpenDir, subdirs: list[Node]) -> None:
        """Ask for the trees of these subdirectories in one request (a tree of small
        directories would otherwise cost a round trip per directory). A tree of more than one
        chunk is left to be read a chunk at a time when its directory is entered."""
        wanted = [
            node.content
            for node in subdirs
            if len(node.content) == 1 and self.trees.cached(node.content) is None
        ]
        if wanted:
            # A tree that fails here is asked for again when it is needed, and fails there.
            self._fetch(
                [where],
                [chunk_id for ids in wanted for chunk_id in ids],
                functools.partial(self._keep_trees, wanted),
                lambda exc: None,
            )

    def _keep_trees(self, wanted: list[list[bytes]], sealed: dict[bytes, memoryview]) -> None:
        for ids in wanted:
            with contextlib.suppress(IntegrityError):
                self.trees.add(ids, sealed)

    def _restore_dir(self, where: OpenDir, node: Node, shown: str) -> None:
        child = self._open_dir(where, node, shown)
        try:
            for nodes in self.trees.slices(node.content):
                self._restore_nodes(child, nodes, shown)
        finally:
            child.walked = True
            self._finish_if_done(child)

    def _apply_dir_metadata(self, where: OpenDir, node: Node) -> None:
        if IS_ROOT and (node.uid, node.gid) != where.owner:
            with contextlib.suppress(OSError):
                os.fchown(where.fd, node.uid, node.gid)
        os.fchmod(where.fd, node.mode)
        os.utime(where.fd, ns=(node.mtime_ns, node.mtime_ns))

    def _restore_symlink(self, where: OpenDir, node: Node, shown: str) -> None:
        # A directory this restore created holds nothing it did not put there.
        if not where.fresh:
            self._remove_existing(where.fd, node.name, shown)
        os.symlink(node.target, node.name, dir_fd=where.fd)
        if IS_ROOT and (node.uid, node.gid) != where.new_file_owner:
            with contextlib.suppress(OSError):
                os.chown(node.name, node.uid, node.gid, dir_fd=where.fd, follow_symlinks=False)
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(
                node.name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=where.fd, follow_symlinks=False
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

    def _restore_files(self, where: OpenDir, files: list[Node], prefix: str) -> None:
        """Small files are fetched in shared batches (across directories, so a tree of many
        small directories is not one request per directory), or handed to the helper a slice
        at a time; large files batch by batch."""
        small: list[tuple[str, Node, str]] = []
        for node in files:
            shown = f"{prefix}/{node.name}"
            if node.link and self._as_link(where, node, shown):
                continue
            if node.size > _FETCH_BYTES:
                self._restore_file(where, node.name, node, shown)
            else:
                small.append((node.name, node, shown))
        for entries in _sliced(small):
            size = sum(node.size for _, node, _ in entries)
            self._small_seen += len(entries)
            self._small_bytes += size
            if not self._hand_slice(where, prefix, entries, size):
                self._add_to_batch(where, entries)

    # ---- hard links -------------------------------------------------------------------------

    def _as_link(self, where: OpenDir, node: Node, shown: str) -> bool:
        """Whether this name of a hard-linked file is linked to its first name (now, or once
        that is written) rather than restored as a file: not the first name, nor one whose
        first failed or differs from it."""
        if self._top_fd is None:
            return False
        group = self._link_groups.get(node.link)
        if group is None:
            if len(self._link_groups) < _LINK_GROUPS:
                group = _LinkGroup(_identity(node), shown)
                self._link_groups[node.link] = group
                self._linking[shown] = group
            return False
        if group.restored is False or group.same != _identity(node):
            return False
        if group.restored is None:
            group.waiting.append((where, node, shown))
            where.pending += 1
            return True
        self._link(group, where, node, shown)
        return True

    def _link_waiting(self, shown: str, restored: bool) -> None:
        """The first name of a hard-linked file is written (or failed): its other names met
        so far are linked to it (or restored as files)."""
        group = self._linking.pop(shown, None)
        if group is None:
            return
        group.restored = restored
        waiting, group.waiting = group.waiting, []
        for where, node, other in waiting:
            if restored:
                self._link(group, where, node, other)
            else:
                self._restore_file(where, node.name, node, other)
            where.pending -= 1
            self._finish_if_done(where)

    def _link(self, group: _LinkGroup, where: OpenDir, node: Node, shown: str) -> None:
        try:
            self._make_link(group.first.split("/")[1:], where, node.name, shown)
        except RestoreError as exc:
            self._fail(shown, exc)
        except OSError as exc:
            log.info("restore: %s restored as a file, not linked: %s", shown, exc.strerror or exc)
            self._restore_file(where, node.name, node, shown)
        else:
            self._merge([Outcome(shown, node.size)])

    def _make_link(self, path: list[str], where: OpenDir, name: str, shown: str) -> None:
        """Link ``name`` in ``where`` to the file at ``path``, reached one directory at a time
        without following a symlink, and put in place as a file is (replacing what is there
        unless it is a directory)."""
        assert self._top_fd is not None
        opened: list[int] = []
        fd = self._top_fd
        try:
            for part in path[:-1]:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                opened.append(fd)
            if where.fresh:
                os.link(path[-1], name, src_dir_fd=fd, dst_dir_fd=where.fd, follow_symlinks=False)
                return
            temp = temp_name(name)
            os.link(path[-1], temp, src_dir_fd=fd, dst_dir_fd=where.fd, follow_symlinks=False)
            try:
                refuse_dir(where.fd, name, shown)
                with where.lock:
                    os.replace(temp, name, src_dir_fd=where.fd, dst_dir_fd=where.fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=where.fd)
                raise
        finally:
            for descriptor in opened:
                os.close(descriptor)

    def _add_to_batch(self, where: OpenDir, entries: list[tuple[str, Node, str]]) -> None:
        for entry in entries:
            batch = self._batch
            if not batch.segments or batch.segments[-1][0] is not where:
                # The batch keeps the directory open until its fetch does.
                batch.segments.append((where, []))
                where.pending += 1
            batch.segments[-1][1].append(entry)
            node = entry[1]
            batch.ids.extend(node.content)
            batch.size += node.size
            if batch.size >= _FETCH_BYTES or len(batch.ids) >= _FETCH_IDS:
                self._fetch_batch()

    def _fetch_batch(self) -> None:
        batch, self._batch = self._batch, _SmallFiles()
        if not batch.segments:
            return
        wheres = [where for where, _ in batch.segments]
        self._fetch(
            wheres,
            batch.ids,
            functools.partial(self._write_batch, batch),
            functools.partial(self._write_one_by_one, batch),
        )
        for where in wheres:
            where.pending -= 1

    def _restore_file(
        self,
        where: OpenDir,
        name: str,
        node: Node,
        shown: str,
        follow_existing: bool = False,
    ) -> None:
        if node.size > _FETCH_BYTES:
            self._write_large(where, name, node, shown, follow_existing)
            return
        entries = [(name, node, shown)]
        self._fetch(
            [where],
            node.content,
            lambda sealed: self._submit_group(where, entries, sealed, follow_existing),
            lambda exc: self._fail(shown, exc),
        )

    def _submit_group(
        self,
        where: OpenDir,
        entries: list[tuple[str, Node, str]],
        sealed: dict[bytes, memoryview],
        follow_existing: bool,
    ) -> None:
        self._submit([where], self._group_job, where, entries, sealed, follow_existing)

    def _write_batch(self, batch: _SmallFiles, sealed: dict[bytes, memoryview]) -> None:
        """A job per worker, not per directory: in a tree of small directories a job, a
        hand-over and a wait per directory kept the main thread waiting and the pool idle."""
        for share in _shares(batch.segments, self._workers):
            self._submit([where for where, _ in share], self._share_job, share, sealed)

    def _share_job(self, share: list[_Segment], sealed: dict[bytes, memoryview]) -> list[Outcome]:
        outcomes = []
        for where, entries in share:
            outcomes.extend(self._group_job(where, entries, sealed, False))
        return outcomes

    def _write_one_by_one(self, batch: _SmallFiles, exc: OSError | RPyBackupError) -> None:
        if not isinstance(exc, IntegrityError):
            raise exc
        # One chunk damaged on the server: file by file, so every other file still restores.
        for where, entries in batch.segments:
            for name, node, shown in entries:
                self._restore_file(where, name, node, shown)

    def _group_job(
        self,
        where: OpenDir,
        entries: list[tuple[str, Node, str]],
        sealed: dict[bytes, memoryview],
        follow_existing: bool,
    ) -> list[Outcome]:
        """Pool thread: open the entries' chunks and write their files (reads only ``fd``,
        ``fresh`` and ``lock`` of ``where``, which never change)."""
        sealer = self._sealer()
        opened: dict[bytes, bytes | memoryview | IntegrityError] = {}
        for chunk_id in dict.fromkeys(cid for _, node, _ in entries for cid in node.content):
            try:
                opened[chunk_id] = sealer.open(chunk_id, sealed[chunk_id], verify_id=False)
            except IntegrityError as exc:
                opened[chunk_id] = exc
        outcomes = []
        for name, node, shown in entries:
            pieces = [opened[chunk_id] for chunk_id in node.content]
            damaged = next((p for p in pieces if isinstance(p, IntegrityError)), None)
            if damaged is not None:
                outcomes.append(Outcome(shown, error=damaged))
                continue
            try:
                temp = TempFile(
                    where,
                    name,
                    node,
                    shown,
                    follow_existing,
                    self._key.id_key,
                    direct=node.size > _DIRECT_FILE,
                )
            except OSError as exc:
                outcomes.append(Outcome(shown, error=exc))
                continue
            try:
                for piece in pieces:
                    temp.write(piece)  # type: ignore[arg-type]
            except OSError as exc:
                temp.error = exc
            outcomes.append(temp.finish(follow_existing))
        return outcomes

    def _write_large(
        self, where: OpenDir, name: str, node: Node, shown: str, follow_existing: bool
    ) -> None:
        helper = self._large_file_helper()
        try:
            temp = TempFile(
                where, name, node, shown, follow_existing, self._key.id_key, direct=helper is None
            )
        except OSError as exc:
            self._fail(shown, exc)
            return
        if helper is None:
            self._write_into(where, temp, follow_existing)
            return
        try:
            helper.hand_over(shown, temp.out, node)
        except OSError as exc:
            log.info("restore helper: %s", exc)
            temp.abort()
            # Its end is gone: its last reports and then its end are on their way.
            while not helper.stopped:
                self._take_helper_outcomes(wait=True)
            self._write_large(where, name, node, shown, follow_existing)
            return
        self._handed[shown] = (where, temp, follow_existing)
        where.pending += 1

    def _write_into(self, where: OpenDir, temp: TempFile, follow_existing: bool) -> None:
        """Fetch batch by batch; pool jobs open each batch in parallel and write it in order."""
        large = _LargeFile(temp)

        def failed(exc: OSError | RPyBackupError) -> None:
            large.error = large.error or exc

        for batch in self._batches(temp.node):
            self._fetch(
                [where],
                batch,
                functools.partial(self._write_part, where, large, batch),
                failed,
            )
        self._fetch(
            [where],
            [],
            lambda _: self._submit_finish(where, large, follow_existing),
            failed,
        )

    # ---- the helper process -----------------------------------------------------------------

    def _hand_slice(self, where: OpenDir, prefix: str, entries: list[_Entry], size: int) -> bool:
        """Hand these small files of ``where`` (``size`` bytes) to the helper if it has room
        for them."""
        if self._small_seen > _HELPER_AFTER_FILES or self._small_bytes > _HELPER_AFTER_BYTES:
            self._start_helper_now()
        helper = self._helper
        if helper is None:
            return False
        self._take_helper_outcomes(wait=False)
        if helper.stopped:
            self._write_handed_here()
            return False
        # Large files in hand keep it busy (they are fetched in a row; slices would wait).
        if (
            self._handed
            or self._handed_small_files + len(entries) > _HANDED_SMALL_FILES
            or self._handed_small_bytes + size > _HANDED_SMALL_BYTES
        ):
            return False
        number = next(self._slice_numbers)
        try:
            nodes = [node for _, node, _ in entries]
            helper.hand_slice(number, where.fd, where.fresh, prefix, nodes)
        except OSError as exc:
            log.info("restore helper: %s", exc)
            while not helper.stopped:
                self._take_helper_outcomes(wait=True)
            self._write_handed_here()
            return False
        self._slices[number] = (where, entries)
        self._handed_small_files += len(entries)
        self._handed_small_bytes += size
        where.pending += 1
        return True

    def _start_helper_now(self) -> None:
        if self._helper is None and self._start_helper is not None:
            self._helper = self._start_helper()
            self._start_helper = None

    def _large_file_helper(self) -> RestoreHelper | None:
        """The helper, started at the first large file, if it has room for another; none
        while its hands are full (this process writes the file itself rather than wait) or
        once it has stopped (the files it did not finish are then written here first).

        Called only as a large file begins, never from a fetch's or a job's completion: a file
        written here after all issues fetches, which must not land inside another file's."""
        self._start_helper_now()
        helper = self._helper
        if helper is None:
            return None
        self._take_helper_outcomes(wait=False)
        if not helper.stopped and len(self._handed) >= _HANDED_FILES:
            return None
        if helper.stopped:
            self._write_handed_here()
            return None
        return helper

    def _take_helper_outcomes(self, wait: bool) -> None:
        """Finish the files the helper reports done; with ``wait``, wait for news from it."""
        helper = self._helper
        if helper is None:
            return
        for outcome in helper.outcomes(wait):
            if isinstance(outcome, SliceOutcome):
                self._finish_slice(outcome)
            elif outcome is not None:
                self._finish_handed(outcome)
        # Progress shows what the helper wrote; finished files count once (``_merge``).
        if helper.written != self._helper_written:
            self.progress.bytes_done += helper.written - self._helper_written
            self._helper_written = helper.written
            self.report(self.progress)

    def _finish_handed(self, outcome: HelperOutcome) -> None:
        handed = self._handed.pop(outcome.shown, None)
        if handed is None:
            raise RestoreError(f"restore helper reported a file it was not given: {outcome.shown}")
        where, temp, follow_existing = handed
        temp.error = outcome.error
        temp.written, temp.written_digest = outcome.written, outcome.digest
        # Progress counted these bytes as the helper wrote them; ``_merge`` counts them again.
        self.progress.bytes_done -= outcome.written
        self._helper_finished += outcome.written
        self._merge([temp.finish(follow_existing)])
        where.pending -= 1
        self._finish_if_done(where)

    def _finish_slice(self, outcome: SliceOutcome) -> None:
        """Count what the helper wrote of a slice (progress counted its bytes as it wrote)."""
        handed = self._slices.pop(outcome.number, None)
        if handed is None:
            raise RestoreError(f"restore helper reported an unknown slice: {outcome.number}")
        where, entries = handed
        self._handed_small_files -= len(entries)
        self._handed_small_bytes -= sum(node.size for _, node, _ in entries)
        self._helper_finished += outcome.written
        for shown, error in outcome.errors:
            self._fail(shown, error)
        self.result.files += outcome.files
        self.result.bytes += outcome.written
        self.progress.files_done += outcome.files
        self.report(self.progress)
        if self._linking:
            failed = {shown for shown, _ in outcome.errors}
            for _, _, shown in entries:
                if shown not in failed:
                    self._link_waiting(shown, True)
        where.pending -= 1
        self._finish_if_done(where)

    def _write_handed_here(self) -> None:
        """The helper stopped: the files it had not finished are written again, here."""
        if not self._handed and not self._slices:
            return
        log.info(
            "restore helper stopped; writing its %d unfinished files and %d slices here",
            len(self._handed),
            len(self._slices),
        )
        handed, self._handed = self._handed, {}
        slices, self._slices = self._slices, {}
        self._handed_small_files = self._handed_small_bytes = 0
        # What it wrote of these is written again.
        self.progress.bytes_done -= self._helper_written - self._helper_finished
        for where, temp, follow_existing in handed.values():
            temp.abort()
            self._write_large(where, temp.name, temp.node, temp.shown, follow_existing)
            where.pending -= 1
            self._finish_if_done(where)
        for where, entries in slices.values():
            for name, node, shown in entries:
                # Replacing whatever the helper left under the file's name.
                self._restore_file(where, name, node, shown, follow_existing=True)
            where.pending -= 1
            self._finish_if_done(where)

    def _stop_helper(self) -> None:
        """Files still with the helper mean the restore is being abandoned: stop it at once."""
        abandon = bool(self._handed or self._slices)
        for _, temp, _ in self._handed.values():
            temp.abort()
        self._handed.clear()
        self._slices.clear()
        self._handed_small_files = self._handed_small_bytes = 0
        if self._helper is not None:
            self._helper.close(abandon)

    def _write_part(
        self,
        where: OpenDir,
        large: _LargeFile,
        batch: list[bytes],
        sealed: dict[bytes, memoryview],
    ) -> None:
        if large.error is None:
            large.previous = self._submit(
                [where], self._part_job, large.temp, batch, sealed, large.previous
            )

    def _submit_finish(self, where: OpenDir, large: _LargeFile, follow_existing: bool) -> None:
        self._submit(
            [where], self._finish_job, large.temp, large.previous, large.error, follow_existing
        )

    def _batches(self, node: Node) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        estimate = max(1, node.size // max(1, len(node.content)))
        for chunk_id in node.content:
            batch.append(chunk_id)
            if len(batch) * estimate >= _FETCH_BYTES:
                yield batch
                batch = []
        if batch:
            yield batch

    def _part_job(
        self,
        temp: TempFile,
        batch: list[bytes],
        sealed: dict[bytes, memoryview],
        previous: Future[list[Outcome]] | None,
    ) -> list[Outcome]:
        """Pool thread: open a batch (in parallel with others), then append it in file order."""
        sealer = self._sealer()
        opened: dict[bytes, bytes | memoryview] = {}
        failure: IntegrityError | None = None
        try:
            for chunk_id in list(sealed):
                # Let each sealed blob go once opened: the batch is held once, not twice.
                opened[chunk_id] = sealer.open(chunk_id, sealed.pop(chunk_id), verify_id=False)
        except IntegrityError as exc:
            failure = exc
        if previous is not None:
            previous.result()
        if temp.error is None:
            temp.error = failure
        if temp.error is None:
            try:
                for chunk_id in batch:
                    temp.write(opened[chunk_id])
            except OSError as exc:
                temp.error = exc
        return []

    def _finish_job(
        self,
        temp: TempFile,
        previous: Future[list[Outcome]] | None,
        error: OSError | RPyBackupError | None,
        follow_existing: bool,
    ) -> list[Outcome]:
        if previous is not None:
            previous.result()
        if temp.error is None:
            temp.error = error
        return [temp.finish(follow_existing)]

    def _fail(self, shown: str, exc: OSError | RPyBackupError) -> None:
        reason = str(exc) if isinstance(exc, RPyBackupError) else (exc.strerror or str(exc))
        message = reason if reason.startswith(shown) else f"{shown}: {reason}"
        log.error("restore: %s", message)
        self.result.errors.append(message)
        self.progress.errors.append(message)
        self._link_waiting(shown, False)
