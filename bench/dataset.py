"""A reproducible mixed dataset for the benchmark, and the ~5 % mutation between runs.

At scale 1.0 the shape follows issue #7's reference tree (about 1.04 GB, 20,012 files):
10,000 small text-like files, 10,000 small random files (some of them duplicates), 10 medium
files and 2 large ones of about 200 MB. ``scale`` shrinks file counts and sizes together, so a
small run keeps the same mix. Everything comes from one seeded generator: the same seed and
scale give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "be",
    "are",
    "have",
    "it",
    "not",
    "or",
    "an",
    "backup",
    "restore",
    "chunk",
    "snapshot",
    "server",
    "client",
    "encrypt",
    "verify",
    "retention",
    "pack",
    "index",
    "commit",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "reply",
    "session",
    "stream",
    "buffer",
    "socket",
    "thread",
    "process",
    "file",
    "directory",
    "path",
    "size",
    "mode",
    "mtime",
    "inode",
    "hash",
    "digest",
    "cipher",
    "nonce",
    "key",
    "token",
    "user",
    "admin",
    "start",
    "stop",
    "run",
    "wait",
    "done",
    "failed",
    "retry",
    "timeout",
    "connect",
    "listen",
    "accept",
    "close",
    "open",
    "read",
    "write",
]
_LINE_POOL = 65536
_SMALL_PER_DIR = 500
_MEDIUM_BYTES = 40 * 1000 * 1000
_LARGE_BYTES = 200 * 1000 * 1000
_BLOCK = 4 * 1024 * 1024
# A real tree's files up to this size get an insertion when mutated, larger ones a rewrite.
_BIG_EDIT = 1024 * 1024


@dataclass(frozen=True)
class Shape:
    small_text: int
    small_random: int
    small_max: int
    medium: int
    medium_bytes: int
    large: int
    large_bytes: int

    @classmethod
    def at_scale(cls, scale: float) -> Shape:
        return cls(
            small_text=max(10, round(10_000 * scale)),
            small_random=max(10, round(10_000 * scale)),
            small_max=24 * 1024,
            medium=10,
            medium_bytes=max(1_000_000, round(_MEDIUM_BYTES * scale)),
            large=2,
            large_bytes=max(4_000_000, round(_LARGE_BYTES * scale)),
        )


class TextSource:
    """Log- and prose-like text that zstd-3 compresses about 3-4x, generated quickly."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._lines = [
            (
                f"{rng.randrange(10**6):06d} "
                + " ".join(rng.choices(_WORDS, k=rng.randint(4, 16)))
                + f" {rng.randrange(10**9):x}\n"
            ).encode("ascii")
            for _ in range(_LINE_POOL)
        ]

    def text(self, size: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while total < size:
            batch = self._rng.choices(self._lines, k=max(1, (size - total) // 48 + 1))
            parts.extend(batch)
            total += sum(len(line) for line in batch)
        return b"".join(parts)[:size]


def _write_stream(path: Path, size: int, make_block) -> None:
    with path.open("wb") as handle:
        left = size
        while left > 0:
            block = make_block(min(_BLOCK, left))
            handle.write(block)
            left -= len(block)


def generate(root: Path, scale: float, seed: int = 1) -> int:
    """Write the dataset under ``root`` (replacing it); returns the total bytes written."""
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    text = TextSource(rng)
    shape = Shape.at_scale(scale)
    total = 0
    for index in range(shape.small_text):
        folder = root / "text" / f"d{index // _SMALL_PER_DIR:03d}"
        if index % _SMALL_PER_DIR == 0:
            folder.mkdir(parents=True)
        data = text.text(rng.randint(200, shape.small_max))
        (folder / f"note-{index:05d}.txt").write_bytes(data)
        total += len(data)
    previous: list[bytes] = []
    for index in range(shape.small_random):
        folder = root / "random" / f"d{index // _SMALL_PER_DIR:03d}"
        if index % _SMALL_PER_DIR == 0:
            folder.mkdir(parents=True)
        # One file in ten is a copy of an earlier one: duplicates must be stored once.
        if previous and rng.random() < 0.1:
            data = rng.choice(previous)
        else:
            data = rng.randbytes(rng.randint(200, shape.small_max))
            if len(previous) < 256:
                previous.append(data)
        (folder / f"blob-{index:05d}.bin").write_bytes(data)
        total += len(data)
    (root / "medium").mkdir(parents=True)
    for index in range(shape.medium):
        path = root / "medium" / f"medium-{index:02d}.dat"
        if index == shape.medium - 1:
            shutil.copyfile(root / "medium" / "medium-00.dat", path)
        elif index % 2 == 0:
            _write_stream(path, shape.medium_bytes, text.text)
        else:
            _write_stream(path, shape.medium_bytes, rng.randbytes)
        total += path.stat().st_size
    (root / "large").mkdir(parents=True)
    _write_stream(root / "large" / "video.raw", shape.large_bytes, rng.randbytes)
    _write_stream(root / "large" / "server.log", shape.large_bytes, text.text)
    total += 2 * shape.large_bytes
    return total


def mutate(root: Path, seed: int = 2) -> int:
    """Change about 5 % of the tree like a day of use; returns the bytes written.

    Edits 5 % of the small files, appends a quarter to three medium files, rewrites a region
    in the middle of each large file (CDC must resynchronise), adds a few files and deletes a few.
    """
    rng = random.Random(seed)
    text = TextSource(rng)
    changed = 0
    small = sorted(p for p in root.glob("text/*/*")) + sorted(p for p in root.glob("random/*/*"))
    for path in rng.sample(small, max(1, len(small) // 20)):
        changed += _insert_text(path, rng, text)
    for path in sorted(root.glob("medium/*.dat"))[1:4]:
        extra = text.text(path.stat().st_size // 4)
        with path.open("ab") as handle:
            handle.write(extra)
        changed += len(extra)
    for path in sorted(root.glob("large/*")):
        changed += _rewrite_middle(path, rng)
    return changed + _add_and_delete(root / "text" / "new", small, rng, text)


def _insert_text(path: Path, rng: random.Random, text: TextSource) -> int:
    """100-4,000 bytes of text inserted at a random place of a file; returns how many."""
    data = bytearray(path.read_bytes())
    edit = text.text(rng.randint(100, 4000))
    at = rng.randint(0, len(data))
    data[at:at] = edit
    path.write_bytes(bytes(data))
    return len(edit)


def _rewrite_middle(path: Path, rng: random.Random) -> int:
    """A twentieth of a file rewritten from its middle (CDC must resynchronise)."""
    size = path.stat().st_size
    region = size // 20
    with path.open("r+b") as handle:
        handle.seek(size // 2)
        handle.write(rng.randbytes(region))
    return region


def _add_and_delete(fresh: Path, files: list[Path], rng: random.Random, text: TextSource) -> int:
    """New text files in ``fresh`` (one for 200 of ``files``) and one of 400 deleted."""
    fresh.mkdir(exist_ok=True)
    changed = 0
    for index in range(max(1, len(files) // 200)):
        data = text.text(rng.randint(200, 16_000))
        (fresh / f"added-{index:04d}.txt").write_bytes(data)
        changed += len(data)
    for path in rng.sample(files, max(1, len(files) // 400)):
        if path.exists():
            path.unlink()
    return changed


@dataclass(frozen=True)
class CopiedTree:
    bytes: int
    files: int
    directories: int
    symlinks: int
    skipped: int


def copy_tree(source: Path, root: Path) -> CopiedTree:
    """Copy a real tree under ``root`` (replacing it) with its times and modes: its regular
    files (the names of a hard-linked one linked again in the copy), directories and
    symlinks. Anything else (FIFOs, sockets, devices) and whatever cannot be read is left
    out, so that the copy is exactly what a restore must give back."""
    if root.exists():
        shutil.rmtree(root)
    counts = {"bytes": 0, "files": 0, "directories": 0, "symlinks": 0, "skipped": 0}
    root.mkdir(parents=True)
    made: list[tuple[Path, Path]] = [(source, root)]
    linked: dict[tuple[int, int], Path] = {}
    for folder, dirs, files in os.walk(source):
        here = root / Path(folder).relative_to(source)
        descend = set()
        for name in dirs + files:
            origin, copy = Path(folder) / name, here / name
            try:
                kind = _copy_entry(origin, copy, linked)
            except OSError:
                kind = "skipped"
            counts[kind] += 1
            if kind == "files":
                counts["bytes"] += copy.stat().st_size
            elif kind == "directories":
                made.append((origin, copy))
                descend.add(name)
        # os.walk lists symlinks to directories among dirs; only what was made is walked.
        dirs[:] = [name for name in dirs if name in descend]
    # Last, deepest first: creating an entry changes its directory's times.
    for origin, copy in reversed(made):
        shutil.copystat(origin, copy)
    return CopiedTree(**counts)


def _copy_entry(origin: Path, copy: Path, linked: dict[tuple[int, int], Path]) -> str:
    st = os.lstat(origin)
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(origin), copy)
        shutil.copystat(origin, copy, follow_symlinks=False)
        return "symlinks"
    if stat.S_ISDIR(mode):
        copy.mkdir()
        return "directories"
    if stat.S_ISREG(mode):
        first = linked.get((st.st_dev, st.st_ino))
        if first is not None:
            os.link(first, copy)
            return "files"
        shutil.copy2(origin, copy, follow_symlinks=False)
        if st.st_nlink > 1:
            linked[(st.st_dev, st.st_ino)] = copy
        return "files"
    return "skipped"


def mutate_tree(root: Path, seed: int = 2) -> int:
    """Change about 5 % of a copied real tree's files like a day of use; returns the bytes
    written. A file of up to 1 MiB gets text inserted at a random place, a larger one a
    rewritten region of a twentieth of it in the middle (CDC must resynchronise); a few files
    are added and a few deleted."""
    rng = random.Random(seed)
    text = TextSource(rng)
    files = sorted(
        Path(folder) / name
        for folder, _dirs, names in os.walk(root)
        for name in names
        if stat.S_ISREG(os.lstat(Path(folder) / name).st_mode)
    )
    if not files:
        return 0
    changed = 0
    for path in rng.sample(files, max(1, len(files) // 20)):
        if path.stat().st_size <= _BIG_EDIT:
            changed += _insert_text(path, rng, text)
        else:
            changed += _rewrite_middle(path, rng)
    return changed + _add_and_delete(root / "added-by-bench", files, rng, text)


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


def compare(source: Path, restored: Path) -> list[str]:
    """Differences in entries, content, mode and mtime, read in blocks (the bench stays small)."""
    problems: list[str] = []
    for folder, dirs, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        other = restored / relative
        expected = sorted(dirs + files)
        try:
            present = sorted(os.listdir(other))
        except OSError as exc:
            problems.append(f"{other}: {exc}")
            continue
        if present != expected:
            problems.append(f"{relative}: entries differ")
        # os.walk lists a symlink to a directory among the directories and does not follow it.
        linked = [name for name in dirs if os.path.islink(os.path.join(folder, name))]
        for name in files + linked:
            a, b = Path(folder) / name, other / name
            try:
                sa, sb = os.lstat(a), os.lstat(b)
            except OSError as exc:
                problems.append(str(exc))
                continue
            if (sa.st_mode, sa.st_mtime_ns, sa.st_size) != (sb.st_mode, sb.st_mtime_ns, sb.st_size):
                problems.append(f"{relative / name}: metadata differs")
            elif stat.S_ISLNK(sa.st_mode):
                if os.readlink(a) != os.readlink(b):
                    problems.append(f"{relative / name}: link target differs")
            elif _digest(a) != _digest(b):
                problems.append(f"{relative / name}: content differs")
    return problems


def _digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.digest()
