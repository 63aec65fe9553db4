"""Snapshot trees: one node per directory entry, serialised per directory as JSON.

A directory's encoded tree is stored like file content (chunked, sealed), so a node that points
to content (a file's data or a directory's subtree) holds a list of chunk ids.

Decoding treats the bytes as hostile even though they passed AEAD: a name can never contain a
path separator, be empty, ``.`` or ``..``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from json.scanner import make_scanner
from typing import BinaryIO

from .crypto import FILE_DIGESTS, ID_SIZE, ONE_CHUNK_DIGEST
from .durable import scratch_file
from .errors import IntegrityError

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
KINDS = (FILE, DIR, SYMLINK)
# Version 2 may leave out a one-chunk file's digest (crypto.ONE_CHUNK_DIGEST); 1 is still read.
TREE_VERSION = 2
TREE_VERSIONS = (1, 2)

# JSON string literals as the json module writes them with ensure_ascii, which keeps names that
# are not valid UTF-8 (surrogate escapes) round-trippable.
_quoted = encode_basestring_ascii


# Slots: a directory of 100,000 files holds 100,000 nodes while its tree is built.
@dataclass(slots=True)
class Node:
    name: str
    kind: str
    mode: int
    mtime_ns: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    # "<algorithm>:<hex>" of the whole file's plaintext (see crypto.FILE_DIGEST).
    digest: str = ""
    content: list[bytes] = field(default_factory=list)
    target: str = ""
    # A regular file with other names (st_nlink > 1): "<device>:<inode>" as backed up, the
    # same for each of its names in the snapshot, so a restore can link them again.
    link: str = ""

    @classmethod
    def from_stat(
        cls,
        name: str,
        kind: str,
        st: os.stat_result,
        size: int = 0,
        digest: str = "",
        content: list[bytes] | None = None,
    ) -> Node:
        # Every field given in order: a no-change run makes a node per file, and keywords,
        # defaults and setting the content afterwards took 2.5 times as long.
        return cls(
            name,
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_mtime_ns,
            st.st_uid,
            st.st_gid,
            size,
            digest,
            [] if content is None else content,
            "",
            f"{st.st_dev}:{st.st_ino}" if st.st_nlink > 1 and kind == FILE else "",
        )

    def encode(self) -> str:
        """The node's tree entry. Written out directly rather than as a dictionary through
        the json encoder, which took twice as long (a tenth of a no-change run); the bytes are
        the same, so an unchanged directory keeps its tree id."""
        head = (
            f'{{"name":{_quoted(self.name)},"type":"{self.kind}","mode":{self.mode},'
            f'"mtime_ns":{self.mtime_ns},"uid":{self.uid},"gid":{self.gid}'
        )
        if self.kind == FILE:
            algorithm, _, value = self.digest.partition(":")
            head += f',"size":{self.size}'
            if algorithm != ONE_CHUNK_DIGEST:
                head += f",{_quoted(algorithm)}:{_quoted(value)}"
            if self.link:
                head += f',"link":{_quoted(self.link)}'
        if self.kind == SYMLINK:
            return f'{head},"target":{_quoted(self.target)}}}'
        ids = '","'.join([chunk_id.hex() for chunk_id in self.content])
        return f'{head},"content":["{ids}"]}}' if ids else f'{head},"content":[]}}'


def check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\x00" in name
        or len(name) > 4096
    ):
        raise IntegrityError(f"snapshot holds an unsafe entry name: {name!r}")
    return name


# Entries encoded per call: a few hundred KiB of text at a time, not a whole directory's.
_ENTRIES_PER_CALL = 1024
_HEAD = b'{"version":%d,"entries":[' % TREE_VERSION
_TAIL = b"]}"
# A spilled tree is written out in pieces of about this size.
_WRITE_SIZE = 1024 * 1024


def by_name(node: Node) -> str:
    return node.name


class TreeWriter:
    """A tree encoded as its entries come, in name order: in memory up to ``in_memory`` bytes,
    beyond that in an unnamed temporary file. A directory of a million files then costs its
    encoded size on disk (names in plain text, as in the files cache) rather than its nodes in
    memory."""

    def __init__(self, in_memory: int) -> None:
        self._in_memory = in_memory
        self._buffer = bytearray(_HEAD)
        self._file: BinaryIO | None = None
        self._empty = True

    def add(self, nodes: list[Node]) -> None:
        """Entries for ``nodes``: in name order, and all after those added before."""
        _append_entries(self._buffer, nodes, first=self._empty)
        self._empty = self._empty and not nodes
        if len(self._buffer) > (self._in_memory if self._file is None else _WRITE_SIZE):
            self._write_out()

    def finish(self) -> bytearray | BinaryIO:
        """The whole tree: its bytes if it stayed in memory, otherwise the temporary file that
        holds it (more than ``in_memory`` bytes), positioned at its start."""
        self._buffer += _TAIL
        if self._file is None:
            return self._buffer
        self._write_out()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> TreeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_out(self) -> None:
        if self._file is None:
            self._file = scratch_file("rpybackup-tree-")
        self._file.write(self._buffer)
        self._buffer = bytearray()


def encode_tree(nodes: list[Node]) -> bytearray:
    """``{"version":2,"entries":[...]}``, compact, entries by name, in memory: a tree's chunk
    ids (so dedup of unchanged directories) depend on these bytes."""
    encoded = bytearray(_HEAD)
    _append_entries(encoded, sorted(nodes, key=by_name), first=True)
    encoded += _TAIL
    return encoded


def _append_entries(out: bytearray, nodes: list[Node], first: bool) -> None:
    """The entries of ``nodes`` onto ``out``, after a comma unless they are the ``first``."""
    for start in range(0, len(nodes), _ENTRIES_PER_CALL):
        if start or not first:
            out += b","
        part = nodes[start : start + _ENTRIES_PER_CALL]
        out += ",".join([node.encode() for node in part]).encode()


def _int(doc: dict[str, object], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    # ``type() is int``: JSON gives no int subclass but bool, and bool is no integer here.
    if type(value) is not int:
        raise IntegrityError(f"tree entry field {key!r} is not an integer")
    return value


def _ids(value: object) -> list[bytes]:
    if type(value) is not list:
        raise IntegrityError("tree entry content is not a list")
    try:
        ids = [bytes.fromhex(item) for item in value]
    except (TypeError, ValueError) as exc:
        raise IntegrityError("tree entry holds a malformed chunk id") from exc
    # fromhex skips whitespace, so the length is checked on what it made.
    for chunk_id in ids:
        if len(chunk_id) != ID_SIZE:
            raise IntegrityError("tree entry holds a malformed chunk id")
    return ids


def _digest(doc: dict[str, object], name: str, content: list[bytes]) -> str:
    """A file's digest under whichever algorithm its tree used (older trees: sha256); a file
    of one chunk without one has its chunk id."""
    if len(content) == 1 and doc.keys().isdisjoint(FILE_DIGESTS):
        return f"{ONE_CHUNK_DIGEST}:{content[0].hex()}"
    for algorithm in FILE_DIGESTS:
        value = doc.get(algorithm)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != 64:
            break
        try:
            bytes.fromhex(value)
        except ValueError:
            break
        return f"{algorithm}:{value}"
    raise IntegrityError(f"file {name!r} has no valid digest")


# A link key is two decimal numbers and a colon.
_MAX_LINK = 64


def _decode_node(doc: object) -> Node:
    """A node from one decoded tree entry, every field checked. A restore decodes one per file
    it writes, so the checks are written for speed: fields read once, positional arguments."""
    if type(doc) is not dict:
        raise IntegrityError("tree entry is not an object")
    kind = doc.get("type")
    if kind not in KINDS:
        raise IntegrityError(f"tree entry has an unknown type {kind!r}")
    node = Node(
        check_name(doc.get("name")),
        kind,
        _int(doc, "mode") & 0o7777,
        _int(doc, "mtime_ns"),
        _int(doc, "uid", 0),
        _int(doc, "gid", 0),
    )
    if kind == SYMLINK:
        target = doc.get("target")
        if type(target) is not str or not target or "\x00" in target:
            raise IntegrityError(f"symlink {node.name!r} has no valid target")
        node.target = target
        return node
    node.content = _ids(doc.get("content", []))
    if kind == FILE:
        node.size = _int(doc, "size")
        node.digest = _digest(doc, node.name, node.content)
        link = doc.get("link", "")
        if type(link) is not str or len(link) > _MAX_LINK:
            raise IntegrityError(f"file {node.name!r} has a malformed link")
        node.link = link
    return node


_SPACE = "[ \t\n\r]*"
_TREE_HEAD = re.compile(
    f'{_SPACE}{{{_SPACE}"version"{_SPACE}:{_SPACE}(-?[0-9]+){_SPACE},{_SPACE}"entries"{_SPACE}:'
    f"{_SPACE}\\["
)
_TREE_TAIL = re.compile(f"{_SPACE}\\]{_SPACE}}}{_SPACE}")
# Text that does not start a tree within this many characters is no tree.
_HEAD_LIMIT = 256


class TreeDecoder:
    """Decodes a tree from its plaintext in pieces, each piece's whole entries at once,
    holding back only the text of the entry a piece cut off: a directory of 100,000 files is
    not one document of 100,000 dictionaries in memory.

    Entries must come in strictly increasing name order, as every tree is written: that also
    rules out a name twice without keeping the names seen."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        # The json module's own scanner (C), one value at a time; typeshed mistypes its argument.
        self._scan: Callable[[str, int], tuple[object, int]] = make_scanner(
            json.JSONDecoder()  # type: ignore[arg-type]
        )
        self._text = ""
        self._in_head = True
        self._last_name: str | None = None

    def feed(self, piece: bytes | bytearray | memoryview, final: bool = False) -> list[Node]:
        """The nodes of the whole entries so far; ``final`` marks the last piece."""
        try:
            text = self._text + self._utf8.decode(piece, final)
        except UnicodeDecodeError as exc:
            raise IntegrityError("a snapshot tree is not valid UTF-8") from exc
        position = 0
        if self._in_head:
            head = _TREE_HEAD.match(text)
            if head is None:
                if final or len(text) > _HEAD_LIMIT:
                    raise IntegrityError("a snapshot tree has no version and entry list")
                self._text = text
                return []
            if int(head.group(1)) not in TREE_VERSIONS:
                raise IntegrityError("a snapshot tree has an unknown version")
            position = head.end()
            self._in_head = False
        nodes, position = self._entries(text, position)
        if final:
            if not _TREE_TAIL.fullmatch(text, position):
                raise IntegrityError("a snapshot tree is not valid JSON")
            self._text = ""
        else:
            self._text = text[position:]
        return nodes

    def _entries(self, text: str, position: int) -> tuple[list[Node], int]:
        """Nodes for the whole entries from ``position``, and where the rest begins."""
        nodes: list[Node] = []
        scan = self._scan
        end = len(text)
        while True:
            start = position
            position = _skip_space(text, position)
            if position == end or text[position] == "]":
                return nodes, start
            if self._last_name is not None:
                if text[position] != ",":
                    raise IntegrityError("a snapshot tree is not valid JSON")
                position = _skip_space(text, position + 1)
            try:
                doc, position = scan(text, position)
            except (StopIteration, ValueError):
                # Cut off by the end of the piece, or not JSON: the last piece tells.
                return nodes, start
            except RecursionError as exc:
                raise IntegrityError("a snapshot tree is nested too deeply") from exc
            node = _decode_node(doc)
            if self._last_name is not None and node.name <= self._last_name:
                raise IntegrityError(
                    "a snapshot tree holds the same name twice"
                    if node.name == self._last_name
                    else "a snapshot tree's entries are out of order"
                )
            self._last_name = node.name
            nodes.append(node)


def _skip_space(text: str, position: int) -> int:
    # Trees are written without any: one test per call.
    while position < len(text) and text[position] in " \t\n\r":
        position += 1
    return position


def decode_tree(data: bytes | bytearray | memoryview) -> list[Node]:
    return TreeDecoder().feed(data, final=True)
