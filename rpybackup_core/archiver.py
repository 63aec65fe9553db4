"""The backup side: walk sources, chunk and seal new data, upload what the server lacks, commit.

A run is one upload session. Chunks go through the upload pipeline (uploader.py): the server is
asked in batches which ids it lacks, only those are sealed (on worker threads) and sent, and
each id is asked about at most once per run. Files the files cache knows as unchanged are not
read; their chunk ids are confirmed with the server in batches (a directory's, or those of a
few small directories together) and a file is read only if something is missing.

The file digest of a file larger than one chunk is computed on a thread of its own while the
main thread cuts pieces and derives their chunk ids: hashing releases the GIL, and a re-run that
reads changed large files but uploads little would otherwise do all of it on one core.

With a helper process (backup_helper.py), files over 4 MiB that must be read go to it by path
(in a re-run once such files have come to 64 MiB; before that they are read here): it reads
and uploads them over its own connection and reports their nodes once their chunks are
durable on the server. Their chunk ids are then confirmed and referenced like those of
unchanged files, and a directory's tree waits for its files' reports. In a first backup,
once the walk has read 1,024 files and while the helper holds no large file, it also takes
runs of a directory's small files and of its subdirectories that have none of their own: it
backs them up as the walk would (a directory whole, to its stored tree) and reports their
nodes, the files-cache rows of the files it read and every chunk id they refer to, which are
referenced here like an unchanged file's (a backup whose server lacks one of them fails
before its commit).
"""

from __future__ import annotations

import datetime
import errno
import fnmatch
import logging
import os
import re
import socket
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .batching import batched
from .chunker import MAX_SIZE, MIN_SIZE, Chunker
from .crypto import FILE_DIGEST, ONE_CHUNK_DIGEST, FileHash, MasterKey, Sealer, file_hash
from .errors import BackupIncomplete, ProtocolError, UsageError
from .files_cache import (
    CachedFile,
    DirectoryRow,
    FilesCache,
    KnownDirectory,
    ListingDigest,
    subtrees_digest,
)
from .listing import sorted_names
from .memory import resident_bytes
from .progress import Progress, ProgressCallback, ignore_progress
from .remote import RemoteRepository
from .tree import DIR, FILE, SYMLINK, Node, TreeWriter, by_name
from .uploader import ChunkUploader

if TYPE_CHECKING:
    from .backup_helper import BackupHelper

log = logging.getLogger(__name__)

# Slices of directories whose unchanged files wait for the server's answer, or whose entries
# wait for the helper, while the walk goes on, and the entries they may hold together (each
# slice holds its nodes until then). With 8,192 entries the walk stopped behind the helper's
# first large files on the dataset, its 20,000 small files not yet read: 65,536 kept
# the client's peak within 4 MiB there, on /usr/share and on a directory of 100,000 files
# (behind a 400 MB file or not). With 64 slices a first backup of /usr/share waited for the
# helper's reports 5.1 s of 9.5 (its small directories are a slice each); 1,024: 0.14 s.
_DEFERRED_SLICES = 1024
_DEFERRED_ENTRIES = 65536
# Directory entries stat'ed, looked up in the files cache and asked about at a time.
_WALK_SLICE = 1024
# The files cache learns directories of at most this many entries (whose names a walk holds
# in memory anyway, listing.py): a known one's names and chunk ids are held until the server
# has answered for them.
_LEARN_ENTRIES = 65536
# A directory's encoded tree stays in memory up to the largest chunk; a larger one goes to a
# temporary file as it is encoded and is cut from there at the same points.
_TREE_IN_MEMORY = MAX_SIZE

# Files larger than this that must be read go to the helper process, if there is one.
HELPER_FILE = 4 * 1024 * 1024
# The helper costs ~0.3 s of a core before it reads anything (an interpreter, its imports, a
# TLS session): in a re-run it starts once the large files that must be read come to this
# much (a re-run that reads a few changed libraries again: 0.5 s without it, 0.7-0.95 s with
# it). A first backup, which reads everything, starts it at its first large file: reading
# large files here first made one of /usr/share slower and its peak higher.
HELPER_START = 64 * 1024 * 1024
# The helper is handed a large file while it holds fewer than _HELPER_LARGE_FILES or less than
# _HELPER_LARGE_BYTES of them (handed over, not finished yet); the others wait here in walk
# order. Once the walk is done, where it would wait for the helper it reads the last of them
# itself. With every large file handed at once, a tree of them alone (raw photos) ran in the
# helper while this process waited (docs/performance.md, finding 99).
_HELPER_LARGE_FILES = 2
_HELPER_LARGE_BYTES = 64 * 1024 * 1024
# ... but only if this process holds less than this at the end of its walk (once it holds
# more, even during the walk, the helper is handed them all): reading large files takes up to
# ~40 MiB of buffers more (raw photos: 37 -> 77 MiB), and after a walk of many small files the
# heap has no room for them (the dataset beside the libraries then peaked at 104-107
# MiB; finding 98).
_READ_WAITING_RSS = 48 * 1024 * 1024
# Files larger than this and up to HELPER_FILE are shared: one goes to the helper while it
# holds less than _HELPER_SHARED_BYTES of them, or is read here, never waited for. A tree of
# such files alone (photos) otherwise ran in one process, with a core half idle. The helper
# starts for them once they come to HELPER_SHARED_START (a few such files are read sooner
# than a helper starts), or to HELPER_START in a re-run.
HELPER_SHARED_FILE = 1024 * 1024
HELPER_SHARED_START = 16 * 1024 * 1024
_HELPER_SHARED_BYTES = 32 * 1024 * 1024
# In a first backup, once the walk has read _ENTRIES_AFTER_FILES files (a small backup is done
# before a helper would have started), small files and directories with no subdirectory (two
# links on the filesystems that count them) with a listing of at most HELPER_DIRECTORY_BYTES
# (some 1,000-4,000 names) go to the helper in runs of up to _HELPER_RUN entries of one
# directory, while it holds fewer than _HELPER_ENTRIES (a directory counts as
# _DIRECTORY_ENTRIES): the rest the walk reads itself meanwhile.
HELPER_DIRECTORY_BYTES = 64 * 1024
_ENTRIES_AFTER_FILES = 1024
_HELPER_RUN = 128
_HELPER_ENTRIES = 1024
_DIRECTORY_ENTRIES = 16
# Associated data for the sealed snapshot metadata (hostname, source paths).
SNAPSHOT_META = b"snapshot-meta"
# Non-blocking: a path the walk saw as a regular file may be a FIFO by the time it is opened,
# and opening a FIFO would wait for a writer that may never come. Reads of a regular file are
# not affected by the flag.
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NONBLOCK", 0)
)


