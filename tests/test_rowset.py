"""Sets of chunk row ids kept as paged bitmaps."""

from __future__ import annotations

import random

from rpybackup_core.rowset import RowSet


def test_it_holds_what_a_set_holds_and_yields_it_in_increasing_order() -> None:
    rng = random.Random(7)
    # Dense runs, ids alone in a page, page edges, zero, and repeats.
    wanted = [*range(1000, 41000), 0, 7, 8, 32767, 32768, 65535, 1 << 40]
    wanted += [rng.randrange(1 << 33) for _ in range(5000)]
    rows = RowSet(wanted + wanted[:100])

    assert len(rows) == len(set(wanted))
    assert list(rows) == sorted(set(wanted))
    assert all(rowid in rows for rowid in wanted)
    assert not any(rowid in rows for rowid in (1, 999, 41000, 65536, (1 << 40) + 1))
    assert "1000" not in rows


def test_removing_ids_counts_only_those_that_were_there() -> None:
    rows = RowSet(range(100))
    copy = rows.copy()

    rows.difference_update([5, 5, 50, 99, 100, 1 << 20])

    assert len(rows) == 97
    assert list(rows) == [r for r in range(100) if r not in (5, 50, 99)]
    assert len(copy) == 100 and 5 in copy
    rows.update([5, 5])
    assert len(rows) == 98 and 5 in rows


def test_an_empty_set_yields_nothing() -> None:
    rows = RowSet()
    assert len(rows) == 0 and list(rows) == []
    rows.update([3])
    rows.difference_update([3])
    assert len(rows) == 0 and list(rows) == []
