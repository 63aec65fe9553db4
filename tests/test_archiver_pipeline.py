"""The upload pipeline and the threaded restore: real server on loopback, real files."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import tempfile
from pathlib import Path

import blake3
import pytest

from rpybackup_core import archiver, tree_reader, uploader
from rpybackup_core import client as client_module
from rpybackup_core.archiver import Archiver
from rpybackup_core.chunker import Chunker
from rpybackup_core.client import BackupClient
from rpybackup_core.crypto import FILE_DIGEST, MasterKey, Sealer, file_hash, storage_hash
from rpybackup_core.demo import compare_trees
from rpybackup_core.errors import BackupIncomplete, CryptoError
from rpybackup_core.files_cache import FilesCache
from rpybackup_core.remote import RemoteRepository
from rpybackup_core.restorer import _shares
from rpybackup_core.tree import DIR, FILE, SYMLINK, Node, TreeDecoder, encode_tree
from tests.conftest import (
    backed_up,
    commit_header,
    damage_chunk,
    listed,
    name_a_chunk_never_stored,
    settled,
    stored_copies,
)


def _tree(root: Path, files: int, seed: int = 5) -> Path:
    """Small files (one in five a duplicate), a text file and a large random file."""
    rng = random.Random(seed)
    (root / "small").mkdir(parents=True)
    earlier: list[bytes] = []
    for index in range(files):
        data = (
            rng.choice(earlier)
            if earlier and index % 5 == 0
            else rng.randbytes(rng.randint(0, 9000))
        )
        earlier.append(data)
        (root / "small" / f"f{index:04d}").write_bytes(data)
    (root / "notes.txt").write_text("retention and pruning\n" * 20000)
    (root / "big.bin").write_bytes(rng.randbytes(11 * 1024 * 1024 + 3))
    return root


def _distinct_small(root: Path) -> int:
    return len({p.read_bytes() for p in (root / "small").iterdir() if p.stat().st_size})


def _assert_restores_identical(client: BackupClient, source: Path, tmp_path: Path) -> None:
    """The latest snapshot restores without errors to exactly ``source``."""
    target = tmp_path / "restored"
    _, result = client.restore("latest", target)
    assert result.errors == []
    assert compare_trees(source, target / source.relative_to("/")) == []


def test_many_small_files_are_stored_once_each_and_restore_identical(
    server, tmp_path: Path
) -> None:
    source = _tree(tmp_path / "src", 1500)
    server.enroll("alice")
    client = server.client("alice")

    first = client.backup([str(source)])
    stats = server.repo.chunk_stats(server.repo.client_by_name("alice").id)
    # Every distinct small file is one chunk; the rest are the big files and the trees.
    assert stats["chunks"] >= _distinct_small(source) + 10
    copies = stored_copies(server.config.data_dir)
    assert len(copies) == stats["chunks"] and set(copies.values()) == {1}
    # The backup and its helper may both send a copy they asked about at the same moment;
    # the server stores it once.
    assert first.uploaded_chunks >= stats["chunks"]

    _assert_restores_identical(client, source, tmp_path)


def test_recent_ids_keeps_the_latest_between_its_limit_and_twice_that() -> None:
    recent = uploader.RecentIds(4)
    ids = [bytes([index]) * 32 for index in range(10)]
    for chunk_id in ids:
        recent.add(chunk_id)
    assert [chunk_id in recent for chunk_id in ids] == [False] * 4 + [True] * 6


def test_a_run_that_forgets_what_it_sent_stores_every_chunk_once_and_restores(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With almost nothing remembered, duplicates are asked about again, and the server's
    answer (it knows what the session put) keeps each chunk stored once: as much as a run
    that remembers everything sends and stores (the two clients' keys differ, their chunks do
    not). One process each: a helper process would not forget, and could send a copy at
    the same moment as the backup (the server stores it once, but both count it)."""
    monkeypatch.setattr(client_module, "helper_wanted", lambda: False)
    source = _tree(tmp_path / "src", 300)
    server.enroll("alice")
    server.enroll("bob")
    remembering = server.client("alice").backup([str(source)])
    monkeypatch.setattr(uploader, "RECENT_IDS", 2)
    forgetful = server.client("bob")

    forgetting = forgetful.backup([str(source)])

    remembered, forgot = (
        server.repo.chunk_stats(server.repo.client_by_name(name).id) for name in ("alice", "bob")
    )
    assert forgetting.uploaded_chunks == remembering.uploaded_chunks == forgot["chunks"]
    assert forgot["chunks"] == remembered["chunks"]
    _assert_restores_identical(forgetful, source, tmp_path)