class FileRead(NamedTuple):
    """The helper's report on one file: its node and its stat after reading, or why not."""

    path: str
    node: Node | None
    before: os.stat_result | None
    after: os.stat_result | None
    error: str = ""


class EntriesRead(NamedTuple):
    """The helper's report on a run of a directory's entries it backed up: their nodes (a
    directory's with its stored tree) and what it counted, with the errors it met."""

    prefix: str
    nodes: list[Node]
    files: int
    dirs: int
    errors: list[str]
    # What it would have logged (skipped entries, files changed while read).
    warnings: list[str]


@dataclass
class _Listing:
    """A walked slice of a directory's nodes; some of its files may still be with the helper."""

    nodes: list[Node] = field(default_factory=list)
    # Files handed to the helper and not reported yet.
    reading: int = 0
    # Files the helper reported, each with the server's answer on which of its chunks it lacks.
    helped: list[tuple[FileRead, Future[set[bytes]]]] = field(default_factory=list)

    def ready(self) -> bool:
        return not self.reading and all(answer.done() for _, answer in self.helped)


@dataclass
class _Deferred:
    """Work that waits for the server's answer (if any) and for the listing's files with the
    helper (if any); ``entries`` is how many nodes it holds meanwhile."""

    answer: Future[set[bytes]] | None
    listing: _Listing | None
    action: Callable[[set[bytes]], None]
    entries: int = 0

    def ready(self) -> bool:
        return (self.answer is None or self.answer.done()) and (
            self.listing is None or self.listing.ready()
        )


# A directory's entries (path and lstat), as a slice of them is walked.
_Listed = list[tuple[str, os.stat_result]]
_DIGEST_SIZE = 32


class _HelperJob(NamedTuple):
    """A file (``names`` None, ``size`` bytes) or a run of a directory's entries (counting
    ``entries`` among those the helper holds) handed to the helper."""

    path: str
    names: list[str] | None
    listing: _Listing
    entries: int = 0
    size: int = 0

    @property
    def large(self) -> bool:
        return self.names is None and self.size > HELPER_FILE

    @property
    def shared(self) -> int:
        """A shared file's bytes; 0 for a large file or a run."""
        return self.size if self.names is None and not self.large else 0


class _Learning:
    """What a directory's slices showed, for the files cache to learn the directory from:
    its entries' digest, its subdirectories' tree ids, its files' chunk ids, sizes and
    number, and how many nodes it got."""

    def __init__(self) -> None:
        self.listing = ListingDigest()
        self.subtrees: list[list[bytes]] = []
        self.ids = bytearray()
        self.files = 0
        self.bytes = 0
        self.nodes = 0

    def learn(self, nodes: list[Node]) -> None:
        for node in nodes:
            if node.kind == DIR:
                self.subtrees.append(node.content)
            elif node.kind == FILE:
                self.ids += b"".join(node.content)
                self.files += 1
                self.bytes += node.size
        self.nodes += len(nodes)

    def row(self, prefix: str, tree: list[bytes]) -> DirectoryRow | None:
        """The directory's row, unless an entry could not be trusted or was left out."""
        listing = self.listing.digest()
        if listing is None or self.nodes != self.listing.entries:
            return None
        subtrees = subtrees_digest(self.subtrees)
        return DirectoryRow(
            prefix, listing, subtrees, b"".join(tree), bytes(self.ids), self.files, self.bytes
        )


@dataclass
class _DirectoryWalk:
    """A directory being walked: where its nodes go (``add``, in name order, then ``done``),
    the node whose tree ``done`` stores (none for a source's own listing) with what the files
    cache is to learn of it, and subdirectories walked before their slice."""

    prefix: str
    add: Callable[[list[Node]], None]
    done: Callable[[], None]
    directory: Node | None
    learning: _Learning | None
    walked: dict[str, Node] = field(default_factory=dict)


@dataclass
class BackupResult:
    snapshot: str
    time: str
    files: int
    dirs: int
    bytes: int
    uploaded_bytes: int
    uploaded_chunks: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "time": self.time,
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
            "uploaded_bytes": self.uploaded_bytes,
            "uploaded_chunks": self.uploaded_chunks,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


def _digest(digest: FileHash, ids: list[bytes]) -> str:
    """A file's digest: its chunk id if it is one chunk (``digest`` may then have seen none of
    it), otherwise the running hash's."""
    if len(ids) == 1:
        return f"{ONE_CHUNK_DIGEST}:{ids[0].hex()}"
    return f"{FILE_DIGEST}:{digest.hexdigest()}"


def normalize_sources(paths: list[str]) -> list[Path]:
    """Absolute, de-duplicated sources; a source inside another source is dropped."""
    if not paths:
        raise UsageError("nothing to back up: give paths or set backup.sources in the config")
    absolute = sorted({Path(os.path.abspath(os.path.expanduser(p))) for p in paths})
    kept: list[Path] = []
    for path in absolute:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return kept


