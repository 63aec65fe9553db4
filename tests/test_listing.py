"""A directory's names in sorted order, in memory or merged from sorted runs on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from rpybackup_core import listing
from rpybackup_core.listing import sorted_names


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    for index in range(50):
        (tmp_path / f"n{(index * 37) % 50:02d}").touch()
    # A name that is not UTF-8, one with a newline, one beyond the BMP and one with spaces.
    for raw in (b"caf\xe9", b"line\nbreak", "emoji \U0001f600".encode(), b"a b"):
        os.close(os.open(os.fsencode(tmp_path) + b"/" + raw, os.O_CREAT | os.O_WRONLY))
    return tmp_path


@pytest.mark.parametrize("in_memory", [65536, 7, 18])
def test_names_come_sorted_as_sorted_sorts_them(
    directory: Path, in_memory: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many runs they are sorted in (18 divides the 54 names: no empty last run)."""
    monkeypatch.setattr(listing, "NAMES_IN_MEMORY", in_memory)
    assert list(sorted_names(str(directory))) == sorted(os.listdir(directory))


def test_runs_go_to_a_temporary_file_that_is_closed_once_read(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing, "NAMES_IN_MEMORY", 10)
    opened = []
    temporary_file = tempfile.TemporaryFile

    def recording(**options: object):
        opened.append(temporary_file(**options))
        return opened[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", recording)
    names = sorted_names(str(directory))
    assert len(opened) == 1 and not opened[0].closed
    assert len(list(names)) == 54
    assert opened[0].closed


def test_a_directory_that_cannot_be_listed_raises_before_any_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sorted_names(str(tmp_path / "missing"))
    assert list(sorted_names(str(tmp_path))) == []
