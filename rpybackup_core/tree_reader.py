"""Reading a snapshot's trees: by content id, a chunk at a time, with the latest ones kept."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

from .crypto import Sealer
from .errors import IntegrityError, NotFound, UsageError
from .remote import RemoteRepository
from .tree import DIR, Node, TreeDecoder, check_name, decode_tree

# Nodes a tree reader keeps across the trees it keeps (a restore's fetched ahead).
_KEPT_NODES = 65536


def split_snapshot_path(path: str) -> list[str]:
    """Components of a path inside a snapshot; '..' and empty components are refused."""
    parts = [part for part in PurePosixPath("/" + path.strip()).parts[1:] if part != "."]
    for part in parts:
        try:
            check_name(part)
        except IntegrityError as exc:
            raise UsageError(f"{path!r} is not a valid path inside a snapshot") from exc
    return parts


class TreeReader:
    """Loads and decodes trees by their content ids, keeping the most recent ones."""

    def __init__(
        self,
        remote: RemoteRepository,
        sealer: Sealer,
        keep: int = 256,
        before_request: Callable[[list[bytes]], None] = lambda ids: None,
    ) -> None:
        self.remote = remote
        self.sealer = sealer
        self._cache: OrderedDict[tuple[bytes, ...], list[Node]] = OrderedDict()
        self._keep = keep
        self._kept_nodes = 0
        self._before_request = before_request

    def load(self, ids: list[bytes]) -> list[Node]:
        nodes = self.cached(ids)
        if nodes is None:
            self._before_request(ids)
            # What was on the wire before may have brought it (a restore fetches trees ahead).
            nodes = self.cached(ids)
        if nodes is None:
            nodes = self.add(ids, dict(self.remote.get(list(ids))))
        return nodes

    def cached(self, ids: list[bytes]) -> list[Node] | None:
        key = tuple(ids)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return None

    def add(self, ids: list[bytes], sealed: dict[bytes, memoryview]) -> list[Node]:
        """Open and decode a tree from its sealed chunks, and keep it (the oldest kept trees
        go beyond ``keep`` trees or ``_KEPT_NODES`` nodes)."""
        nodes = decode_tree(b"".join(self.sealer.open(cid, sealed[cid]) for cid in ids))
        self._drop(tuple(ids))
        self._cache[tuple(ids)] = nodes
        self._kept_nodes += len(nodes)
        while len(self._cache) > self._keep or self._kept_nodes > _KEPT_NODES:
            self._kept_nodes -= len(self._cache.popitem(last=False)[1])
        return nodes

    def slices(self, ids: list[bytes]) -> Iterator[list[Node]]:
        """A tree's nodes a chunk's worth at a time, for going through them once (a restore):
        a kept tree is let go; any other is fetched, opened and decoded a chunk at a time and
        not kept, so a directory of any size holds about one chunk's nodes at a time."""
        key = tuple(ids)
        if key not in self._cache:
            self._before_request(ids)
        nodes = self._drop(key)
        if nodes is not None:
            yield nodes
            return
        if not ids:
            raise IntegrityError("a snapshot tree has no content")
        decoder = TreeDecoder()
        for index, chunk_id in enumerate(ids):
            if index:
                self._before_request(ids)
            ((_, sealed),) = self.remote.get([chunk_id])
            nodes = decoder.feed(self.sealer.open(chunk_id, sealed), final=index == len(ids) - 1)
            if nodes:
                yield nodes

    def _drop(self, key: tuple[bytes, ...]) -> list[Node] | None:
        nodes = self._cache.pop(key, None)
        if nodes is not None:
            self._kept_nodes -= len(nodes)
        return nodes

    def find(self, root: list[bytes], parts: list[str]) -> tuple[list[Node], Node | None]:
        """The nodes along ``parts`` (parents first) and the node itself; None for the root.
        Each tree on the way is read a chunk at a time and only until the name (entries are in
        name order), so a path through a huge directory does not decode all of it."""
        if not parts:
            self.load(root)
            return [], None
        trail: list[Node] = []
        ids = root
        node: Node | None = None
        for index, part in enumerate(parts):
            node = self._named(ids, part)
            if node is None:
                raise NotFound(f"/{'/'.join(parts[: index + 1])} is not in the snapshot")
            if index < len(parts) - 1:
                if node.kind != DIR:
                    raise NotFound(f"/{'/'.join(parts[: index + 1])} is not a directory")
                trail.append(node)
                ids = node.content
        return trail, node

    def _named(self, ids: list[bytes], name: str) -> Node | None:
        for nodes in self.slices(ids):
            for node in nodes:
                if node.name >= name:
                    return node if node.name == name else None
        return None

    def walk(self, root: list[bytes], prefix: str = "") -> Iterator[tuple[str, Node]]:
        """(path, node) of everything under a tree, depth first, each tree read a chunk at a
        time (``slices``)."""
        for nodes in self.slices(root):
            for node in nodes:
                path = f"{prefix}/{node.name}"
                yield path, node
                if node.kind == DIR:
                    yield from self.walk(node.content, path)
