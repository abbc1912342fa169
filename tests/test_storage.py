"""The database (timefast/storage.py): commits append to the WAL, a thread checkpoints."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from timefast.storage import WAL_PAGES, Store

from .helpers import wait_for


def _in_database_file(path: Path) -> int:
    # immutable=1 reads the database file alone, ignoring the WAL: rows show here
    # only once a checkpoint copied them.
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM meta").fetchone()[0])
    except sqlite3.DatabaseError:  # no schema copied yet, or read mid-copy
        return -1
    finally:
        db.close()


def test_the_thread_copies_commits_into_the_database_file(tmp_path):
    path = tmp_path / "t.db"
    store = Store(path)
    try:
        with store.transaction() as db:
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [(f"k{i}", "v" * 500) for i in range(2000)])
        assert store.one("SELECT value FROM meta WHERE key=?", ("k1999",))[0] == "v" * 500
        wait_for(lambda: _in_database_file(path) == 2000, 5, "the rows in the database file")
        # (It counts a checkpoint just after the copy lands.)
        wait_for(lambda: store.checkpointer.checkpoints > 0, 5, "a checkpoint counted")
    finally:
        store.close()


def test_close_stops_the_checkpointer_and_empties_the_wal(tmp_path):
    path = tmp_path / "t.db"
    store = Store(path)
    with store.transaction() as db:
        db.execute("INSERT INTO meta VALUES ('k', 'v')")
    store.close()
    assert not store.checkpointer._thread.is_alive()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert _in_database_file(path) == 1


class _Failing:
    def __init__(self) -> None:
        self.calls = 0

    def execute(self, sql: str):
        self.calls += 1
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        pass


def test_a_failing_checkpoint_is_retried_and_logged_once(tmp_path, caplog):
    store = Store(tmp_path / "t.db")
    real = store.checkpointer._db
    failing = _Failing()
    store.checkpointer._db = failing  # type: ignore[assignment]
    try:
        wait_for(lambda: failing.calls >= 3, 5, "three failed checkpoints")
        assert store.checkpointer._thread.is_alive()
        assert store.checkpointer.failures >= 3
        assert sum("checkpoint failed" in r.getMessage() for r in caplog.records) == 1
        # Writes go on meanwhile: the WAL holds them.
        with store.transaction() as db:
            db.execute("INSERT INTO meta VALUES ('k', 'v')")
        assert store.one("SELECT value FROM meta WHERE key=?", ("k",))[0] == "v"
    finally:
        store.checkpointer._db = real
        store.close()


@pytest.mark.parametrize("n", [1, 3])
def test_stores_open_and_close_without_leaking_threads(tmp_path, n):
    before = threading.active_count()
    stores = [Store(tmp_path / f"s{i}.db") for i in range(n)]
    assert threading.active_count() == before + n
    for s in stores:
        s.close()
    assert threading.active_count() == before


def test_the_wal_file_stays_bounded_under_endless_writes(tmp_path):
    # A writer that never pauses never sees the thread's checkpoint complete
    # before its next commit; without the commit's own checkpoint past WAL_PAGES
    # the WAL would never start over and would grow with every write.
    path = tmp_path / "t.db"
    wal = path.with_name(path.name + "-wal")
    store = Store(path)
    largest = 0
    try:
        for i in range(2 * WAL_PAGES // 5):  # some 2.5 times WAL_PAGES pages in all
            with store.transaction() as db:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [(f"k{i % 50}-{j}", "v" * 4000) for j in range(5)])
            largest = max(largest, wal.stat().st_size)
    finally:
        store.close()
    assert largest < 1.5 * WAL_PAGES * 4096, largest
