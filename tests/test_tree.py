"""Tree encoding, and decoding that treats every byte as hostile."""

from __future__ import annotations

import json
import os
import sys

import pytest

from rpybackup_core import tree
from rpybackup_core.errors import IntegrityError
from rpybackup_core.tree import (
    DIR,
    FILE,
    SYMLINK,
    Node,
    TreeDecoder,
    TreeWriter,
    by_name,
    decode_tree,
    encode_tree,
)


def sample_nodes() -> list[Node]:
    return [
        Node("b.txt", FILE, 0o644, 123, 1000, 1000, 5, "blake3:" + "a" * 64, [b"\x01" * 32]),
        Node("a-dir", DIR, 0o755, 456, content=[b"\x02" * 32]),
        Node("link", SYMLINK, 0o777, 789, target="../elsewhere"),
        Node("caf\udce9-latin1", FILE, 0o600, 1, size=0, digest="sha256:" + "e" * 64),
        Node("c.txt", FILE, 0o644, 9, size=3, digest="chunk:" + "03" * 32, content=[b"\x03" * 32]),
        Node(
            "d.txt",
            FILE,
            0o644,
            10,
            size=4,
            digest="chunk:" + "04" * 32,
            content=[b"\x04" * 32],
            link="2049:131",
        ),
    ]


def test_encode_decode_round_trip_sorted_by_name() -> None:
    decoded = decode_tree(encode_tree(sample_nodes()))
    assert [n.name for n in decoded] == sorted(n.name for n in sample_nodes())
    assert {n.name: n for n in decoded} == {n.name: n for n in sample_nodes()}


def sample_documents() -> list[dict[str, object]]:
    """``sample_nodes`` as tree entries, by name, keys in the order they are written."""
    common = {"uid": 0, "gid": 0}
    return [
        {"name": "a-dir", "type": "dir", "mode": 0o755, "mtime_ns": 456, **common,
         "content": ["02" * 32]},
        {"name": "b.txt", "type": "file", "mode": 0o644, "mtime_ns": 123, "uid": 1000,
         "gid": 1000, "size": 5, "blake3": "a" * 64, "content": ["01" * 32]},
        {"name": "c.txt", "type": "file", "mode": 0o644, "mtime_ns": 9, **common, "size": 3,
         "content": ["03" * 32]},
        {"name": "caf\udce9-latin1", "type": "file", "mode": 0o600, "mtime_ns": 1, **common,
         "size": 0, "sha256": "e" * 64, "content": []},
        {"name": "d.txt", "type": "file", "mode": 0o644, "mtime_ns": 10, **common, "size": 4,
         "link": "2049:131", "content": ["04" * 32]},
        {"name": "link", "type": "symlink", "mode": 0o777, "mtime_ns": 789, **common,
         "target": "../elsewhere"},
    ]  # fmt: skip


