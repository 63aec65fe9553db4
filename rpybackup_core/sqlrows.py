"""Many SQLite rows in few steps.

Python's sqlite3 lets the GIL go for every step of a statement, that is for every row it
reads or inserts. Each time another thread holds the GIL by then (a packer, a session, a
sealing worker), getting it back can take a switch interval of 5 ms: reading 20,000 stored
chunk ids row by row took 3.2 ms an id beside a busy thread, against 0.03 ms packed into one
row. Both helpers here keep a batch to one step.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

# Rows in one INSERT: few enough that the statement stays small (256 rows of six values:
# ~0.35 MiB), enough that steps are few.
_MOST_ROWS = 256


def packed_rows(
    db: sqlite3.Connection, columns: str, clause: str, params: Sequence[Any]
) -> list[list[Any]]:
    """The rows of ``SELECT columns clause``, read in one step as a JSON array that SQLite
    builds; blob columns must be given as ``hex(...)``."""
    (text,) = db.execute(
        f"SELECT json_group_array(json_array({columns})) {clause}", params
    ).fetchone()
    rows: list[list[Any]] = json.loads(text)
    return rows


def insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head`` (``INSERT ... VALUES``) for every row, up to ``_MOST_ROWS`` rows to a statement.

    Statements hold a power of two of rows: sqlite3 keeps each distinct statement it ran (one
    of 5,461 rows took 7 MiB), so only a few distinct ones may exist per ``head``."""
    if not rows:
        return
    width = len(rows[0])
    most = min(_MOST_ROWS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    group = "(" + ",".join("?" * width) + ")"
    start = 0
    while start < len(rows):
        count = 1 << (min(most, len(rows) - start).bit_length() - 1)
        batch = rows[start : start + count]
        db.execute(
            head + " " + ",".join([group] * count), [value for row in batch for value in row]
        )
        start += count
