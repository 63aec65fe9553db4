"""What a terminal is shown of a name: nothing it would act on, nothing it cannot print."""

from __future__ import annotations

import os

import pytest

from rpybackup_core.terminal import printable


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("report.txt", "report.txt"),
        ("naïve résumé 日本.txt", "naïve résumé 日本.txt"),
        ("evil\x1b]0;owned\x07.txt", "evil\\x1b]0;owned\\x07.txt"),
        ("two\nlines", "two\\x0alines"),
        ("tab\there", "tab\\x09here"),
        ("gpj.\u202eexe", "gpj.\\u202eexe"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9bcsi", "c1\\x9bcsi"),
        (os.fsdecode(b"caf\xe9.txt"), "caf\\xe9.txt"),
    ],
)
def test_control_characters_and_undecodable_bytes_are_shown_escaped(name: str, shown: str) -> None:
    assert printable(name) == shown
