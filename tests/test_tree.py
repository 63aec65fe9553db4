"""Tree encoding, and decoding that treats every byte as hostile."""

from __future__ import annotations

import json

import pytest

from rpybackup_core.errors import IntegrityError
from rpybackup_core.tree import DIR, FILE, SYMLINK, Node, decode_tree, encode_tree


def sample_nodes() -> list[Node]:
    return [
        Node("b.txt", FILE, 0o644, 123, 1000, 1000, 5, "a" * 64, [b"\x01" * 32]),
        Node("a-dir", DIR, 0o755, 456, content=[b"\x02" * 32]),
        Node("link", SYMLINK, 0o777, 789, target="../elsewhere"),
        Node("caf\udce9-latin1", FILE, 0o600, 1, size=0, sha256="e" * 64),
    ]


def test_encode_decode_round_trip_sorted_by_name() -> None:
    decoded = decode_tree(encode_tree(sample_nodes()))
    assert [n.name for n in decoded] == sorted(n.name for n in sample_nodes())
    assert {n.name: n for n in decoded} == {n.name: n for n in sample_nodes()}


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "nul\x00", "/abs"])
def test_unsafe_names_are_rejected(name: str) -> None:
    data = encode_tree([Node(name, FILE, 0o644, 0, size=0, sha256="0" * 64)])
    with pytest.raises(IntegrityError):
        decode_tree(data)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        json.dumps({"version": 99, "entries": []}).encode(),
        json.dumps({"version": 1, "entries": [{"name": "x", "type": "fifo"}]}).encode(),
        json.dumps(
            {
                "version": 1,
                "entries": [
                    {
                        "name": "x",
                        "type": "file",
                        "mode": 1,
                        "mtime_ns": 1,
                        "size": "big",
                        "sha256": "0" * 64,
                    }
                ],
            }
        ).encode(),
        json.dumps(
            {
                "version": 1,
                "entries": [
                    {
                        "name": "x",
                        "type": "file",
                        "mode": 1,
                        "mtime_ns": 1,
                        "size": 1,
                        "sha256": "0" * 64,
                        "content": ["zz"],
                    }
                ],
            }
        ).encode(),
        json.dumps(
            {
                "version": 1,
                "entries": [
                    {"name": "x", "type": "symlink", "mode": 1, "mtime_ns": 1, "target": ""}
                ],
            }
        ).encode(),
    ],
    ids=["garbage", "list", "version", "type", "size", "chunk-id", "empty-target"],
)
def test_malformed_trees_are_rejected(document: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_tree(document)


def test_duplicate_names_are_rejected() -> None:
    node = Node("same", FILE, 0o644, 0, size=0, sha256="0" * 64)
    doc = json.loads(encode_tree([node]))
    doc["entries"] = doc["entries"] * 2
    with pytest.raises(IntegrityError, match="twice"):
        decode_tree(json.dumps(doc).encode())
