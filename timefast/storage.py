"""SQLite persistence under DATA_DIR (SPEC 4.5).

One database in WAL mode.  The ledger opens a write transaction, records every row
a step changes (UTXOs, transactions, votes, blocks, events) and commits before any
of it is acknowledged or announced.  ``synchronous=NORMAL`` in WAL mode keeps every
committed transaction across a process crash (kill -9); only a power loss may take
the last few, which is the usual trade for a node that commits thousands a second.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS utxos (
    txid TEXT NOT NULL, vout INTEGER NOT NULL, address TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, spending_txid TEXT,
    votes INTEGER NOT NULL DEFAULT 0, block_height INTEGER,
    PRIMARY KEY (txid, vout)) WITHOUT ROWID;
DROP INDEX IF EXISTS utxos_by_address;
CREATE TABLE IF NOT EXISTS txs (
    txid TEXT PRIMARY KEY, raw BLOB NOT NULL, status TEXT NOT NULL,
    accepted_at REAL NOT NULL, finalized_seq INTEGER, block_height INTEGER,
    reason TEXT, addresses BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    txid TEXT NOT NULL, voter TEXT NOT NULL, approve INTEGER NOT NULL,
    signature TEXT NOT NULL, PRIMARY KEY (txid, voter)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prev_hash TEXT NOT NULL,
    timestamp INTEGER NOT NULL, txids BLOB NOT NULL, producer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, type TEXT NOT NULL, addresses BLOB, payload BLOB NOT NULL);
"""


class StorageError(RuntimeError):
    """The database refused a write (full disk, read-only directory, ...)."""


def unavailable(e: BaseException) -> str:
    """What a client is told when nothing can be stored (code UNAVAILABLE)."""
    return f"the node cannot store anything now: {e}"


class Store:
    """The node's SQLite database; every write happens inside ``transaction()``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Hot pages of the UTXO and transaction indexes stay in memory: random txid
        # keys touch pages all over those B-trees.
        self.db.execute("PRAGMA cache_size=-16384")
        self.db.execute("PRAGMA foreign_keys=OFF")
        # Checkpoint every 16 MB of WAL rather than 4: a checkpoint copies pages into
        # the database file and syncs it, and the random-key B-trees dirty a page
        # per row, so fewer checkpoints copy each hot page fewer times.  (40 MB gave
        # a little more throughput but longer pauses: p99 +50 ms.)
        self.db.execute("PRAGMA wal_autocheckpoint=4000")
        self.db.executescript(SCHEMA)
        # The first write error of the open transaction: SQLite may roll the whole
        # transaction back on it (a full disk does), and the COMMIT that follows
        # should say why rather than "no transaction is active".
        self.failure: str | None = None

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        with suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed on exit, rolled back on any error.

        sqlite3 errors come out as ``StorageError`` so that callers can tell a
        storage failure from a rule of the ledger.
        """
        self.failure = None
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StorageError(f"database unavailable: {e}") from e
        try:
            yield self.db
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise StorageError(f"database write failed: {self.failure or e}") from e
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")

    # -- reads -----------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A value from the meta table."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of a read query."""
        return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """The first row of a read query, or None."""
        return self.db.execute(sql, args).fetchone()
