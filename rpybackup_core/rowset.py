"""Sets of chunk row ids that stay small however many a client has.

A snapshot references every chunk row of its tree, a prune weighs every row of a client
against every snapshot: millions of row ids for a client of many small files. A Python set
holds ~60 bytes an id (the int and its slot); the server then peaked at 310 MiB committing
a snapshot of 1.6 million chunks and a prune at 356 MiB. Row ids are small integers handed
out in runs (a pack's chunks are indexed together), so a bitmap in pages of 32,768 ids (4 KiB)
holds a client's ids in about a bit each, and hands them out in increasing order, which is
what the snapshot encoding and SQL batches want anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# Row ids a page covers: 4 KiB of bits.
_PAGE_SHIFT = 15
_PAGE_BYTES = (1 << _PAGE_SHIFT) // 8
_BYTE_MASK = _PAGE_BYTES - 1
# The bits set in each byte value, lowest first.
_BITS = tuple(tuple(bit for bit in range(8) if value >> bit & 1) for value in range(256))


class RowSet:
    """A set of row ids (ints); iterating it yields them in increasing order."""

    __slots__ = ("_count", "_pages")

    def __init__(self, rowids: Iterable[int] = ()) -> None:
        self._pages: dict[int, bytearray] = {}
        self._count = 0
        self.update(rowids)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, rowid: object) -> bool:
        if not isinstance(rowid, int):
            return False
        page = self._pages.get(rowid >> _PAGE_SHIFT)
        return page is not None and bool(page[rowid >> 3 & _BYTE_MASK] >> (rowid & 7) & 1)

    def __iter__(self) -> Iterator[int]:
        pages = self._pages
        for number in sorted(pages):
            page = pages[number]
            base = number << _PAGE_SHIFT
            for index, value in enumerate(page):
                if value:
                    start = base + index * 8
                    for bit in _BITS[value]:
                        yield start + bit

    def update(self, rowids: Iterable[int]) -> None:
        pages = self._pages
        added = 0
        for rowid in rowids:
            number = rowid >> _PAGE_SHIFT
            page = pages.get(number)
            if page is None:
                page = pages[number] = bytearray(_PAGE_BYTES)
            index = rowid >> 3 & _BYTE_MASK
            bit = 1 << (rowid & 7)
            if not page[index] & bit:
                page[index] |= bit
                added += 1
        self._count += added

    def difference_update(self, rowids: Iterable[int]) -> None:
        pages = self._pages
        removed = 0
        for rowid in rowids:
            page = pages.get(rowid >> _PAGE_SHIFT)
            if page is None:
                continue
            index = rowid >> 3 & _BYTE_MASK
            bit = 1 << (rowid & 7)
            if page[index] & bit:
                page[index] &= ~bit
                removed += 1
        self._count -= removed

    def copy(self) -> RowSet:
        other = RowSet()
        other._pages = {number: bytearray(page) for number, page in self._pages.items()}
        other._count = self._count
        return other
