"""Many SQLite rows in few statements and steps."""

from __future__ import annotations

import sqlite3

import pytest

from rpybackup_core.sqlrows import insert_rows, packed_rows


@pytest.fixture
def db() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    return connection


def test_rows_beyond_one_statement_are_inserted_in_order_in_few_shapes_of_statement(
    db: sqlite3.Connection,
) -> None:
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    rows = [(index, f"name {index}", bytes([index % 256]) * 3) for index in range(1000)]

    insert_rows(db, "INSERT INTO t VALUES", rows)

    # 33 rows of three values fit under the limit of 100; statements hold a power of two.
    inserts = [sql for sql in statements if sql.startswith("INSERT")]
    assert [sql.count("),(") + 1 for sql in inserts] == [32] * 31 + [8]
    assert db.execute("SELECT id, name, data FROM t ORDER BY id").fetchall() == rows


def test_inserting_no_rows_runs_no_statement(db: sqlite3.Connection) -> None:
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    insert_rows(db, "INSERT INTO t VALUES", [])
    assert statements == []


def test_packed_rows_are_the_rows_of_the_query_with_blobs_in_hex(db: sqlite3.Connection) -> None:
    insert_rows(db, "INSERT INTO t VALUES", [(1, 'a \u2603 "quoted"', b"\x00\xff"), (2, None, b"")])

    rows = packed_rows(db, "id, name, hex(data)", "FROM t WHERE id IN (?, ?, ?)", [1, 2, 3])

    assert sorted(rows) == [[1, 'a \u2603 "quoted"', "00FF"], [2, None, ""]]
    assert packed_rows(db, "id", "FROM t WHERE id > ?", [5]) == []