def test_a_second_run_without_cache_sends_only_the_new_tree_chunks(server, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", 300)
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)], use_cache=False)
    (source / "small" / "f0001").write_bytes(b"changed content")

    second = client.backup([str(source)], use_cache=False)
    # The changed file and one tree per directory above it; nothing stored is sent again.
    assert second.uploaded_chunks <= 1 + len((source / "small").parts)


def test_a_snapshot_references_every_chunk_without_a_refs_request(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks a backup puts and those its has-requests find count as the snapshot's
    references on the server: tiny batches, a large file for the helper process, and a second
    run that finds everything stored all leave the snapshot referring to every chunk it needs."""

    def no_refs(self: RemoteRepository, ids: list[bytes]) -> None:
        raise AssertionError("a backup sent a refs request")

    monkeypatch.setattr(RemoteRepository, "refs", no_refs)
    monkeypatch.setattr(uploader, "BATCH_CHUNKS", 3)
    source = _tree(tmp_path / "src", 120)
    server.enroll("alice")
    client = server.client("alice")
    alice = server.repo.client_by_name("alice").id

    first = client.backup([str(source)])
    stored = {
        row[0] for row in server.repo._query("SELECT id FROM chunks WHERE client_id = ?", (alice,))
    }
    assert set(server.repo.snapshot_refs(alice, first.snapshot)) == stored

    second = client.backup([str(source)], use_cache=False)
    assert second.uploaded_chunks == 0
    assert set(server.repo.snapshot_refs(alice, second.snapshot)) == stored
    target = tmp_path / "restored"
    client.restore(second.snapshot, target)
    assert compare_trees(source, target / source.relative_to("/")) == []


def test_restore_over_an_earlier_restore_puts_every_file_back(server, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", 50)
    client = backed_up(server, source)
    target = tmp_path / "restored"
    client.restore("latest", target)
    restored = target / source.relative_to("/")
    (restored / "small" / "f0003").write_bytes(b"scribbled over")
    (restored / "big.bin").write_bytes(b"truncated")

    _, result = client.restore("latest", target)
    assert result.errors == []
    assert compare_trees(source, restored) == []
    assert not [p for p in restored.rglob("*.rpbtmp")]


def test_a_chunk_damaged_on_the_server_fails_only_its_file(server, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", 40)
    config = server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    victim = source / "small" / "f0007"
    damage_chunk(server, "alice", config.key, victim.read_bytes())

    target = tmp_path / "restored"
    _, result = client.restore("latest", target)
    restored = target / source.relative_to("/")
    assert len(result.errors) == 1 and "f0007" in result.errors[0]
    assert not (restored / "small" / "f0007").exists()
    assert (restored / "small" / "f0008").read_bytes() == (source / "small" / "f0008").read_bytes()
    assert (restored / "big.bin").read_bytes() == (source / "big.bin").read_bytes()


@pytest.mark.parametrize(
    "plain",
    [b"", b"x" * 10, os.urandom(300_000), b"compressible text " * 40_000],
    ids=["empty", "tiny", "random", "text"],
)
def test_a_sealed_chunk_opens_only_under_its_own_id(plain: bytes) -> None:
    sealer = Sealer(MasterKey.generate())
    chunk_id = sealer.chunk_id(plain)
    sealed = sealer.seal(chunk_id, plain)

    assert bytes(sealer.open(chunk_id, bytes(sealed))) == plain
    with pytest.raises(CryptoError):
        sealer.open(sealer.chunk_id(b"another"), bytes(sealed))


def test_excludes_match_a_name_or_a_whole_path(server, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "build").mkdir(parents=True)
    (source / "build" / "out.o").write_bytes(b"object")
    (source / "scratch.tmp").write_bytes(b"temporary")
    (source / "keep.txt").write_bytes(b"kept")
    config = server.enroll("alice")
    config.excludes = ["*.tmp", str(source / "build")]
    client = server.client("alice")

    client.backup([str(source)])
    entries = listed(client, str(source))
    names = sorted(entry.path.rsplit("/", 1)[-1] for entry in entries)
    assert names == ["keep.txt"]


def test_files_cache_entries_survive_runs_that_only_keep_them(tmp_path: Path) -> None:
    path = tmp_path / "unchanged.txt"
    path.write_bytes(b"same as last time")
    settled(tmp_path)
    st = os.stat(path)
    cache = FilesCache(tmp_path / "cache")
    cache.stage(str(path), st, "blake3:" + "ab" * 32, [b"i" * 32])
    cache.commit()

    for _ in range(20):
        hits = cache.lookup_many([(str(path), st)])
        cache.keep(str(path), hits[str(path)])
        cache.commit()
    cache.close()

    reopened = FilesCache(tmp_path / "cache")
    hit = reopened.lookup_many([(str(path), st), (str(tmp_path / "other"), st)])
    reopened.close()
    assert list(hit) == [str(path)] and hit[str(path)].ids == [b"i" * 32]


def _backed_up_once(server, source: Path) -> BackupClient:
    """Alice's client after a first backup of ``source``, every file old enough to be cached."""
    settled(source)
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    return client


def test_unchanged_directories_answered_out_of_line_still_store_every_subtree(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More directories than the walk keeps waiting for the server, nested and side by side:
    every tree of the second run is stored after its subtrees and restores identical."""
    source = tmp_path / "src"
    for top in range(30):
        for sub in range(3):
            folder = source / f"t{top:02d}" / f"s{sub}"
            folder.mkdir(parents=True)
            (folder / "a.txt").write_text(f"{top}/{sub}\n" * (top + 1))
            (source / f"t{top:02d}" / f"f{sub}").write_bytes(bytes([top, sub]) * 300)
    client = _backed_up_once(server, source)
    (source / "t29" / "s2" / "a.txt").write_text("changed after the first run\n")
    read: list[str] = []
    original = Archiver._read_file

    def counting(self: Archiver, path: str, st: os.stat_result) -> object:
        read.append(path)
        return original(self, path, st)

    monkeypatch.setattr(Archiver, "_read_file", counting)
    second = client.backup([str(source)])
    assert read == [str(source / "t29" / "s2" / "a.txt")], "every other file came from the cache"
    # The changed file and one tree per directory above it.
    assert second.uploaded_chunks <= 1 + len((source / "t29" / "s2").parts)
    _assert_restores_identical(client, source, tmp_path)


@pytest.mark.timeout(60)
def test_a_file_that_became_a_fifo_before_its_read_is_named_and_the_backup_goes_on(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a FIFO for reading waits for a writer, which may never come: a file the walk
    saw as regular but that is a FIFO by the time it is opened is named as skipped, and the
    rest of the tree is stored."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("stays a file\n")
    (source / "b.txt").write_text("becomes a FIFO\n")
    original = Archiver._read_file

    def replacing(self: Archiver, path: str, st: os.stat_result) -> object:
        if path.endswith("b.txt"):
            os.unlink(path)
            os.mkfifo(path)
        return original(self, path, st)

    monkeypatch.setattr(Archiver, "_read_file", replacing)
    server.enroll("alice")
    client = server.client("alice")
    with pytest.raises(BackupIncomplete) as raised:
        client.backup([str(source)])
    result = raised.value.result
    assert result.files == 1
    assert [error.split(": ", 1)[0] for error in result.errors] == [str(source / "b.txt")]


def test_small_directories_share_has_checks_and_a_file_the_server_lacks_is_read_again(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unchanged files of many small directories are confirmed in a few requests, not one
    per directory; a file whose chunk the server turns out not to hold (here: its cache entry
    names an id never stored) is read again, and only that file."""
    source = tmp_path / "src"
    for index in range(40):
        folder = source / f"d{index:02d}"
        folder.mkdir(parents=True)
        (folder / "one").write_text(f"{index}\n" * 50)
        (folder / "two").write_bytes(bytes([index]) * 700)
    client = _backed_up_once(server, source)
    lacking = source / "d17" / "two"
    name_a_chunk_never_stored(client.config.cache_path, lacking)
    read: list[str] = []
    checks: list[int] = []
    original_read, original_check = Archiver._read_file, uploader.UploadPipeline.check

    def counting_read(self: Archiver, path: str, st: os.stat_result) -> object:
        read.append(path)
        return original_read(self, path, st)

    def counting_check(
        self: uploader.UploadPipeline, ids: list[bytes], done: object, remember: bool = True
    ) -> None:
        # One has-request per call at this size.
        checks.append(len(ids))
        original_check(self, ids, done, remember)

    monkeypatch.setattr(Archiver, "_read_file", counting_read)
    monkeypatch.setattr(uploader.UploadPipeline, "check", counting_check)
    client.backup([str(source)])
    assert read == [str(lacking)]
    # Each directory's tree and its two files, and the source's tree (all known directories).
    assert sum(checks) == 40 * 3 + 1 and len(checks) <= 40 // uploader._CHECK_CALLS + 1
    _assert_restores_identical(client, source, tmp_path)


def test_a_lacking_file_that_became_a_directory_is_left_out_not_walked(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file the server lacks is replaced by a directory before the answer comes back:
    it is left out of this snapshot (its parent's tree is being stored at that moment), and
    everything else is stored and restores."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "keep.txt").write_text("stays\n" * 100)
    lacking = source / "turns-into-a-dir"
    lacking.write_text("was a file\n" * 100)
    client = _backed_up_once(server, source)
    name_a_chunk_never_stored(client.config.cache_path, lacking)
    original_ask = RemoteRepository.ask_has

    def replacing_ask(self: RemoteRepository, ids: list[bytes], reference: bool = False) -> int:
        if reference and lacking.is_file():
            lacking.unlink()
            (lacking / "inner").mkdir(parents=True)
        return original_ask(self, ids, reference)

    monkeypatch.setattr(RemoteRepository, "ask_has", replacing_ask)
    client.backup([str(source)])
    target = tmp_path / "restored"
    _, result = client.restore("latest", target)
    restored = target / source.relative_to("/")
    assert result.errors == []
    assert sorted(os.listdir(restored)) == ["keep.txt"]
    assert (restored / "keep.txt").read_text() == "stays\n" * 100


def test_every_file_mode_comes_back_whatever_the_umask(server, tmp_path: Path) -> None:
    """Files are born with their final mode where nothing strips it; the rest get fchmod."""
    modes = {
        "plain": 0o644,
        "group-write": 0o664,
        "private": 0o600,
        "read-only": 0o444,
        "none": 0o000,
        "setuid": 0o4755,
        "sticky-dir-like": 0o1777,
        "all": 0o777,
    }
    source = tmp_path / "src"
    source.mkdir()
    for name, mode in modes.items():
        path = source / name
        path.write_bytes(name.encode() * 100)
        path.chmod(mode)
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    old_umask = os.umask(0o027)
    try:
        _, result = client.restore("latest", tmp_path / "restored")
    finally:
        os.umask(old_umask)
    assert result.errors == []
    restored = tmp_path / "restored" / source.relative_to("/")
    assert {name: stat.S_IMODE((restored / name).stat().st_mode) for name in modes} == modes
    assert compare_trees(source, restored) == []


def test_a_wide_directory_walked_in_slices_and_spilled_to_disk_keeps_its_tree(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory's tree is the same bytes (so the same chunk ids: nothing is uploaded
    again) whether its entries come in one slice and stay in memory, or come seven at a time
    with few held back for the server's answers and go to a temporary file; cached and read
    files alike, with a subdirectory and a symlink among them."""
    source = tmp_path / "src"
    wide = source / "wide"
    wide.mkdir(parents=True)
    for index in range(60):
        (wide / f"f{index:03d}").write_bytes(b"%d" % index * (index + 1))
    (wide / "f030-sub").mkdir()
    (wide / "f030-sub" / "inner").write_text("inside")
    (wide / "f040-link").symlink_to("f001")
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])

    monkeypatch.setattr(archiver, "_WALK_SLICE", 7)
    monkeypatch.setattr(archiver, "_DEFERRED_ENTRIES", 10)
    monkeypatch.setattr(archiver, "_TREE_IN_MEMORY", 300)
    spilled = []
    temporary_file = tempfile.TemporaryFile
    monkeypatch.setattr(
        tempfile, "TemporaryFile", lambda **kw: spilled.append(kw) or temporary_file(**kw)
    )
    cached = client.backup([str(source)])
    read = client.backup([str(source)], use_cache=False)

    assert spilled
    assert (cached.uploaded_chunks, read.uploaded_chunks) == (0, 0)
    assert cached.files == read.files == 61
    _assert_restores_identical(client, source, tmp_path)


def test_a_directory_whose_tree_spans_chunks_is_restored_and_listed_a_chunk_at_a_time(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree of several chunks, cut anywhere (here mid-entry), is fetched, opened and decoded
    a chunk at a time, never whole, by a restore and a listing, and its files, symlink and
    subdirectory all come back."""
    config = server.enroll("alice")
    sealer = Sealer(MasterKey.from_text(config.key))
    blobs: dict[bytes, bytes] = {}

    def store(data: bytes) -> bytes:
        chunk_id = sealer.chunk_id(data)
        blobs[chunk_id] = data
        return chunk_id

    def file_node(name: str, payload: bytes) -> Node:
        digest = file_hash()
        digest.update(payload)
        digest_text = f"{FILE_DIGEST}:{digest.hexdigest()}"
        return Node(name, FILE, 0o640, 10**9, size=len(payload), digest=digest_text,
                    content=[store(payload)])  # fmt: skip

    nodes = [file_node(f"f{index:02d}", b"file %d\n" % index) for index in range(40)]
    inner = bytes(encode_tree([file_node("inner", b"inside")]))
    nodes.append(Node("sub", DIR, 0o750, 10**9, content=[store(inner)]))
    nodes.append(Node("link", SYMLINK, 0o777, 10**9, target="f01"))
    encoded = bytes(encode_tree(nodes))
    third = len(encoded) // 3
    parts = [encoded[: third + 7], encoded[third + 7 : 2 * third + 3], encoded[2 * third + 3 :]]
    pieces = [store(part) for part in parts]
    root_tree = bytes(encode_tree([Node("wide", DIR, 0o755, 10**9, content=pieces)]))
    root = store(root_tree)
    with RemoteRepository.connect(
        config.server, config.fingerprint, config.name, config.token
    ) as remote:
        remote.put([(chunk_id, sealer.seal(chunk_id, blob)) for chunk_id, blob in blobs.items()])
        remote.refs(list(blobs))
        remote.commit(commit_header(sealer, [root]))

    fed: list[int] = []

    class CountingDecoder(TreeDecoder):
        def feed(self, piece: bytes | bytearray | memoryview, final: bool = False) -> list[Node]:
            fed.append(len(piece))
            return super().feed(piece, final)

    monkeypatch.setattr(tree_reader, "TreeDecoder", CountingDecoder)
    target = tmp_path / "restored"
    _, result = server.client("alice").restore("latest", target)

    assert result.errors == []
    # The root tree and the subdirectory's were decoded whole, each one chunk.
    assert fed == [len(part) for part in parts]
    wide = target / "wide"
    assert sorted(path.name for path in wide.iterdir()) == sorted(node.name for node in nodes)
    assert [(wide / f"f{index:02d}").read_bytes() for index in range(40)] == [
        b"file %d\n" % index for index in range(40)
    ]
    assert (wide / "sub" / "inner").read_bytes() == b"inside"
    assert os.readlink(wide / "link") == "f01"

    # One file of it: the root tree is read, then the wide one only as far as the name.
    fed.clear()
    _, result = server.client("alice").restore("latest", tmp_path / "one", include="/wide/f05")
    assert result.errors == [] and result.files == 1
    assert (tmp_path / "one" / "wide" / "f05").read_bytes() == b"file 5\n"
    assert fed == [len(root_tree), len(parts[0])]

    # A listing reads it the same way: its first entry comes before the rest is fetched.
    fed.clear()
    with server.client("alice").listing("/wide") as (_, entries):
        first = next(entries)
        assert fed == [len(root_tree), len(parts[0])]
        listed = [first.path, *(entry.path for entry in entries)]
    assert listed[:2] == ["/wide/f00", "/wide/f01"] and len(listed) == len(nodes) + 1
    assert "/wide/sub/inner" in listed
    assert sorted(fed) == sorted([len(root_tree), *map(len, parts), len(inner)])


def test_a_restore_fetching_trees_ahead_rebuilds_wide_and_deep_directories(
    server, tmp_path: Path
) -> None:
    """More subdirectories than are fetched ahead at once (then 16 trees to a request), each
    with a nested one: every tree arrives in time or is asked for on its own, and the restore
    is identical."""
    source = tmp_path / "src"
    for index in range(70):
        deep = source / f"d{index:02d}" / "inner" / "deeper"
        deep.mkdir(parents=True)
        (deep / "leaf.txt").write_text(f"leaf {index}\n")
        (source / f"d{index:02d}" / "top.txt").write_text(f"top {index}\n" * index)
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    _, result = client.restore("latest", tmp_path / "restored")
    assert result.errors == []
    assert compare_trees(source, tmp_path / "restored" / source.relative_to("/")) == []


def test_a_large_file_whose_middle_part_fails_to_open_is_named_and_not_left_behind(
    server, tmp_path: Path
) -> None:
    """A server that hands back a tampered blob under a matching storage hash: AES-GCM refuses
    that part, the parts after it are not written, the file is reported and removed, and the
    restore goes on to the next file."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a-big.bin").write_bytes(random.Random(9).randbytes(14 * 1024 * 1024))
    (source / "b-after.txt").write_text("after\n" * 1000)
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    entries = listed(client, str(source / "a-big.bin"))
    content = entries[0].node.content
    assert len(content) >= 5, "the file must span several parts"
    middle = content[len(content) // 2]
    where = server.repo.locate(server.repo.client_by_name("alice").id, [middle])[middle]
    pack = server.config.data_dir / "storage" / "packs" / where.pack
    data = bytearray(pack.read_bytes())
    data[where.offset + where.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    tampered = storage_hash(bytes(data[where.offset : where.offset + where.length]))
    with sqlite3.connect(server.config.data_dir / "repo.sqlite") as db:
        db.execute("UPDATE chunks SET hash = ? WHERE chunk_id = ?", (tampered, middle))

    _, result = client.restore("latest", tmp_path / "restored")
    restored = tmp_path / "restored" / source.relative_to("/")
    assert len(result.errors) == 1 and "a-big.bin" in result.errors[0], result.errors
    assert "failed authentication" in result.errors[0]
    assert sorted(os.listdir(restored)) == ["b-after.txt"]
    assert (restored / "b-after.txt").read_text() == "after\n" * 1000


def test_a_large_file_hashed_beside_its_reading_records_its_pieces_in_order(
    server, tmp_path: Path
) -> None:
    """Chunk ids and the file digest come from the hasher thread: they must be exactly those of
    the file's pieces taken in order, for a file of many pieces and one of a single piece."""
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(11)
    (source / "many.bin").write_bytes(rng.randbytes(24 * 1024 * 1024))
    (source / "one.bin").write_bytes(rng.randbytes(100_000))
    server.enroll("alice")
    client = server.client("alice")
    client.backup([str(source)])
    sealer = Sealer(client.key)
    counts = {}
    for name in ("many.bin", "one.bin"):
        path = source / name
        with path.open("rb") as handle:
            pieces = [bytes(piece) for piece in Chunker().stream(handle)]
        entries = listed(client, str(path))
        node = entries[0].node
        assert node.content == [sealer.chunk_id(piece) for piece in pieces]
        whole = blake3.blake3(path.read_bytes()).hexdigest()
        # A file of one piece is identified by that piece's id, which covers all of it.
        expected = f"blake3:{whole}" if len(pieces) > 1 else f"chunk:{node.content[0].hex()}"
        assert node.digest == expected
        counts[name] = len(pieces)
    assert counts["many.bin"] >= 8 and counts["one.bin"] == 1


def test_a_batch_of_small_files_is_shared_out_in_order_one_run_per_worker() -> None:
    """Runs of about equal length, files in their order, a directory split where a run ends."""
    first, second, third = (object() for _ in range(3))
    segments = [
        (first, [(f"a{n}", None, "") for n in range(5)]),
        (second, [("b0", None, "")]),
        (third, [(f"c{n}", None, "") for n in range(4)]),
    ]
    shares = _shares(segments, 2)  # type: ignore[arg-type]
    assert [[(where, [e[0] for e in entries]) for where, entries in share] for share in shares] == [
        [(first, ["a0", "a1", "a2", "a3", "a4"])],
        [(second, ["b0"]), (third, ["c0", "c1", "c2", "c3"])],
    ]
    assert len(_shares(segments, 4)) == 4
    assert _shares(segments[1:2], 2) == [segments[1:2]]


def test_a_run_counts_the_folders_its_sources_hold_not_their_parents(server, tmp_path) -> None:
    shallow = tmp_path / "shallow"
    deep = tmp_path / "a" / "b" / "c" / "deep"
    for source in (shallow, deep):
        (source / "one" / "two").mkdir(parents=True)
        (source / "one" / "two" / "file.txt").write_text("x")
    server.enroll("alice")
    client = server.client("alice")
    counted = [client.backup([str(source)]) for source in (shallow, deep)]
    # The source itself and its two folders, at any depth.
    assert [(result.files, result.dirs) for result in counted] == [(1, 3), (1, 3)]
