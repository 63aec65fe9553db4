"""Batches of an iterable, taken as they are needed."""

from __future__ import annotations

import itertools

from rpybackup_core.batching import batched


def test_items_come_in_order_in_lists_of_the_size_the_last_shorter() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched(range(6), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(batched([], 3)) == []


def test_an_endless_source_is_read_only_as_far_as_the_batches_taken() -> None:
    source = itertools.count()
    batches = batched(source, 4)
    assert next(batches) == [0, 1, 2, 3]
    assert next(source) == 4
