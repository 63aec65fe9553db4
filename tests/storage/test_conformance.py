"""The storage contract, run against every backend (local directory and S3 on SeaweedFS).

Like restic's backend test suite: a backend is only a backend if all of these pass.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rpybackup_core.errors import NotFound, StorageError
from rpybackup_core.storage import Backend

PACKS = "packs"


def test_put_then_get_returns_the_same_bytes(backend: Backend) -> None:
    data = os.urandom(70_000)
    backend.put(PACKS, "1/ab/abcdef", data)
    assert backend.get(PACKS, "1/ab/abcdef") == data
    assert backend.stat(PACKS, "1/ab/abcdef").size == len(data)
    assert backend.size(PACKS, "1/ab/abcdef") == len(data)


def test_empty_object_round_trips(backend: Backend) -> None:
    backend.put(PACKS, "empty", b"")
    assert backend.get(PACKS, "empty") == b""
    assert backend.stat(PACKS, "empty").size == 0


def test_put_replaces_an_object_whole(backend: Backend) -> None:
    backend.put(PACKS, "obj", b"a" * 5000)
    backend.put(PACKS, "obj", b"short")
    assert backend.get(PACKS, "obj") == b"short"


def test_get_range_returns_exactly_the_slice_asked_for(backend: Backend) -> None:
    data = bytes(range(256)) * 40
    backend.put(PACKS, "ranged", data)
    for offset, length in [(0, 1), (0, len(data)), (100, 1000), (len(data) - 7, 7), (5, 0)]:
        assert backend.get_range(PACKS, "ranged", offset, length) == data[offset : offset + length]


def test_a_range_past_the_end_is_an_error_not_short_data(backend: Backend) -> None:
    backend.put(PACKS, "short", b"0123456789")
    with pytest.raises(StorageError, match="shorter"):
        backend.get_range(PACKS, "short", 5, 10)
    with pytest.raises(StorageError):
        backend.get_range(PACKS, "short", 50, 4)


def test_a_missing_object_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.get(PACKS, "nothing/here")
    with pytest.raises(NotFound):
        backend.get_range(PACKS, "nothing/here", 0, 4)
    with pytest.raises(NotFound):
        backend.stat(PACKS, "nothing/here")


def test_delete_removes_and_tolerates_a_missing_object(backend: Backend) -> None:
    backend.put(PACKS, "2/cd/gone", b"bye")
    backend.delete(PACKS, "2/cd/gone")
    with pytest.raises(NotFound):
        backend.get(PACKS, "2/cd/gone")
    assert "2/cd/gone" not in set(backend.list(PACKS))
    backend.delete(PACKS, "2/cd/gone")
    backend.delete(PACKS, "never/was")


def test_list_yields_every_name_of_one_kind_only(backend: Backend) -> None:
    assert list(backend.list(PACKS)) == []
    names = {"1/ab/ab01", "1/ab/ab02", "1/cd/cd01", "2/ef/ef01", "flat"}
    for name in names:
        backend.put(PACKS, name, name.encode())
    backend.put("other", "1/ab/ab01", b"not a pack")
    assert set(backend.list(PACKS)) == names
    assert set(backend.list("other")) == {"1/ab/ab01"}
    assert list(backend.list("nothing")) == []


def test_put_file_stores_the_file_and_consumes_it(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "pack.tmp"
    data = os.urandom(300_000)
    local.write_bytes(data)
    backend.put_file(PACKS, "3/01/0123", local)
    assert not local.exists()
    assert backend.get(PACKS, "3/01/0123") == data


def test_a_pack_larger_than_one_upload_part_reads_back_across_part_edges(
    backend: Backend, tmp_path: Path
) -> None:
    local = tmp_path / "big.tmp"
    data = os.urandom(12 * 1024 * 1024 + 12345)
    local.write_bytes(data)
    backend.put_file(PACKS, "4/big", local)
    assert backend.stat(PACKS, "4/big").size == len(data)
    edge = 5 * 1024 * 1024
    for offset in (edge - 10, 2 * edge - 1, len(data) - 100):
        assert backend.get_range(PACKS, "4/big", offset, 100) == data[offset : offset + 100]
    assert backend.get(PACKS, "4/big") == data


@pytest.mark.parametrize("name", ["../escape", "/abs", "UPPER", "a//b", "", "dir/", ".hidden"])
def test_unsafe_names_are_refused_before_any_io(
    backend: Backend, tmp_path: Path, name: str
) -> None:
    local = tmp_path / "keep.tmp"
    local.write_bytes(b"kept")
    with pytest.raises(StorageError, match="unsafe"):
        backend.put(PACKS, name, b"x")
    with pytest.raises(StorageError, match="unsafe"):
        backend.put_file(PACKS, name, local)
    with pytest.raises(StorageError, match="unsafe"):
        backend.get_range(PACKS, name, 0, 1)
    with pytest.raises(StorageError, match="unsafe"):
        backend.delete(PACKS, name)
    assert local.read_bytes() == b"kept"


def test_prepare_leaves_nothing_behind(backend: Backend) -> None:
    backend.prepare()
    assert list(backend.list("init")) == []


def test_many_threads_share_one_backend(backend: Backend) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(5):
                name = f"{worker}/{i:02d}"
                data = f"{worker}-{i}".encode() * 100
                backend.put(PACKS, name, data)
                assert backend.get_range(PACKS, name, 0, len(data)) == data
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(set(backend.list(PACKS))) == 40