class Archiver:
    def __init__(
        self,
        remote: RemoteRepository,
        key: MasterKey,
        cache: FilesCache | None,
        excludes: list[str],
        progress: ProgressCallback = ignore_progress,
        helper: Callable[[], BackupHelper] | None = None,
        stage: Callable[[str, os.stat_result, str, list[bytes]], None] | None = None,
        stage_directory: Callable[[DirectoryRow], None] | None = None,
    ) -> None:
        """``stage`` and ``stage_directory`` take what the files cache would of each file
        read and each directory stored (the helper's archiver, which has no cache, sends it
        to the backup); ``references``, when a list, collects every chunk id the trees and
        files read refer to."""
        self.remote = remote
        self.sealer = Sealer(key)
        self.chunker = Chunker()
        self.cache = cache
        self.exclude(excludes)
        self.report = progress
        self.progress = Progress("backup")
        self.uploader = ChunkUploader(remote, key, self.progress)
        self._stage = stage or (cache.stage if cache is not None else None)
        self._stage_directory = stage_directory or (
            cache.stage_directory if cache is not None else None
        )
        self.references: list[bytes] | None = None
        # Started on the first large file; one thread, so a file digest sees its pieces in order.
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="hash")
        self._deferred: deque[_Deferred] = deque()
        self._deferred_entries = 0
        self._start_helper = helper
        self._helper: BackupHelper | None = None
        # Files (a path) and runs of entries (a directory's prefix and their names) with the
        # helper, in the order handed over (its reports come in that order); how many large
        # files, bytes of shared files and entries of them it is still working on (the first
        # ``_helper_done`` jobs are finished, not reported yet), and the answers on the chunk
        # ids the runs refer to.
        self._helper_jobs: deque[_HelperJob] = deque()
        self._helper_done = 0
        self._helper_large = 0
        self._helper_large_bytes = 0
        self._helper_shared = 0
        # Large files waiting for room in the helper, in walk order, and whether this process
        # reads them where it would wait for the helper (decided when the walk is done).
        self._waiting_large: deque[_HelperJob] = deque()
        self._read_waiting: bool | None = None
        self._helper_entries = 0
        self._helper_references: list[Future[set[bytes]]] = []
        self._entries_to_helper = helper is not None and (cache is None or cache.generation == 1)
        # The helper's bytes read that progress counts so far.
        self._helper_bytes = 0
        # Bytes of the files over HELPER_SHARED_FILE met before the helper started (read
        # here), and how many of large ones start it: none in a first backup (the files cache
        # knows nothing yet).
        self._large_bytes = 0
        self._helper_start = HELPER_START if cache is not None and cache.generation > 1 else 0
        self.dirs = 0

    def exclude(self, patterns: list[str]) -> None:
        """Skip entries whose name or whole path matches one of ``patterns`` (fnmatch)."""
        self.excludes = patterns
        # One compiled pattern for all excludes: the walk tests every entry against it.
        self._exclude = (
            re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
            if patterns
            else None
        )

    # ---- entry point ------------------------------------------------------------------------

    def run(
        self,
        sources: list[Path],
        when: datetime.datetime | None = None,
        tags: list[str] | None = None,
        parent: str | None = None,
    ) -> BackupResult:
        moment = (when or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
        try:
            result = self._run(sources, moment, tags, parent)
        except BaseException:
            if self._helper is not None:
                self._helper.close(abandon=True)
            raise
        # Only now: until the commit, the helper's connection pins the chunks it stored.
        if self._helper is not None:
            self._helper.close()
        return result

    def close(self) -> None:
        self._hasher.shutdown()
        self.uploader.close()

    def _run(
        self,
        sources: list[Path],
        moment: datetime.datetime,
        tags: list[str] | None,
        parent: str | None,
    ) -> BackupResult:
        try:
            root_nodes = self._root(sources)
            if not root_nodes:
                raise BackupIncomplete(
                    "no source could be read: "
                    + "; ".join(self.progress.errors or ["(none given)"])
                )
            root_ids = self._store_tree(root_nodes)
            self.uploader.finish()
            self._check_helper_references()
        finally:
            self.close()
        stamp = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
        stats = {
            "files": self.progress.files_done,
            "dirs": self.dirs,
            "bytes": self.progress.bytes_done,
            "uploaded_bytes": self.progress.uploaded_bytes,
            "errors": len(self.progress.errors),
        }
        snapshot = self.remote.commit(
            {
                "time": stamp,
                "tags": tags or [],
                "meta": self.sealer.seal_document(
                    SNAPSHOT_META,
                    {"hostname": socket.gethostname(), "paths": [str(s) for s in sources]},
                ),
                "stats": stats,
                "root": [chunk_id.hex() for chunk_id in root_ids],
                "parent": parent,
            }
        )
        if self.cache is not None:
            self.cache.commit()
        self.progress.phase = "done"
        self.report(self.progress)
        return BackupResult(
            snapshot=snapshot,
            time=stamp,
            files=self.progress.files_done,
            dirs=self.dirs,
            bytes=self.progress.bytes_done,
            uploaded_bytes=self.progress.uploaded_bytes,
            uploaded_chunks=self.uploader.uploaded_chunks
            + (self._helper.uploaded_chunks if self._helper is not None else 0),
            errors=list(self.progress.errors),
            seconds=self.progress.elapsed,
        )

    # ---- trees ------------------------------------------------------------------------------

    def _store_tree(self, nodes: list[Node]) -> list[bytes]:
        with TreeWriter(_TREE_IN_MEMORY) as writer:
            writer.add(sorted(nodes, key=by_name))
            return self._store_written(writer)

    def _store_written(self, writer: TreeWriter) -> list[bytes]:
        """Chunk and upload a finished tree. A tree that went to a file is larger than one
        chunk; cut from the file it has the cut points it would have in memory, so an unchanged
        directory keeps its tree's ids."""
        encoded = writer.finish()
        pieces = (
            self.chunker.buffer(encoded)
            if isinstance(encoded, bytearray)
            else self.chunker.stream(encoded)
        )
        ids = []
        for piece in pieces:
            chunk_id = self.sealer.chunk_id(piece)
            self._add_chunk(chunk_id, piece)
            ids.append(chunk_id)
        return ids

    def _add_chunk(self, chunk_id: bytes, piece: bytes | memoryview) -> None:
        self.uploader.add(chunk_id, piece)
        if self.references is not None:
            self.references.append(chunk_id)

    def _root(self, sources: list[Path]) -> list[Node]:
        """The snapshot root: each source under its absolute path, parents as plain dirs."""
        layout: dict[str, Any] = {}
        for source in sources:
            level = layout
            parts = source.parts[1:]
            for part in parts[:-1]:
                level = level.setdefault(part, {})
            level[parts[-1] if parts else ""] = source
        return self._layout_nodes(Path("/"), layout)

    def _layout_nodes(self, base: Path, layout: dict[str, Any]) -> list[Node]:
        nodes: list[Node] = []
        for name, value in sorted(layout.items()):
            if isinstance(value, Path):
                if name == "":
                    self._walk_directory(str(value), nodes.extend, lambda: None)
                    continue
                node = self._entry(str(value))
            else:
                path = base / name
                try:
                    st = os.stat(path)
                except OSError as exc:
                    self._error(path, exc)
                    continue
                # A source's parents are not counted: the folders a run reports are those its
                # sources hold, whatever depth they sit at.
                node = Node.from_stat(name, DIR, st)
                node.content = self._store_tree(self._layout_nodes(path, value))
            if node is not None:
                nodes.append(node)
        if self._read_waiting is None:
            self._decide_read_waiting()
        self._run_deferred(wait=True)
        return nodes

    # ---- walking ----------------------------------------------------------------------------

    def _excluded(self, path: str, name: str) -> bool:
        """Whether a pattern matches the entry's name or its whole path (fnmatch rules)."""
        pattern = self._exclude
        return pattern is not None and bool(pattern.match(name) or pattern.match(path))

    def _error(self, path: Path | str, exc: OSError | str) -> None:
        reason = exc if isinstance(exc, str) else (exc.strerror or str(exc))
        message = f"{path}: {reason}"
        log.warning("skipped %s", message)
        self.progress.errors.append(message)

    def _entry(self, path: str, st: os.stat_result | None = None) -> Node | None:
        try:
            st = st or os.lstat(path)
        except OSError as exc:
            self._error(path, exc)
            return None
        name = os.path.basename(path)
        if stat.S_ISDIR(st.st_mode):
            node = Node.from_stat(name, DIR, st)
            writer = TreeWriter(_TREE_IN_MEMORY)
            self._walk_directory(
                path, writer.add, lambda: self._store_directory(node, writer), node
            )
            self.dirs += 1
            return node
        if stat.S_ISLNK(st.st_mode):
            node = Node.from_stat(name, SYMLINK, st)
            try:
                node.target = os.readlink(path)
            except OSError as exc:
                self._error(path, exc)
                return None
            return node
        if stat.S_ISREG(st.st_mode):
            return self._read_file(path, st)
        log.info("skipped %s: not a regular file, directory or symlink", path)
        return None

    def _store_directory(self, node: Node, writer: TreeWriter) -> None:
        with writer:
            node.content = self._store_written(writer)

    def _walk_directory(
        self,
        path: str,
        add: Callable[[list[Node]], None],
        done: Callable[[], None],
        directory: Node | None = None,
    ) -> None:
        """Walk a directory a slice of entries at a time: ``add`` gets each slice's nodes in
        name order once the server has answered for its unchanged files (meanwhile the walk
        goes on, see ``_defer``), and ``done`` follows the last. The files cache learns the
        ``directory`` node's tree, and may know it already (``_walk_known``).

        A slice's entries are stat'ed and let go, and its nodes go to ``add`` as soon as they
        are final: a directory of 100,000 files must hold neither its entries' stat results
        nor its nodes all at once (nor, beyond 65,536, its names: listing.py)."""
        try:
            names = sorted_names(path)
        except OSError as exc:
            self._error(path, exc)
            names = iter([])
        slices = batched(names, _WALK_SLICE)
        taken = next(slices, [])
        if not taken:
            self._defer(None, None, lambda _: done())
            return
        prefix = path if path.endswith("/") else path + "/"
        learning = directory is not None and self._stage_directory is not None
        walk = _DirectoryWalk(prefix, add, done, directory, _Learning() if learning else None)
        following = next(slices, [])
        if not following:
            self._walk_slice(walk, taken, last=True)
            return
        known = self._known_directory(walk)
        if known is not None:
            self._walk_known_slices(walk, known, chain([taken, following], slices))
            return
        self._walk_slices(walk, ((part, None) for part in chain([taken, following], slices)))

    def _walk_slices(
        self, walk: _DirectoryWalk, slices: Iterator[tuple[list[str], _Listed | None]]
    ) -> None:
        """Walk the slices in order: their names, and their entries if already stat'ed."""
        item = next(slices, None)
        while item is not None:
            following = next(slices, None)
            self._walk_slice(walk, item[0], last=following is None, listed=item[1])
            item = following

    def _known_directory(
        self, walk: _DirectoryWalk, listing: bytes | None = None
    ) -> KnownDirectory | None:
        """What the files cache knows of the directory (with that ``listing``, if given); a
        first backup's cache knows none."""
        if walk.learning is None or self.cache is None or self.cache.generation == 1:
            return None
        return self.cache.known_directory(walk.prefix, listing)

    def _walk_slice(
        self, walk: _DirectoryWalk, taken: list[str], last: bool, listed: _Listed | None = None
    ) -> None:
        """Walk ``taken`` entries of the directory (``listed``, if already stat'ed), the
        ``last`` of it if so."""
        listing = _Listing()
        cached: list[tuple[str, Node, CachedFile]] = []
        prefix = walk.prefix
        if listed is None:
            listed = self._stat_entries(prefix, taken)
        learning = walk.learning
        if learning is not None:
            learning.listing.add(listed)
            if learning.listing.entries > _LEARN_ENTRIES:
                walk.learning = learning = None
            elif last and learning.listing.entries == len(listed) and not walk.walked:
                # The whole directory is this slice: it may be known as it is.
                digest = learning.listing.digest()
                known = self._known_directory(walk, digest) if digest is not None else None
                if known is not None:
                    self._walk_known(walk, known, listed, len(taken))
                    return
        hits = {}
        if self.cache is not None:
            regular = [(child, st) for child, st in listed if stat.S_ISREG(st.st_mode)]
            hits = self.cache.lookup_many(regular, adjacent=len(regular) == len(taken))
        run: list[str] = []
        run_weight = 0
        for child, st in listed:
            walked = walk.walked.pop(child, None) if walk.walked else None
            if walked is not None:
                listing.nodes.append(walked)
                continue
            hit = hits.get(child)
            if hit is not None:
                # A name never holds a "/": the entry's name is what follows the last one.
                name = child.rpartition("/")[2]
                node = Node.from_stat(name, FILE, st, hit.size, hit.digest, hit.ids)
                cached.append((child, node, hit))
                continue
            if self._to_helper(st):
                self._give_helper(_HelperJob(child, None, listing, size=st.st_size))
                continue
            weight = self._helper_weight(st)
            if weight and self._helper_takes(run_weight + weight):
                run.append(child.rpartition("/")[2])
                run_weight += weight
                if len(run) >= _HELPER_RUN:
                    self._hand_to_helper(_HelperJob(prefix, run, listing, run_weight))
                    run, run_weight = [], 0
                continue
            if run and stat.S_ISDIR(st.st_mode):
                # Before the walk goes into a subdirectory (whose runs count at once): the
                # helper can start on these meanwhile, and they count among what it holds.
                self._hand_to_helper(_HelperJob(prefix, run, listing, run_weight))
                run, run_weight = [], 0
            entry = self._entry(child, st)
            if entry is not None:
                listing.nodes.append(entry)
        if run:
            self._hand_to_helper(_HelperJob(prefix, run, listing, run_weight))
        answer = (
            self.uploader.ask_missing([cid for _, node, _ in cached for cid in node.content])
            if cached
            else None
        )

        def finish(missing: set[bytes]) -> None:
            nodes = (
                listing.nodes
                + self._cached_files(cached, missing)
                + self._helped_files(listing.helped)
            )
            nodes.sort(key=by_name)
            walk.add(nodes)
            if walk.learning is not None:
                walk.learning.learn(nodes)
            if last:
                walk.done()
                self._remember_directory(walk)

        self._defer(answer, listing, finish, len(taken))

    def _walk_known(
        self, walk: _DirectoryWalk, known: KnownDirectory, listed: _Listed, entries: int
    ) -> None:
        """A directory of one slice whose entries stat as they did when the files cache learnt
        it: only its subdirectories are walked (``_known_or_rebuilt``)."""
        subdirs, others = self._walk_subdirectories(listed)
        self._known_or_rebuilt(walk, known, subdirs, others, entries, listed)

    def _walk_subdirectories(self, listed: _Listed) -> tuple[dict[str, Node], list[str]]:
        """Walk the directories among ``listed``: their nodes by path, and the others' names."""
        subdirs: dict[str, Node] = {}
        others: list[str] = []
        for child, st in listed:
            if stat.S_ISDIR(st.st_mode):
                node = self._entry(child, st)
                if node is not None:
                    subdirs[child] = node
            else:
                others.append(child.rpartition("/")[2])
        return subdirs, others

    def _walk_known_slices(
        self, walk: _DirectoryWalk, known: KnownDirectory, slices: Iterator[list[str]]
    ) -> None:
        """A directory of several slices that the files cache knows, slice by slice: while
        each stats as it did, its subdirectories are walked and its other names kept. If all
        of them did, it is known (``_known_or_rebuilt``); from the first that did not, it is
        walked as any directory, the slices before it stat'ed again (their subdirectories as
        they were just walked)."""
        assert walk.learning is not None
        listing = walk.learning.listing
        subdirs: dict[str, Node] = {}
        others: list[str] = []
        seen: list[tuple[list[str], _Listed | None]] = []
        for taken in slices:
            listed = self._stat_entries(walk.prefix, taken)
            digest = listing.add(listed)
            at = _DIGEST_SIZE * (listing.slices - 1)
            if digest is None or known.listing[at : at + _DIGEST_SIZE] != digest:
                seen.append((taken, listed))
                break
            seen.append((taken, None))
            walked, names = self._walk_subdirectories(listed)
            subdirs.update(walked)
            others.extend(names)
        else:
            if len(known.listing) == _DIGEST_SIZE * listing.slices:
                self._known_or_rebuilt(walk, known, subdirs, others, listing.entries)
                return
        walk.learning = _Learning()
        walk.walked = subdirs
        self._walk_slices(walk, chain(seen, ((part, None) for part in slices)))

    def _known_or_rebuilt(
        self,
        walk: _DirectoryWalk,
        known: KnownDirectory,
        subdirs: dict[str, Node],
        others: list[str],
        entries: int,
        listed: _Listed | None = None,
    ) -> None:
        """Once the server has answered for every chunk of the known tree and its files: the
        known tree if the server has them all and the subdirectories' trees are the same
        (walked by now), otherwise the tree built again (``_rebuild_known``; from the entries
        ``listed`` if it is one slice)."""
        answer = self.uploader.ask_missing(known.tree + known.ids)
        walked = len(subdirs) + len(others)

        def finish(missing: set[bytes]) -> None:
            assert walk.learning is not None and walk.directory is not None
            if (
                not missing
                and walked == walk.learning.listing.entries
                and subtrees_digest([node.content for node in subdirs.values()]) == known.subtrees
            ):
                walk.directory.content = known.tree
                self.progress.files_done += known.files
                self.progress.bytes_done += known.bytes
                assert self.cache is not None
                self.cache.keep_directory(walk.prefix, known, [walk.prefix + n for n in others])
                self.report(self.progress)
                return
            self._rebuild_known(walk, known, subdirs, others, missing, listed)

        self._defer(answer, None, finish, entries)

    def _rebuild_known(
        self,
        walk: _DirectoryWalk,
        known: KnownDirectory,
        subdirs: dict[str, Node],
        others: list[str],
        missing: set[bytes],
        listed: _Listed | None,
    ) -> None:
        """A known directory's tree built again, a slice at a time: a subdirectory's tree
        changed, or the server lacks a chunk. Its files' nodes come from the files cache (a
        directory of several slices is stat'ed again); a file it no longer knows, or one the
        server lacks a chunk of, is read again. Nothing is walked from here (the walk is past
        this directory)."""
        assert self.cache is not None
        walk.learning = _Learning()
        asked = set(known.ids)
        if listed is not None:
            listings: Iterable[_Listed] = [listed]
        else:
            names = sorted([*others, *(child.rpartition("/")[2] for child in subdirs)])
            listings = (
                self._stat_entries(walk.prefix, taken)
                for taken in batched(iter(names), _WALK_SLICE)
            )
        for listed in listings:
            walk.learning.listing.add(listed)
            regular = [(child, st) for child, st in listed if stat.S_ISREG(st.st_mode)]
            hits = self.cache.lookup_many(regular, adjacent=len(regular) == len(listed))
            cached: list[tuple[str, Node, CachedFile]] = []
            nodes = []
            for child, st in listed:
                node = subdirs.get(child)
                hit = hits.get(child)
                if node is not None:
                    nodes.append(node)
                elif hit is not None and asked.issuperset(hit.ids):
                    # The server answered for these ids: ``_cached_files`` reads the file again
                    # if it lacks one of them.
                    name = child.rpartition("/")[2]
                    node = Node.from_stat(name, FILE, st, hit.size, hit.digest, hit.ids)
                    cached.append((child, node, hit))
                elif stat.S_ISDIR(st.st_mode):
                    log.warning("skipped %s: it became a directory while the backup ran", child)
                else:
                    read = (
                        self._read_again(child)
                        if stat.S_ISREG(st.st_mode)
                        else self._entry(child, st)
                    )
                    if read is not None:
                        nodes.append(read)
            nodes += self._cached_files(cached, missing)
            nodes.sort(key=by_name)
            walk.add(nodes)
            walk.learning.learn(nodes)
        walk.done()
        self._remember_directory(walk)

    def _remember_directory(self, walk: _DirectoryWalk) -> None:
        """Stage a stored directory in the files cache, if it learnt all of it."""
        if walk.learning is None or walk.directory is None:
            return
        row = walk.learning.row(walk.prefix, walk.directory.content)
        if row is not None:
            assert self._stage_directory is not None
            self._stage_directory(row)

    def _stat_entries(self, prefix: str, names: list[str]) -> list[tuple[str, os.stat_result]]:
        listed = []
        for name in names:
            child = prefix + name
            if self._excluded(child, name):
                continue
            try:
                listed.append((child, os.lstat(child)))
            except OSError as exc:
                self._error(child, exc)
        return listed

    def _defer(
        self,
        answer: Future[set[bytes]] | None,
        listing: _Listing | None,
        action: Callable[[set[bytes]], None],
        entries: int = 0,
    ) -> None:
        """Run ``action`` with the server's answer once it, the listing's files with the
        helper and everything deferred before it are done. In walk order a directory's last
        slice comes after all of its subdirectories, so every subtree is stored before its
        parent's tree; a few answers stay outstanding while the walk goes on, so one `has`
        round trip per directory is no longer a wait."""
        self._deferred.append(_Deferred(answer, listing, action, entries))
        self._deferred_entries += entries
        self._run_deferred(wait=False)

    def _run_deferred(self, wait: bool) -> None:
        """Run what is ready at the head of the line, and wait for the head while the line is
        over its bounds; with ``wait``, until the line is empty."""
        while self._deferred:
            head = self._deferred[0]
            self._collect_helper(wait=False)
            if not head.ready():
                if not wait and (
                    len(self._deferred) <= _DEFERRED_SLICES
                    and self._deferred_entries <= _DEFERRED_ENTRIES
                ):
                    return
                self.uploader.send_checks()
            self._deferred.popleft()
            self._deferred_entries -= head.entries
            while head.listing is not None and head.listing.reading:
                self._wait_for_helper()
            head.action(head.answer.result() if head.answer is not None else set())

    # ---- the helper process -----------------------------------------------------------------

    def _to_helper(self, st: os.stat_result) -> bool:
        if not stat.S_ISREG(st.st_mode) or st.st_size <= HELPER_SHARED_FILE:
            return False
        if st.st_size > HELPER_FILE:
            return self._ready_helper(st.st_size)
        return self._shares_helper(st.st_size)

    def _ready_helper(self, size: int) -> bool:
        """Whether a large file of ``size`` bytes is for the helper: started once the large
        files met come to ``_helper_start``."""
        helper = self._running_helper(size, self._helper_start)
        return helper is not None and not helper.stopped

    def _shares_helper(self, size: int) -> bool:
        """Whether the helper takes a shared file of ``size`` bytes: started once the files
        over HELPER_SHARED_FILE met come to HELPER_SHARED_START (or ``_helper_start``), while
        it holds little enough of them."""
        helper = self._running_helper(size, max(self._helper_start, HELPER_SHARED_START))
        if helper is None:
            return False
        if self._helper_shared + size > _HELPER_SHARED_BYTES and helper.has_news():
            self._collect_helper(wait=False)
        return not helper.stopped and self._helper_shared + size <= _HELPER_SHARED_BYTES

    def _running_helper(self, size: int, start: int) -> BackupHelper | None:
        """The helper, started once the files it could take, ``size`` bytes more, come to
        ``start`` bytes."""
        if self._helper is None and self._start_helper is not None:
            self._large_bytes += size
            if self._large_bytes < start:
                return None
            self._started_helper()
        return self._helper

    def _helper_weight(self, st: os.stat_result) -> int:
        """What an entry would count among the helper's entries if it took it: a small file
        1, a directory without subdirectories _DIRECTORY_ENTRIES; 0 if it would not."""
        if not self._entries_to_helper or self.progress.files_done < _ENTRIES_AFTER_FILES:
            return 0
        if stat.S_ISREG(st.st_mode):
            return 1
        if stat.S_ISDIR(st.st_mode) and st.st_nlink == 2 and st.st_size <= HELPER_DIRECTORY_BYTES:
            return _DIRECTORY_ENTRIES
        return 0

    def _helper_takes(self, entries: int) -> bool:
        """Whether the helper (started now if need be) has room for ``entries`` more and holds
        no large file (it would hold them for long)."""
        helper = self._helper or self._started_helper()
        if helper.stopped or self._helper_large or self._waiting_large:
            return False
        if self._helper_entries + entries > _HELPER_ENTRIES and helper.has_news():
            self._collect_helper(wait=False)
        return not helper.stopped and self._helper_entries + entries <= _HELPER_ENTRIES

    def _started_helper(self) -> BackupHelper:
        assert self._start_helper is not None
        helper = self._helper = self._start_helper()
        self._start_helper = None
        # While it starts: what was read here must be indexed before the helper asks about
        # the same chunks, or a copy of a file read here would be stored again; what is
        # sent from now on it finds among what this connection has sent (``follow``).
        self.uploader.finish()
        self.remote.sync()
        try:
            helper.setup(self.excludes, self.remote.link())
        except OSError as exc:
            self._outlive_helper(exc)
        return helper

    def _outlive_helper(self, exc: OSError) -> None:
        """The helper's end of the pipe is gone: take its last reports and then its end
        (what it had not reported is read here)."""
        log.info("backup helper: %s", exc)
        assert self._helper is not None
        while not self._helper.stopped:
            self._collect_helper(wait=True)

    def _give_helper(self, job: _HelperJob) -> None:
        """A file for the helper: a shared one now, a large one once it has room."""
        if not job.large:
            self._hand_to_helper(job)
            return
        job.listing.reading += 1
        self._waiting_large.append(job)
        self._feed_helper()
        if self._waiting_large and self._read_waiting is None and not self._holds_little():
            # Already too much to read them at the end of the walk: the helper may have them.
            self._read_waiting = False
            self._feed_helper()

    def _feed_helper(self) -> None:
        """Hand the helper the large files waiting here while it has room for them; all of
        them once the walk is done and this process will not read them."""
        helper = self._helper
        while (
            self._waiting_large
            and helper is not None
            and not helper.stopped
            and (
                self._read_waiting is False
                or self._helper_large < _HELPER_LARGE_FILES
                or self._helper_large_bytes < _HELPER_LARGE_BYTES
            )
        ):
            self._send_to_helper(self._waiting_large.popleft())

    def _decide_read_waiting(self) -> None:
        """The walk is done: whether this process reads large files waiting for the helper."""
        self._read_waiting = self._holds_little()
        self._feed_helper()

    def _holds_little(self) -> bool:
        """Whether this process holds little enough to read large files (_READ_WAITING_RSS)."""
        resident = resident_bytes()
        return resident is not None and resident < _READ_WAITING_RSS

    def _wait_for_helper(self) -> None:
        """Where the walk would wait for the helper's news: if this process reads waiting large
        files, take the news (handing the helper more if it has room) and read the last one
        still waiting here; otherwise, or with none left, wait for the news."""
        if self._read_waiting:
            self._collect_helper(wait=False)
            if self._waiting_large:
                self._read_here(self._waiting_large.pop())
                return
        self._collect_helper(wait=True)

    def _hand_to_helper(self, job: _HelperJob) -> None:
        """Hand the helper a file to read, or a run of entries to back up."""
        job.listing.reading += 1
        self._send_to_helper(job)

    def _send_to_helper(self, job: _HelperJob) -> None:
        """Send the helper a job its listing already counts as reading."""
        assert self._helper is not None
        try:
            if job.names is None:
                self._helper.read(job.path)
            else:
                self._helper.back_up(job.path, job.names)
        except OSError as exc:
            self._outlive_helper(exc)
            self._read_here(job)
            return
        self._helper_jobs.append(job)
        self._count_held(job, 1)

    def _read_here(self, job: _HelperJob) -> None:
        """A job for the helper read here after all: its nodes join its listing."""
        job.listing.reading -= 1
        job.listing.nodes.extend(self._take_back(job.path, job.names))

    def _collect_helper(self, wait: bool) -> None:
        """Take the helper's reports; with ``wait``, wait for one. Each reported file's chunk
        ids are asked about (and referenced) as an unchanged file's are."""
        if self._helper is None:
            return
        helper = self._helper
        asked = False
        uploaded = helper.uploaded_bytes
        for report in helper.reports(wait):
            if report is None:
                self._read_unreported()
                break
            job = self._helper_jobs.popleft()
            path, listing = job.path, job.listing
            listing.reading -= 1
            if self._helper_done:
                self._helper_done -= 1
            else:
                self._unload_helper(job)
            reported = report.path if isinstance(report, FileRead) else report.prefix
            if reported != path:
                raise ProtocolError(f"backup helper reported {reported}, not {path}")
            if isinstance(report, EntriesRead):
                self._take_entries(report, listing)
                continue
            if report.node is None:
                self._error(path, report.error)
                continue
            listing.helped.append((report, self.uploader.ask_missing(report.node.content)))
            asked = True
        while self._helper_done < helper.jobs_done - helper.jobs_reported:
            self._unload_helper(self._helper_jobs[self._helper_done])
            self._helper_done += 1
        self._take_helper_stored(helper)
        self._feed_helper()
        if asked:
            self.uploader.send_checks()
        self.progress.uploaded_bytes += helper.uploaded_bytes - uploaded
        if helper.bytes_read != self._helper_bytes:
            self.progress.bytes_done += helper.bytes_read - self._helper_bytes
            self._helper_bytes = helper.bytes_read
            self.report(self.progress)

    def _unload_helper(self, job: _HelperJob) -> None:
        """A job the helper finished no longer counts among what it holds."""
        self._count_held(job, -1)

    def _count_held(self, job: _HelperJob, sign: int) -> None:
        """Count a job among what the helper holds (``sign`` 1), or no longer (-1)."""
        self._helper_large += sign * job.large
        self._helper_large_bytes += sign * job.large * job.size
        self._helper_shared += sign * job.shared
        self._helper_entries += sign * job.entries

    def _take_entries(self, report: EntriesRead, listing: _Listing) -> None:
        """Entries the helper backed up: their nodes join the listing, its counts the
        backup's (their chunk ids come as the helper's ``references``)."""
        for message in report.warnings:
            log.warning("%s", message)
        self.progress.errors.extend(report.errors)
        self.progress.files_done += report.files
        self.dirs += report.dirs
        listing.nodes.extend(report.nodes)
        self.report(self.progress)

    def _take_helper_stored(self, helper: BackupHelper) -> None:
        """Stage the files-cache rows of the files the helper read and the directories it
        stored, and reference the chunk ids its entries refer to."""
        if self.cache is not None:
            for row in helper.rows:
                self.cache.stage_row(row)
            for directory in helper.directories:
                self.cache.stage_directory(directory)
        helper.rows, helper.directories = [], []
        if helper.references:
            self._helper_references.append(self.uploader.confirm(helper.references))
            helper.references = []

    def _check_helper_references(self) -> None:
        """Before the commit: the server has every chunk the helper's entries refer to (it
        stored or found them itself and stays connected until the commit, so only a damaged
        repository lacks one)."""
        missing = sum(len(answer.result()) for answer in self._helper_references)
        if missing:
            raise BackupIncomplete(
                f"the server lacks {missing} chunks the backup's helper stored; run it again"
            )

    def back_up_here(self, prefix: str, names: list[str]) -> list[Node]:
        """The nodes of entries under ``prefix``, a directory's with its tree stored, before
        this returns: their work waits in a deferral line of its own, so this can run while
        another line is being worked (entries the helper did not report)."""
        outer = self._deferred, self._deferred_entries
        self._deferred, self._deferred_entries = deque(), 0
        try:
            nodes = [node for name in names if (node := self._entry(prefix + name)) is not None]
            self._run_deferred(wait=True)
        finally:
            self._deferred, self._deferred_entries = outer
        return nodes

    def _take_back(self, path: str, names: list[str] | None) -> list[Node]:
        """What was handed to the helper, read here after all."""
        if names is not None:
            return self.back_up_here(path, names)
        node = self._read_again(path)
        return [node] if node is not None else []

    def _read_unreported(self) -> None:
        """The helper stopped: what it had not reported is read here."""
        jobs, self._helper_jobs = self._helper_jobs, deque()
        jobs.extend(self._waiting_large)
        self._waiting_large.clear()
        self._helper_done = self._helper_large = self._helper_large_bytes = 0
        self._helper_shared = self._helper_entries = 0
        if jobs:
            log.info("backup helper stopped; reading its %d unreported jobs here", len(jobs))
        for job in jobs:
            self._read_here(job)

    def _helped_files(self, helped: list[tuple[FileRead, Future[set[bytes]]]]) -> list[Node]:
        """The helper's files, unless the server lacks one of their chunks (then read here)."""
        nodes = []
        for report, answer in helped:
            node, before, after = report.node, report.before, report.after
            assert node is not None and before is not None and after is not None
            if answer.result().intersection(node.content):
                # Counted as read by the helper; it is read again here.
                self.progress.bytes_done -= node.size
                reread = self._read_again(report.path)
                if reread is not None:
                    nodes.append(reread)
                continue
            self._count_file(report.path, node, before, after)
            nodes.append(node)
        return nodes

    def _read_again(self, path: str) -> Node | None:
        """A cached file one of whose chunks the server lost: read it, if it still is a file
        (its directory's tree is being stored now, so nothing can be walked from here)."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            self._error(path, exc)
            return None
        if not stat.S_ISREG(st.st_mode):
            log.warning("skipped %s: it is no longer a regular file", path)
            return None
        return self._read_file(path, st)

    def _cached_files(
        self, cached: list[tuple[str, Node, CachedFile]], missing: set[bytes]
    ) -> list[Node]:
        """Unchanged files: keep their nodes unless the server lost one of their chunks (then
        the file is read again)."""
        if not cached:
            return []
        nodes = []
        for path, node, entry in cached:
            if missing and missing.intersection(node.content):
                reread = self._read_again(path)
                if reread is not None:
                    nodes.append(reread)
                continue
            # ``missing`` already counted every id it did not return as referenced.
            nodes.append(node)
            self.progress.files_done += 1
            self.progress.bytes_done += node.size
            if self.cache is not None:
                self.cache.keep(path, entry)
        self.report(self.progress)
        return nodes

    def _read_file(self, path: str, st: os.stat_result) -> Node | None:
        try:
            node, before, after = self.read_content(path)
        except OSError as exc:
            self._error(path, exc)
            return None
        self._count_file(path, node, before, after)
        return node

    def read_content(self, path: str) -> tuple[Node, os.stat_result, os.stat_result]:
        """Read a file and upload its chunks: its node and its stat before and after reading
        (they differ if it changed meanwhile). Raises OSError."""
        fd = os.open(path, _READ_FLAGS)
        self.progress.current = path
        digest = file_hash()
        ids: list[bytes] = []
        size = 0
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise OSError(errno.EINVAL, "it is no longer a regular file")
            for chunk_id, piece in self._pieces(fd, before.st_size, digest):
                self._add_chunk(chunk_id, piece)
                ids.append(chunk_id)
                size += len(piece)
                self.progress.bytes_done += len(piece)
                self.report(self.progress)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        node = Node.from_stat(os.path.basename(path), FILE, before, size, _digest(digest, ids), ids)
        return node, before, after

    def _count_file(
        self, path: str, node: Node, before: os.stat_result, after: os.stat_result
    ) -> None:
        """A file read: counted, and remembered by the files cache unless it changed."""
        changed = (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size)
        if changed:
            log.warning("%s changed while it was read; stored what was read", path)
        self.progress.files_done += 1
        if self._stage is not None and not changed:
            self._stage(path, after, node.digest, node.content)

    def _pieces(self, fd: int, size: int, digest: FileHash) -> Iterator[tuple[bytes, bytes]]:
        """(chunk id, piece) of an open file in order, ``digest`` updated with each piece
        unless the file is one piece: then its digest is that piece's id."""
        if size <= MIN_SIZE:
            for piece in self.chunker.file(fd, size):
                yield self.sealer.chunk_id(piece), bytes(piece)
            return
        digesting: deque[Future[object]] = deque()
        for view in self.chunker.file(fd, size):
            # A stream's views are reused; the upload keeps this copy.
            piece = bytes(view)
            digesting.append(self._hasher.submit(digest.update, piece))
            yield self.sealer.chunk_id(piece), piece
            # The digest at most one piece behind: further would only hold memory.
            if len(digesting) > 1:
                digesting.popleft().result()
        for future in digesting:
            future.result()
