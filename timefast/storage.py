"""SQLite persistence under DATA_DIR (SPEC 4.5).

One database in WAL mode.  The ledger opens a write transaction, records every row
a step changes (UTXOs, transactions, votes, blocks, events) and commits before any
of it is acknowledged or announced.  ``synchronous=NORMAL`` in WAL mode keeps every
committed transaction across a process crash (kill -9); only a power loss may take
the last few, which is the usual trade for a node that commits thousands a second.
A ``Checkpointer`` thread copies committed WAL pages into the database file beside
the writer; a commit checkpoints only once the WAL passes 64 MB, which then starts
over (so the WAL file stays that size).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

log = logging.getLogger("timefast")

# WAL pages (of 4 KiB) after which a commit checkpoints, and the WAL restarts
# (ledger bench, 20,000 payments, runs taken in turn: 3,362-3,410 tx/s at 64 MB,
# 3,172-3,278 at 16 MB).
WAL_PAGES = 16000

# How often the checkpointer copies committed WAL pages into the database file
# (ledger bench, 20,000 payments: 0.25 s gave more than 0.1 s or 1 s, whose bigger
# copies contend with the writer).
CHECKPOINT_INTERVAL = 0.25

class StorageError(RuntimeError):
    """The database refused a write (full disk, read-only directory, ...)."""


def unavailable(e: BaseException) -> str:
    """What a client is told when nothing can be stored (code UNAVAILABLE)."""
    return f"the node cannot store anything now: {e}"


class Checkpointer:
    """A thread that copies committed WAL pages into the database file.

    Every ``interval`` seconds it runs a PASSIVE checkpoint on a connection of its
    own: it never blocks the writer, and leaves the writer's own checkpoint (once
    the WAL passes ``WAL_PAGES``) only what came in since.  A failed checkpoint (a
    full disk) is logged and tried again at the next tick; the WAL keeps every
    committed page meanwhile.
    """

    def __init__(self, path: Path, interval: float = CHECKPOINT_INTERVAL) -> None:
        self.interval = interval
        self.checkpoints = 0
        self.failures = 0
        self._stop = threading.Event()
        # Held while the thread checkpoints: SQLite lets one checkpoint run at a
        # time and refuses a second at once, so the writer's restart waits here.
        self.lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._thread = threading.Thread(target=self._checkpoint_forever, name="timefast-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _checkpoint_forever(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                with self.lock:
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as e:
                self.failures += 1
                if not failing:
                    log.warning("WAL checkpoint failed (will retry): %s", e)
                failing = True
                continue
            failing = False
            self.checkpoints += 1
        self._db.close()

    def stop(self) -> None:
        """Stop the thread (its last checkpoint finishes first)."""
        self._stop.set()
        self._thread.join()


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
        # Copying WAL pages into the database file is the checkpointer thread's
        # job, on its own connection (SQLite lets a checkpoint run beside a writer,
        # and releases the GIL while it works).  But only a checkpoint that leaves
        # nothing behind lets the next write start the WAL over, and a writer that
        # never stops never sees one from another thread: so a commit still
        # checkpoints once the WAL passes 64 MB, copying the little the thread has
        # not, and the WAL file stays that size instead of growing for ever.  That
        # automatic checkpoint gives up at once while the thread is checkpointing,
        # and each commit after tried again only by chance (the WAL reached 1.2 to
        # 1.7 times its size before it started over): a commit that finds the WAL
        # past its size waits for the thread and truncates it (``_restart_wal``).
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        self._wal = path.with_name(path.name + "-wal")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta"
                        " (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.checkpointer = Checkpointer(path)
        # The first write error of the open transaction: SQLite may roll the whole
        # transaction back on it (a full disk does), and the COMMIT that follows
        # should say why rather than "no transaction is active".
        self.failure: str | None = None
        self._sync = False  # see sync_next_commit

    def sync_next_commit(self) -> None:
        """Make the open transaction's commit survive a power loss too, as
        ``synchronous=FULL`` would: its WAL frames are synced to disk before
        ``transaction()`` returns.  A masternode of a network needs it for what it
        signs (SPEC 7.4, 7.5): an approval or a consensus step lost after its message
        left would let it sign a second, different one.  Other commits keep
        ``synchronous=NORMAL`` (safe across a process crash)."""
        self._sync = True

    def ensure(self, schema: str, migrations: Sequence[tuple[str, str, str]]) -> None:
        """Bring the tables to ``schema`` (a script of ``CREATE ... IF NOT EXISTS``)
        plus ``migrations``: ``(table, column, declaration)`` of columns added since
        a table was first made."""
        self.db.executescript(schema)
        for table, column, decl in migrations:
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        """Stop the checkpointer, checkpoint the WAL and close."""
        self.checkpointer.stop()
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
        self._sync = False
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
        if self._sync:
            self._sync = False
            self._fsync_wal()
        self._restart_wal()

    def _fsync_wal(self) -> None:
        # In WAL mode a commit is its frames appended to the WAL file: syncing that
        # file is what synchronous=FULL does at each commit.
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing written since the WAL was truncated and removed
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _restart_wal(self) -> None:
        """Once the WAL has passed ``WAL_PAGES``, checkpoint it all (after the
        checkpointer thread's copy in progress, which leaves little to do) and
        truncate it, so that the next write starts it over (and the file's size says
        again how far it has grown); a failure is left for the next commit."""
        try:
            size = self._wal.stat().st_size
        except OSError:
            return
        if size > WAL_PAGES * 4096:
            with suppress(sqlite3.Error), self.checkpointer.lock:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")

    # -- reads -----------------------------------------------------------------

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of a read query."""
        return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """The first row of a read query, or None."""
        return self.db.execute(sql, args).fetchone()