@pytest.mark.parametrize("per_call", [1, 3, 1024])
def test_the_encoding_is_compact_json_of_the_whole_document(
    per_call: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte what one json.dumps of the document gives, however many entries are
    encoded per call: a tree's chunk ids (and so dedup of unchanged directories across
    versions) depend on these bytes."""
    monkeypatch.setattr(tree, "_ENTRIES_PER_CALL", per_call)
    document = {"version": 2, "entries": sample_documents()}
    expected = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert encode_tree(sample_nodes()) == expected
    assert encode_tree([]) == b'{"version":2,"entries":[]}'


@pytest.mark.parametrize("in_memory", [sys.maxsize, 300])
def test_a_tree_written_a_slice_at_a_time_is_the_tree_encoded_at_once(in_memory: int) -> None:
    """Entries added in name order, a few at a time, give the same bytes whether they stay in
    memory or go to a temporary file once there are more than ``in_memory`` bytes."""
    nodes = sorted(
        (
            Node(f"f{index:03d}", FILE, 0o644, index, size=index,
                 digest="blake3:" + f"{index:064x}", content=[index.to_bytes(32, "big")])
            for index in range(50)
        ),
        key=by_name,
    )  # fmt: skip
    with TreeWriter(in_memory) as writer:
        for start in range(0, len(nodes), 7):
            writer.add(nodes[start : start + 7])
        encoded = writer.finish()
        data = encoded if isinstance(encoded, bytearray) else encoded.read()
    assert data == encode_tree(nodes)
    assert isinstance(encoded, bytearray) == (in_memory == sys.maxsize)


def test_a_tree_fed_a_byte_at_a_time_decodes_as_a_whole() -> None:
    """Pieces may cut an entry, a name's escape or a UTF-8 character anywhere; spaces between
    tokens (as json.dumps writes them) are allowed."""
    # Not the entry whose name is not UTF-8: written unescaped, it would not encode.
    documents = [doc for doc in sample_documents() if doc["name"] != "caf\udce9-latin1"]
    documents[1]["name"] = "b.txt \u2603 snow"
    data = json.dumps({"version": 2, "entries": documents}, ensure_ascii=False).encode()
    decoder = TreeDecoder()
    nodes = [node for index in range(len(data)) for node in decoder.feed(data[index : index + 1])]
    nodes += decoder.feed(b"", final=True)
    assert nodes == decode_tree(data)
    names = ["a-dir", "b.txt \u2603 snow", "c.txt", "d.txt", "link"]
    assert [node.name for node in nodes] == names


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda data: data[:-1], "not valid JSON"),
        (lambda data: data[:-3], "not valid JSON"),
        (lambda data: data[:10], "no version"),
        (lambda data: data + b"[]", "not valid JSON"),
        (lambda data: data.replace(b'"a-dir"', b'"zz"'), "out of order"),
    ],
    ids=["no-brace", "cut-entry", "cut-head", "trailing", "out-of-order"],
)
def test_a_cut_or_disordered_tree_is_rejected(cut, message: str) -> None:
    data = cut(bytes(encode_tree(sample_nodes())))
    with pytest.raises(IntegrityError, match=message):
        decode_tree(data)
    decoder = TreeDecoder()
    with pytest.raises(IntegrityError, match=message):
        for index in range(0, len(data), 40):
            decoder.feed(data[index : index + 40], final=index + 40 >= len(data))


def test_names_and_targets_are_escaped_as_the_json_module_escapes_them() -> None:
    name = 'quote" back\\slash \n tab\t snow\u2603 \udcff\x01'
    nodes = [
        Node(name, FILE, 0o644, 1, size=2, digest="blake3:" + "b" * 64,
             content=[b"\x03" * 32, b"\x04" * 32]),
        Node("l", SYMLINK, 0o777, 2, target=name),
        Node("empty", DIR, 0o700, 3),
    ]  # fmt: skip
    entries = json.loads(encode_tree(nodes))["entries"]
    assert [entry["name"] for entry in entries] == sorted(["l", "empty", name])
    encoded = encode_tree(nodes).decode("ascii")
    assert json.dumps(name, ensure_ascii=True) in encoded
    assert {n.name: n for n in decode_tree(encode_tree(nodes))} == {n.name: n for n in nodes}


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "nul\x00", "/abs"])
def test_unsafe_names_are_rejected(name: str) -> None:
    data = encode_tree([Node(name, FILE, 0o644, 0, size=0, digest="blake3:" + "0" * 64)])
    with pytest.raises(IntegrityError):
        decode_tree(data)


def _one_file(**fields: object) -> bytes:
    """A tree of one file entry, with ``fields`` in place of or beside its usual ones."""
    entry = {"name": "x", "type": "file", "mode": 1, "mtime_ns": 1, "size": 1}
    return json.dumps({"version": 1, "entries": [{**entry, "sha256": "0" * 64, **fields}]}).encode()


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        json.dumps({"version": 99, "entries": []}).encode(),
        json.dumps({"version": 1, "entries": [{"name": "x", "type": "fifo"}]}).encode(),
        _one_file(size="big"),
        _one_file(content=["zz"]),
        json.dumps(
            {
                "version": 1,
                "entries": [
                    {"name": "x", "type": "symlink", "mode": 1, "mtime_ns": 1, "target": ""}
                ],
            }
        ).encode(),
        _one_file(link=7),
        _one_file(link="1" * 65),
    ],
    ids=[
        "garbage",
        "list",
        "version",
        "type",
        "size",
        "chunk-id",
        "empty-target",
        "link-type",
        "link-length",
    ],
)
def test_malformed_trees_are_rejected(document: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_tree(document)


def test_a_tree_written_before_blake3_digests_still_decodes() -> None:
    entry = {"name": "old", "type": "file", "mode": 0o644, "mtime_ns": 1, "size": 0}
    document = {"version": 1, "entries": [{**entry, "sha256": "ab" * 32}]}
    (node,) = decode_tree(json.dumps(document).encode())
    assert node.digest == "sha256:" + "ab" * 32
    assert json.loads(encode_tree([node]))["entries"][0]["sha256"] == "ab" * 32


@pytest.mark.parametrize(
    "digest", [{}, {"blake3": "0" * 63}, {"blake3": "zz" * 32}, {"md5": "0" * 64}]
)
@pytest.mark.parametrize("chunks", [0, 2])
def test_a_file_without_a_valid_digest_is_rejected(digest: dict[str, str], chunks: int) -> None:
    entry = {"name": "x", "type": "file", "mode": 0o644, "mtime_ns": 1, "size": 0, **digest}
    entry["content"] = ["0a" * 32] * chunks
    with pytest.raises(IntegrityError, match="digest"):
        decode_tree(json.dumps({"version": 2, "entries": [entry]}).encode())


def test_a_one_chunk_file_is_stored_without_a_digest_and_read_with_its_chunk_id() -> None:
    node = Node("one", FILE, 0o644, 1, size=3, digest="chunk:" + "0b" * 32, content=[b"\x0b" * 32])
    [entry] = json.loads(encode_tree([node]))["entries"]
    assert not {"blake3", "sha256", "chunk"} & set(entry)
    assert decode_tree(encode_tree([node])) == [node]

    # One that has a digest all the same (trees before version 2) keeps it.
    entry["blake3"] = "0c" * 32
    [kept] = decode_tree(json.dumps({"version": 1, "entries": [entry]}).encode())
    assert kept.digest == "blake3:" + "0c" * 32


def test_duplicate_names_are_rejected() -> None:
    node = Node("same", FILE, 0o644, 0, size=0, digest="blake3:" + "0" * 64)
    doc = json.loads(encode_tree([node]))
    doc["entries"] = doc["entries"] * 2
    with pytest.raises(IntegrityError, match="twice"):
        decode_tree(json.dumps(doc).encode())


def test_the_names_of_a_file_with_several_share_a_link_key(tmp_path) -> None:
    first, second, alone = tmp_path / "first", tmp_path / "second", tmp_path / "alone"
    first.write_text("x")
    os.link(first, second)
    alone.write_text("x")
    chunk = [b"\x05" * 32]
    nodes = [
        Node.from_stat(path.name, FILE, os.lstat(path), 1, "chunk:" + "05" * 32, chunk)
        for path in (first, second, alone)
    ]
    st = os.lstat(first)
    assert [node.link for node in nodes] == [f"{st.st_dev}:{st.st_ino}"] * 2 + [""]
    assert b'"link"' not in encode_tree(nodes[2:])
    decoded = decode_tree(encode_tree(nodes))
    assert {node.name: node.link for node in decoded} == {node.name: node.link for node in nodes}
