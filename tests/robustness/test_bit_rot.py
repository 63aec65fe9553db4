"""Bit rot: one flipped byte anywhere in any stored pack is caught.

`check --read-data` names the damaged pack every time, whichever byte it is (header, blob,
trailer or tail). Restore never writes a wrong file: a damaged data blob fails exactly the files
that hold it, by name, and every other file comes back byte-identical; damage outside the blobs
it reads leaves the restore whole. (tests/test_bad_input.py pins the CLI's message for one case.)
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

from rpybackup_core.errors import IntegrityError
from rpybackup_core.pack import MAGIC, TAIL, parse_trailer
from rpybackup_core.repository import PACKS
from rpybackup_core.tree import FILE
from tests.conftest import listed

from .conftest import FIGURES, Profile
from .harness import Daemon, assert_clean, manifest, restored_manifest


def _files_by_chunk(daemon: Daemon) -> dict[bytes, set[str]]:
    entries = listed(daemon.client("alice"))
    holders: dict[bytes, set[str]] = {}
    for entry in entries:
        if entry.node.kind == FILE:
            for chunk_id in entry.node.content:
                holders.setdefault(chunk_id, set()).add(entry.path)
    return holders


def _position(pack: bytes, flip: int, rng: random.Random) -> int:
    """The first flips go to the header, the trailer and the tail; the rest anywhere."""
    trailer = TAIL.unpack_from(pack, len(pack) - TAIL.size)[0]
    regions = [
        (0, len(MAGIC)),
        (len(pack) - TAIL.size - trailer, len(pack) - TAIL.size),
        (len(pack) - TAIL.size, len(pack)),
    ]
    start, end = regions[flip] if flip < len(regions) else (0, len(pack))
    return rng.randrange(start, end)


def test_a_flipped_byte_anywhere_is_caught_by_check_and_restore(
    daemon: Daemon, tmp_path: Path, profile: Profile
) -> None:
    rng = profile.rng("bit-rot")
    daemon.enroll("alice", tmp_path, key_backup=False)
    source = tmp_path / "source"
    (source / "deep" / "er").mkdir(parents=True)
    for index in range(4):
        (source / f"big-{index}.bin").write_bytes(rng.randbytes(700 * 1024))
    for index in range(12):
        (source / "deep" / ("er" if index % 2 else "") / f"note-{index}.txt").write_bytes(
            rng.randbytes(rng.randrange(10, 6000))
        )
    want = manifest(source)
    daemon.client("alice").backup([str(source)])
    holders = _files_by_chunk(daemon)
    storage = daemon.config.data_dir / "storage" / PACKS
    packs = sorted(path for path in storage.rglob("*") if path.is_file())
    assert len(packs) >= 2

    kinds: Counter[str] = Counter()
    for flip in range(profile.bit_flips):
        pack = rng.choice(packs)
        original = pack.read_bytes()
        offset = _position(original, flip, rng)
        damaged = bytearray(original)
        damaged[offset] ^= rng.randrange(1, 256)
        pack.write_bytes(bytes(damaged))
        try:
            report = daemon.check(read_data=True)
            name = str(pack.relative_to(storage))
            assert any(problem.pack == name for problem in report.problems), (
                f"flip {flip}: byte {offset} of {name} went unnoticed"
            )

            target = tmp_path / f"restore-{flip}"
            hit = [e for e in parse_trailer(original) if e.offset <= offset < e.offset + e.length]
            lost = set().union(*(holders.get(e.chunk_id, set()) for e in hit))
            try:
                errors = daemon.client("alice").restore("latest", target)[1].errors
            except IntegrityError as exc:
                # Only a damaged directory above everything stops the whole restore, by name.
                assert hit and not lost and name in str(exc), (flip, exc)
                errors = [str(exc)]
            restored = restored_manifest(target, source) if target.exists() else {}
            shutil.rmtree(target, ignore_errors=True)
            for path, digest in restored.items():
                assert digest == want[path], f"flip {flip}: {path} restored wrong, silently"
            kinds[("framing" if not hit else "data" if lost else "tree")] += 1
            if not hit:
                assert not errors and restored == want
            elif lost:
                for path in lost:
                    assert any(Path(path).name in error for error in errors), (path, errors)
                assert set(restored) == set(want) - {str(Path(p).relative_to(source)) for p in lost}
            else:
                assert errors, f"flip {flip}: a damaged tree blob restored silently"
        finally:
            pack.write_bytes(original)
    # Most bytes are file data; the header, trailer and tail were hit too.
    assert kinds["data"] and kinds["framing"], kinds
    assert_clean(daemon.check(read_data=True))
    FIGURES["bit flips caught"] += profile.bit_flips
